// Package agent is the berth daemon's use cases: Deploy, Rollback,
// SetConfig, Scale, Restart, the queries behind ps, logs and events, and
// the inbox. It turns a state.Release into supervisor specs, brings an
// app's processes to its active release and formation, and is the only
// package that wires state, state/build, supervisor and systemd
// together. *Agent implements api.Backend; the socket server in agent/api
// calls it.
//
// The leaves it uses must not import it (deps_test.go says so in a
// test); planning a rollout is a leaf of its own (agent/rollout), as are
// health checks (agent/health), /proc parsing (agent/internal/procfs) and
// the sk_lookup program that steers connections (agent/internal/steer).
// Fleet mode (agent/fleet) sees the agent only through fleet.Node, which
// fleetnode.go implements.
//
// # Files
//
//	agent.go       New, Run: start-up, the main loop, the ordered shutdown
//	op.go          how every API operation runs (do: begin, validate,
//	               lock, run, map the error)
//	apps.go, releases.go, appconfig.go, processes.go, logs.go, events.go
//	               the API operations, by resource; logs reads the
//	               instances' log files (one record per line, tagged
//	               with the release, see supervisor) and follows the
//	               supervisor's output of the app's instances
//	switch.go      a switch: release phase, activation, probation,
//	               rollback, interruption by shutdown
//	rollout.go     executing a rollout plan: stop first, start, overlap
//	wait.go        waiting until new instances are up, probation
//	probation.go   the probation that goes on in the agent after a switch
//	               returned, and its rollback
//	steer.go       connection steering: private ports and sockets per
//	               instance, the public ports' groups (agent/internal/
//	               steer), joining new instances, draining old ones
//	instances.go   what runs (the supervisor's list), process records
//	probe.go       health probing of each instance, liveness restarts
//	owner.go       attributed probes while two instances share a socket
//	spec.go, env.go  a release instance as a supervisor.Spec, and the
//	               user it runs as (as root, each app its own uid)
//	sockets.go     the listening sockets the agent owns (socket mode)
//	recovery.go    start-up after a crash or reboot: strays,
//	               interrupted releases, starting every app
//	adopt.go       adopting the app processes a previous agent left (the
//	               fds kept in systemd's fd store or passed through exec),
//	               leaving them to the next agent, the upgrade in place
//	inbox.go       deploys from files dropped in $DATA/inbox, one queue per
//	               app; inbox_archive.go tells a complete archive
//	failures.go    release failures the store could not record (disk full)
//	layout.go      apps/<app>/ on disk; gc.go garbage collection
//	metrics.go     GET /metrics and the TCP metrics listener: what it
//	               reads from the supervisor and store at each scrape,
//	               and the counts only it keeps (switches, rollbacks,
//	               OOM kills); agent/internal/promtext writes the format
//	run.go         one-off commands (berth run): run.N in the active
//	               release, listed in ps while they run
//	limits.go      resource limits of berth.json into specs; saying
//	               when they are not enforced; OOM kills as events
//	fleetnode.go   fleet.Node: a fleet release as a local release
//	               ("Fleet vN: ..."), through the same activate as a
//	               deploy; the fleet version and instances up of an app
//	trim.go        giving back the pages of the agent's own executable
//	               once it has gone quiet after a change or requests
//
// # Life cycle
//
// New checks the configuration and starts nothing. Run takes the fds a
// previous agent kept (systemd's fd store, or $BERTH_HANDOFF after an
// upgrade in place), opens the store (failing at once, having started
// nothing, when another agent holds the data dir), opens the build
// store, starts the supervisor, opens connection steering (taking over
// the program a previous agent pinned, steer.go), adopts the app
// processes a previous agent left running that it can verify and still
// has the pipes of (adopt.go; found by the process records in the store:
// pid, process group and start time), kills the others (and, for one
// started but not yet recorded when that agent died, found by the
// BERTH_APP and TMPDIR of its environment), marks releases left pending
// by an interrupted switch failed, starts every app on its active
// release and formation (adopted instances of it are kept, steered ones
// joined to their groups again; groups of types gone meanwhile are
// dropped), serves the socket, tells systemd it is ready, watches the
// inbox and, with Config.Fleet, runs fleet mode (agent/fleet), which
// talks to etcd only after all of that: the apps start from the store
// whether or not etcd answers.
//
// When its context ends (SIGTERM), shutdown stops in order, what takes
// work first:
//
//  1. new operations are refused ("the agent is shutting down") and those
//     in flight cancelled: a switch in its release phase or waiting for
//     its instances is abandoned and recorded as interrupted, with the
//     release active before it active again; a follow stream ends with
//     the shutdown error. Once they have all returned (their clients got
//     the error over a socket still served),
//  2. fleet mode (giving its etcd lease up), the inbox, the control
//     socket's server and the watchdog stop,
//  3. every app process gets its stop signal, all at once (SIGKILL after
//     its stop timeout), and Run returns nil. Unless the apps are left
//     to the next agent: for an upgrade (Upgrade, SIGUSR2), and when
//     systemd restarts the unit (systemd.WhyStopping); then the
//     supervisor lets go of them (Detach), their records stay in the
//     store, and their pipes and sockets stay in the fd store or go on
//     through exec (Exec).
//
// An inbox file whose deploy was interrupted stays in the inbox and is
// deployed at the next start.
//
// # What runs
//
// The supervisor's list of instances is the only one: each instance the
// agent starts carries its *instance (app, release, port, check, prober)
// as the spec's Meta, and the supervisor's List, Status and events hand
// it back. The store holds, per running process, a record (pid, process
// group, start time) written from the supervisor's events, so that the
// next agent finds it after a kill -9.
//
// An instance's states are the supervisor's; health is the prober's:
//
//	          start                exec'd              check passes
//	(switch) ------> starting ------------> running ------------------+
//	                  ^  |                   |  |                     v
//	                  |  | quick exit        |  | exit after     running, healthy
//	                  |  v                   |  | settle time         |
//	                  | backoff / crashed <--+  +--> starting        | Retries failures
//	                  |  (retried forever)                           | in a row, once live
//	                  +----------------------------------------------+
//	                     restarted: unhealthy (Supervisor.RestartUnhealthy:
//	                     stop signal, SIGKILL after the stop timeout, start
//	                     at once; not a crash, no crash backoff)
//
//	any state --stop (switch, scale, destroy, shutdown)--> stopping --> gone
//
// # A switch
//
// Every change to an app (deploy, config, rollback, scale, restart, user,
// destroy) takes the app's lock: one change per app at a time, a second
// one waits, other apps are not affected. A switch to a new release:
//
//	record release (pending) ----------------------------------+
//	  |                                                        |
//	release phase (Procfile "release:", bounded) --fails--> failed, old keeps running
//	  |
//	activate in the store (the old release superseded), swap current
//	  |   <- from here a crash ends with the new release at the next start
//	plan (rollout.PlanStops): per slot, stop first or alongside
//	  |
//	stop first: bind-mode old instances
//	  |
//	start the new instances
//	  |
//	socket mode: wait until the new ones are up while the old ones
//	  |          still accept on the same socket, then stop the old ones
//	steered: wait until the new ones are up and listen on their own
//	  |      sockets, point the public ports at them, drain the old ones
//	  |      (accept queue empty, connections closed, drain_timeout),
//	  |      then stop them
//	wait until up: healthy (with a check) or running Config.Settle
//	  |
//	return to the caller (event); --wait: through the probation first
//	  |
//	probation, in the agent: Config.Probation without an exit or a turn
//	  |        to unhealthy (ended early by the app's next change)
//	  |
//	done -- or, on a failure at any step after activation:
//	roll back: failed with the cause and last log lines, the previous
//	release active again and its processes back, "rollback" event,
//	*SwitchError -- or, on shutdown: interrupted (see Life cycle).
//
// Up means healthy for a type with a health check in berth.json (a
// health.Monitor per process, deadline start_period + retries probes plus
// a margin, bounded by Config.StartTimeout), and running for
// Config.Settle for a type without one. The deploy call returns once the
// new instances are up; the probation goes on in the agent, which rolls
// back and records it as an event (probation.go). With --wait the call
// waits through probation, so that `berth deploy` can say exactly what
// failed; a release that fails after probation is a liveness matter.
//
// Steering (steer.go) takes precedence over both modes below where the
// kernel allows it: a socket-activated or web type's instances each
// listen on a private port, and the slot's stable ports are steered to
// the instances that are up.
//
// Modes. A type with socket_activation runs in socket mode: the agent
// owns a listening socket on the instance's stable port, created once and
// kept open across switches and restarts (closed when the slot goes away,
// the app is destroyed or the agent stops), and passes it as fd 3 with
// LISTEN_FDS=1 and LISTEN_PID (and PORT). Its instances are named after
// their release ("app/web.1@v8"), so on a switch the new one starts on
// the socket while the old one still serves, and the old one gets its
// stop signal only once the new one is up: connections neither accepts
// wait in the kernel's queue, none is refused. While both accept, an
// HTTP check of the new instance is attributed (owner.go): only a probe
// the new instance's process group accepted counts, one the old instance
// answered is retried a few milliseconds later, and the old instance's
// own checks pause meanwhile. If no probe reaches the new instance, the
// switch falls back to stopping the old one first. Every other type runs
// in bind mode (the process binds $PORT itself): the old instance stops,
// then the new one starts.
//
// Liveness. Once its switch is over, an instance whose check turns
// unhealthy (Retries failures in a row) gets an "unhealthy" event and is
// restarted by the supervisor (Supervisor.RestartUnhealthy), recorded as
// "restarted: unhealthy", not as a crash: no crash event and no crash
// backoff; the check's start period and interval space such restarts.
//
// # Locks
//
// Lock order: an app's lock (lockApp), then any of cfgMu, opMu, sockMu,
// probMu, steerMu, unrec.mu (never two of these at once; unrec.mu is held across the
// store's writes of failures it could not record before). gcMu is read-locked by a deploy between
// its upload and the pin of its build, and try-locked by garbage
// collection. What runs is the supervisor's and needs no lock here.
// The fds a previous agent kept (Agent.kept) are used by start-up alone,
// and by socketFor under sockMu, until start-up drops them.
package agent
