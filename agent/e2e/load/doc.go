// Package load is the load test of safe switching (issues 7 and 13),
// built only with the e2e_load tag (`make e2e-load`): it runs the real
// agent and CLI from bin/ and sends requests continuously while ten
// deploys and ten config changes happen, to each of six apps, and reports
// them side by side (failed requests, p99 during switches, median switch
// time): examples/hello (socket-activated, drains on SIGTERM), the same
// dying at once on SIGTERM with 100 ms requests (HELLO_EXIT_ON_TERM=1,
// HELLO_REQUEST_DELAY), that one binding $PORT itself (no LISTEN_FDS),
// and each of the three at web=3. With connection steering no request
// may fail. TestLoad_FiftySwitchesStopBySignal runs 50 switches in a row
// (with and without steering) and requires every old instance to end by
// its own stop signal; TestLoad_ConfigSetTime reports the median and max
// of ten `config set` runs with the agent's default settings.
//
// If the switches take longer than LOAD_DURATION, the load goes on until
// the last one is over (at most three times LOAD_DURATION).
//
// Settings (environment, for a shorter or heavier run):
//
//	LOAD_DURATION  how long each run sends requests (default 30s)
//	LOAD_RATE      requests per second across all workers (default 300;
//	               0 sends as fast as the workers can)
//	LOAD_WORKERS   concurrent clients (default 4; ten times as many for
//	               the apps whose requests take 100 ms)
//	LOAD_SWITCHES  deploys and config changes of each run, each (default 10)
//	LOAD_MAX       bound on the requests of one run (default 200000)
//	LOAD_PROBATION the agent's --probation, how long the agent watches the
//	               new instances of a switch after it returned (default 1s)
//
// It imports only agent/api (for the JSON shapes of the CLI's output).
package load
