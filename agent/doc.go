// Package agent is the berth daemon's use cases: Deploy, Activate,
// Rollback, SetConfig, Scale and Status. It turns a state.Release into
// supervisor specs, reconciles the desired state (active release and
// formation) with the running processes, and watches the inbox.
//
// It is the only package that wires state, state/build, supervisor and
// systemd together. *Agent implements api.Backend; the socket server in
// agent/api calls it.
//
// # Life cycle
//
// New checks the configuration and starts nothing. Run opens the store
// (failing at once, having started nothing, when another agent holds the
// data dir), opens the build store, starts the supervisor, kills the
// processes a previous agent left behind (found by the process records in
// the store: pid, process group and start time; and, for one started
// but not yet recorded when that agent died, by the BERTH_APP and TMPDIR
// of its environment), marks releases left
// pending by an interrupted switch failed, starts every app on its active
// release and formation, serves the socket, tells systemd it is ready and
// watches the inbox. When its context ends it stops every app process
// gracefully and returns nil.
//
// # Switching
//
// Every change to an app (deploy, config, rollback, scale, restart, user,
// destroy) takes the app's lock: one change per app at a time, a second
// one waits, other apps are not affected. A switch records the release,
// runs the release phase (a failure marks the release failed and leaves
// the old processes alone), activates the release in the store before it
// touches any process (so a crash from then on ends with the new release
// coming up at the next start), swaps apps/<app>/current, replaces the
// instances, waits until the new ones are up, and then watches them for
// Config.Probation before it reports success. From the moment the release
// is recorded the switch no longer depends on the client's request: only
// the agent's shutdown cuts it short. Package agent/rollout plans which
// instances start and which stop before or alongside them, as pure
// functions; rollout.go executes the plan and switch.go wraps it in the
// release phase, activation and rollback.
//
// Up means healthy for a type with a health check in berth.json (a
// health.Monitor per process, deadline start_period + retries probes plus
// a margin, bounded by Config.StartTimeout), and running for
// Config.Settle for a type without one. If a new instance is not up in
// time, fails its check, crash-loops, or exits or turns unhealthy during
// probation, the switch rolls back: the release is marked failed with the
// cause and the instance's last log lines and last check output, the
// previous release is activated again and its processes brought back (or,
// with no previous release, the app's processes are stopped), a
// "rollback" event is recorded and the caller gets a *SwitchError. The
// deploy call waits through probation so that `berth deploy` can say
// exactly this; a release that fails later is a liveness matter.
//
// Modes. A type with socket_activation runs in socket mode: the agent
// owns a listening socket on the instance's stable port, created once and
// kept open across switches and restarts (closed when the slot goes away,
// the app is destroyed or the agent stops; after a kill -9 the next agent
// makes it again), and passes it as fd 3 with LISTEN_FDS=1 and LISTEN_PID
// (and PORT). Its instances are named after their release
// ("app/web.1@v8"), so on a switch the new one starts on the socket while
// the old one still serves, and the old one gets its stop signal only
// once the new one is up: connections neither accepts wait in the
// kernel's queue, none is refused. While both accept, an HTTP check of
// the new instance is attributed (owner.go): the probe keeps its
// connection open (keep-alive), the kernel names the socket the server
// accepted for it (sock_diag, else /proc/net/tcp and tcp6), and only a
// probe whose socket is among the open files of the new instance's
// process group counts; one the old instance answered is retried a few
// milliseconds later. The old instance's own checks pause meanwhile, so
// the new one's failures never restart it. A new instance that fails its
// check or crash-loops is rolled back with the old one untouched. An exec
// check runs in the new instance itself; a type without a check runs for
// Config.Settle first. If no probe reaches the new instance (after its
// start period, Retries probes in a row, each retried ownerAttempts
// times), the switch logs it once and falls back: the old instance stops
// first and the check probes the port, which only the new one serves
// then. Every other type runs in bind mode (the process binds $PORT
// itself): the old instance stops, then the new one starts.
//
// Liveness. Once its switch is over, an instance whose check turns
// unhealthy (retries failures in a row) gets its stop signal (SIGKILL
// after its stop timeout) and an "unhealthy" event; the supervisor sees
// the exit as a crash and restarts it with the crash backoff.
//
// # Locks
//
// Lock order: an app's lock, then any of cfgMu, instMu, recMu, opMu (never
// two of these at once). gcMu is read-locked by a deploy between its
// upload and the pin of its build, and try-locked by garbage collection.
package agent
