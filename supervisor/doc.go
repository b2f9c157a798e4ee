// Package supervisor owns process lifecycles: spawn, restart with
// backoff, stop a process group, reap, capture logs and report state
// changes. It knows nothing of releases, bbolt or HTTP: it gets Specs
// (what to run, with which environment, as whom) and reports Events.
//
// It must not import other berth packages.
//
// # Processes
//
// Each instance runs as /bin/sh -c Command (a command of plain words is
// exec'd directly, as sh itself would, also after sh's or env's variable
// assignments: `env A=1 prog` execs prog with A=1) in its own process
// group, with exactly Spec.Env (and those assignments) as its
// environment and stdin from /dev/null. Stop
// sends the stop signal (and SIGCONT) to the whole group, SIGKILL after
// the stop timeout, and returns once the leader is reaped and no member
// of the group is left. When a process exits unexpectedly, whatever is
// left of its group is killed before the restart, so an old worker never
// runs beside a new one. Processes that left the group (setsid) are
// stopped with it: descendants of the supervisor found in /proc through
// the instance's process or, once their parents are gone, by the
// Spec.Markers in their environment, each held by a pidfd so a reused
// pid is never signalled (escaped.go).
//
// Restarts go by how long the process ran. One that ran at least
// Backoff.MinRun (default 1s, as runit) is restarted at once. A quicker
// exit is a quick exit: the quick exits in a row wait Backoff.Initial
// (100ms) doubling up to Backoff.Max (30s), minus up to 20% jitter, and
// after Backoff.CrashAfter (3) of them in a row the state shows crashed;
// retries continue at the cap forever. A run of at least Backoff.Settle
// (5s) resets the count. A run between MinRun and Settle is restarted at
// once but leaves the count as it was: a program that always runs 1.5s
// is restarted at once every time and never shown crashed, while one
// that crashes at once in between such runs keeps backing off. Only
// Stop, Restart and RestartUnhealthy (on purpose) prevent the restart of
// an exit.
//
// # States
//
// An instance's State changes in one place (under its lock) and every
// change is published as an Event:
//
//	Start
//	  |
//	  v            exec'd
//	starting ----------------> running
//	  ^   |                    |  |  |
//	  |   | fork/exec failed   |  |  | exit after MinRun
//	  |   v                    |  |  v
//	  |  backoff <-------------+  |  starting, at once (one event,
//	  |  crashed   exit before    |  with the Exit)
//	  |   |        MinRun         |
//	  +---+ at NextAttempt        | Stop, Restart, RestartUnhealthy
//	                              v
//	                           stopping --Stop--> stopped (forgotten)
//	                              |
//	                              +--Restart, RestartUnhealthy--> starting
//
// Stop reaches stopping from any state; crashed is backoff after
// Backoff.CrashAfter quick exits in a row. Restart and a run of Settle
// reset the backoff.
//
// RestartUnhealthy(name, pid, reason) is the restart an owner asks for
// when the process pid failed its health check: if pid still runs, the
// instance goes running -> stopping -> starting -> running, without the
// wait for the old output that Restart does. It counts in Restarts but
// is not a quick exit: never backoff or crashed for it, and the backoff
// is left as it was (reset if the process had settled). A pid that no
// longer runs gets ErrStalePID and nothing changes.
//
// # What the owner gets back
//
// Status and Event carry what an owner needs to act without keeping a
// copy of its own: Spec.Meta (an opaque value of the owner's, e.g. a
// pointer to its description of the instance, never looked at), and in
// each event the Restarts and StartedAt that Status has at that moment.
// Cause says why the latest restart was made when it was not a plain
// one: CauseUnhealthy in Status.LastCause and Event.Cause from the
// stopping event of a RestartUnhealthy until the next start, stop or
// exit, and in Exit.Cause of the process it stopped, so that the exit
// reads "restarted: unhealthy (signal SIGTERM)" and a subscriber can log
// it as such, not as a crash. After Start, Restart, Stop and a restart
// after an exit, Cause is "".
//
// # The reaper rule
//
// Run owns waiting for children: on SIGCHLD it peeks at zombies with
// waitid(P_ALL, WEXITED|WNOWAIT) and reaps (wait4 by pid) only
//
//   - processes started through this Supervisor (Start, Restart,
//     RestartUnhealthy, RunCommand): their statuses go to their owners;
//   - unknown children in another process group than the supervisor's
//     own: orphans reparented to it (Config.Subreaper) and leftovers of
//     instance groups; they are logged at debug level.
//
// An unknown zombie in the supervisor's own process group is left for
// its owner. So other code in the same process may run children with
// os/exec (Cmd.Run, Cmd.Wait) as long as they stay in the process's own
// group (the os/exec default: no Setpgid, no Setsid); their statuses are
// never stolen. A child started elsewhere in a new process group or
// session would be reaped as an orphan: run such commands with
// RunCommand instead, which also kills what they leave behind. Children
// are a process-wide resource, so only one Supervisor may Run in a
// process at a time.
//
// # Adoption
//
// Adopt takes over a process another supervisor started (a previous
// agent that died, or this process before it re-executed itself), given
// its recorded pid and start time and the read ends of its output pipes.
// It is verified with its pid held by a pidfd: the same start time in
// /proc (a reused pid never matches), leader of its own process group,
// the spec's Markers in its environment, and the owner's Verify (e.g.
// its cgroup); anything else is ErrNotAdopted and left alone. An adopted
// child of this process is reaped as usual; one that is not (reparented
// to systemd or init) is watched through its pidfd, its exit status
// unknown (Exit.Code -1, no Signal). It then runs as if started here
// (restarted on exit, stopped by Stop), running since its real start;
// the last lines of its log file seed Tail. Detach is the other side:
// it lets go of every instance without touching its process and hands
// over the pipes' read ends, the readers having stored what they read;
// what the processes write meanwhile waits in the pipes. KeepPipes and
// DropPipes tell the owner of each new process's pipes, so it can keep
// copies outside this process (systemd's fd store) for a crash.
//
// # Socket activation
//
// An instance starts with exactly fds 0, 1 and 2 and its ListenFiles:
// before each fork every other fd of this process is marked close-on-exec
// (fds.go), so nothing the agent inherited reaches an app.
// Spec.ListenFiles are passed as fds 3, 4, ... with LISTEN_FDS=n, and
// a simple command runs as /bin/sh -c 'LISTEN_PID=$$; export LISTEN_PID;
// exec Command', so LISTEN_PID is the pid of the app itself (sd_listen_fds
// checks it). A compound command runs as written after the assignment:
// `migrate; exec app` gives app the shell's pid, as Procfiles are written.
//
// # Limits and one-off commands
//
// Spec.Limits (memory, CPU, tasks) are enforced by a Container that is
// also a Limiter (the systemd package's cgroups), set after each Prepare;
// LimitsUnenforced says which cannot be and why. An exit by SIGKILL
// while the container's OOM count grew is an OOM kill (Exit.OOMKill,
// "killed by the OOM killer at 256 MiB"), a crash like any other
// (limits.go). RunAttached runs a one-off command with its output
// streamed to the caller, lists it in OneOffs while it runs and stops
// it when the caller's context ends (oneoff.go).
//
// # Logs
//
// stdout and stderr go through one pipe each, read by one goroutine per
// pipe that holds a read buffer only while output flows. The reader
// formats what it read and writes it to the file itself; while one
// stream's reader writes, the other's queues its batches (at most 8 MiB;
// beyond that the app is slowed, never a line lost). Each line is stored
// as one record, a line of its own, in LogConfig.Path: the time the read
// returned (shared by the lines of one read), LogConfig.Tag (the agent's
// release), the stream and the text, so grep and tail -f show every line
// with its time (see the format in logs.go):
//
//	2026-12-02T23:10:00.123456Z v3 out hello world
//	2026-12-02T23:10:00.123456Z v3 err+ first piece of a long line
//	2026-12-02T23:10:00.123456Z v3 err its last piece
//	2026-12-02T23:10:01.000020Z v3 out% last output, with no newline
//
// Files are rotated by size at record boundaries to Path.1 ...
// Path.<MaxFiles-1> (ReadLogs reads them back, the newest lines first,
// with a filter by count, time and tag; the blocks of the file rotated
// out are freed by another goroutine); lines longer than MaxLine are
// split into pieces marked "+", never dropped; a trailing partial line
// is stored, marked "%", when the pipe closes. A record cut by a crash
// is left out by readers until the next writer ends it with a newline.
// The last LogConfig.Memory lines stay in memory for Tail. Followers (FollowLogs) and event subscribers (Subscribe) get bounded
// channels: one that falls behind loses lines or events, is told how
// many in the next one it gets (Missed), and never slows the app, the
// files or the supervisor.
package supervisor
