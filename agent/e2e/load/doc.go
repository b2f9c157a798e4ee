// Package load is the load test of safe switching (issue 7), built only
// with the e2e_load tag (`make e2e-load`): it runs the real agent and CLI
// from bin/, deploys examples/hello, and sends requests continuously for a
// minute while ten deploys and ten config changes happen, first with the
// agent-owned socket (start-then-stop) and then with a variant that binds
// $PORT itself (stop-then-start), and reports both side by side.
//
// If the switches take longer than LOAD_DURATION, the load goes on until
// the last one is over (at most three times LOAD_DURATION).
//
// Settings (environment, for a shorter or heavier run):
//
//	LOAD_DURATION  how long each run sends requests (default 60s)
//	LOAD_RATE      requests per second across all workers (default 300;
//	               0 sends as fast as the workers can)
//	LOAD_WORKERS   concurrent clients (default 4)
//	LOAD_SWITCHES  deploys and config changes of each run, each (default 10)
//	LOAD_MAX       bound on the requests of one run (default 200000)
//	LOAD_PROBATION the agent's --probation, how long a switch watches the
//	               new instances before it returns (default 1s, so that
//	               twenty switches fit in a minute)
//
// It imports only agent/api (for the JSON shapes of the CLI's output).
package load
