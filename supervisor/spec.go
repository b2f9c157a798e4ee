package supervisor

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// State is the lifecycle state of a supervised instance. It changes in
// one place (instance.setState) and every change is published as an
// Event.
type State int

const (
	// StateStarting means the process is being forked and exec'd.
	StateStarting State = iota
	// StateRunning means the process has exec'd and has not exited.
	StateRunning
	// StateBackoff means the process exited quickly (it ran less than
	// Backoff.MinRun, or did not start) and waits for its next attempt
	// (Status.NextAttempt).
	StateBackoff
	// StateStopping means a Stop, Restart or RestartUnhealthy is
	// signalling the process group and waiting for it to be gone.
	StateStopping
	// StateStopped means the instance was stopped on purpose; it is the
	// last state an instance reports before it is forgotten.
	StateStopped
	// StateCrashed means the process is crash-looping: it exited quickly
	// Backoff.CrashAfter times in a row (runs between MinRun and Settle
	// do not break the row; a run of Settle does). It is still retried
	// (at most Backoff.Max apart), forever.
	StateCrashed
)

var stateNames = [...]string{"starting", "running", "backoff", "stopping", "stopped", "crashed"}

// String returns the lower-case name of the state, e.g. "running".
func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return fmt.Sprintf("state(%d)", int(s))
	}
	return stateNames[s]
}

// Backoff says how the restarts of a process that exits are spaced. It
// goes by how long the process ran (from its exec to its exit):
//
//   - at least Settle: it is restarted at once and the backoff is reset
//     (the count of quick exits in a row goes back to 0, so crashed is
//     no longer shown);
//   - at least MinRun but less than Settle: it is restarted at once, and
//     the count is left as it was: such a run is no quick exit, but it
//     does not show that the process stays up either. A program that
//     always runs that long is restarted at once every time and never
//     shown crashed; one that mixes such runs with quick exits keeps
//     backing off as if they were not there;
//   - less than MinRun, a quick exit: the n-th in a row waits
//     Initial*2^(n-1), capped at Max, with up to 20% random jitter
//     subtracted so instances that crash together do not restart in
//     lock step; from the CrashAfter-th in a row on the state shows
//     crashed.
//
// A failed fork or exec counts as a quick exit.
type Backoff struct {
	// MinRun is the run time from which an exit is restarted at once,
	// as runit does after a run of 1s. 0 means 1s, or Settle when that
	// is shorter; it must not exceed Settle.
	MinRun time.Duration
	// Initial is the delay after the first quick exit; 0 means 100ms.
	Initial time.Duration
	// Max caps the delay; 0 means 30s. It must not be below Initial.
	Max time.Duration
	// Settle is the run time after which the backoff is reset; 0 means 5s.
	Settle time.Duration
	// CrashAfter is the number of quick exits in a row from which the
	// state shows crashed; 0 means 3.
	CrashAfter int
}

// WithDefaults returns b with its zero fields set to their defaults, or a
// *SpecError (with no Name) for its first bad field: a negative value,
// Initial above Max or MinRun above Settle. Start applies it to
// Spec.Backoff; an owner that builds a Backoff from settings of its own
// may call it to refuse bad ones before it starts anything.
func (b Backoff) WithDefaults() (Backoff, error) { return b.withDefaults("") }

func (b Backoff) withDefaults(name string) (Backoff, error) {
	bad := func(field, value, reason string) (Backoff, error) {
		return Backoff{}, &SpecError{Name: name, Field: field, Value: value, Reason: reason}
	}
	for _, d := range []struct {
		field string
		v     *time.Duration
		def   time.Duration
	}{{"Backoff.Initial", &b.Initial, defaultInitial}, {"Backoff.Max", &b.Max, defaultMax}, {"Backoff.Settle", &b.Settle, defaultSettle}} {
		if *d.v < 0 {
			return bad(d.field, d.v.String(), "must not be negative")
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if b.MinRun < 0 {
		return bad("Backoff.MinRun", b.MinRun.String(), "must not be negative")
	}
	if b.MinRun == 0 {
		b.MinRun = min(defaultMinRun, b.Settle)
	}
	if b.Initial > b.Max {
		return bad("Backoff.Initial", b.Initial.String(), "must not exceed Backoff.Max "+b.Max.String())
	}
	if b.MinRun > b.Settle {
		return bad("Backoff.MinRun", b.MinRun.String(), "must not exceed Backoff.Settle "+b.Settle.String())
	}
	if b.CrashAfter < 0 {
		return bad("Backoff.CrashAfter", fmt.Sprint(b.CrashAfter), "must not be negative")
	}
	if b.CrashAfter == 0 {
		b.CrashAfter = defaultCrashAfter
	}
	return b, nil
}

// LogConfig says where the output of an instance goes.
type LogConfig struct {
	// Path is the per-instance log file; "" keeps no file (memory and
	// followers only). Rotated files are Path.1 (newest) to
	// Path.<MaxFiles-1> (oldest).
	Path string
	// MaxSize is the size at which the file is rotated; 0 means 10 MiB.
	MaxSize int64
	// MaxFiles is how many files are kept, the live one included; 0
	// means 5.
	MaxFiles int
	// MaxLine is the longest line stored as one; longer lines are split
	// into pieces of MaxLine bytes, each but the last marked Split.
	// 0 means 16 KiB. It must be smaller than MaxSize.
	MaxLine int
	// Memory is how many recent lines are kept in memory for Tail; 0
	// means 1000, a negative value keeps none.
	Memory int
	// Tag is a word stored in every record of the file (see the format
	// in logs.go) and handed back in LogLine.Tag: the agent puts the
	// release there ("v3"). "" is stored as "-". At most MaxTagLen
	// bytes of printable ASCII, no space, and not a stream name
	// ("stdout", "stderr"), which earlier formats had in its place.
	Tag string
	// Fields are passed as they are to Config.Sink with every line
	// (e.g. app, process and release for journald).
	Fields map[string]string
}

// MaxTagLen is the longest LogConfig.Tag.
const MaxTagLen = 32

// Spec is what to run, with which environment and as whom.
type Spec struct {
	// Name identifies the instance, e.g. "hello/web.1"; unique among
	// supervised instances. It must not be empty or hold control
	// characters.
	Name string
	// Command is run as /bin/sh -c Command. A command made only of
	// plain words (no quotes, variables, redirections or other shell
	// syntax) is exec'd directly, as sh would, saving one exec; so is
	// one that sets variables for its program first, as sh's
	// assignments (`A=1 prog`) or env(1) without options (`env A=1
	// prog`), with the variables added to Env, saving the exec of sh or
	// env. A program not found is left to sh or env to report.
	Command string
	// Env is exactly the environment of the process; nothing of the
	// supervisor's own environment is inherited (not even PATH).
	Env []string
	// Dir is the working directory; "" means the supervisor's.
	Dir string
	// Credential is the user, group and supplementary groups of the
	// process; nil runs it as the supervisor's user.
	Credential *syscall.Credential
	// StopSignal is sent to the process group on stop; 0 means SIGTERM.
	StopSignal syscall.Signal
	// StopTimeout is how long a stop waits before SIGKILL to the group;
	// 0 means 10s.
	StopTimeout time.Duration
	// Backoff spaces the restarts of a process that exits.
	Backoff Backoff
	// Log says where stdout and stderr go.
	Log LogConfig
	// Limits bound the instance's resources where the Container is a
	// Limiter (see Supervisor.Enforces); zero sets none.
	Limits Limits
	// ListenFiles are passed to the process as fds 3, 4, ... with
	// LISTEN_FDS=<n> and LISTEN_PID=<pid> in its environment
	// (systemd's socket activation protocol). The command is then run
	// as /bin/sh -c 'LISTEN_PID=$$; export LISTEN_PID; exec Command'
	// when it is a simple command, so that the pid is the app's own; a
	// compound command runs as written after the assignment, and must
	// end in `exec app` for app to keep that pid. The files stay owned
	// by the caller.
	ListenFiles []*os.File
	// Markers names variables of Env that mark the instance's processes
	// (e.g. an app and instance name): a descendant of the supervisor
	// that left the instance's process group (setsid) and whose parents
	// are gone is recognised as the instance's by its environment
	// (/proc/PID/environ) holding each of them with the value Env gives
	// it, and is stopped with the group. Choose them so that no other
	// instance's processes have the same values. Without Markers, only
	// such processes whose chain of parents still leads to the
	// instance's process when it is stopped are found. Each must be a
	// variable of Env.
	Markers []string
	// Meta is the owner's own value for the instance (e.g. a pointer to
	// its immutable description of it). The supervisor never looks at
	// it nor copies what it points to; it is handed back as it is in
	// every Status and Event of the instance, so an owner can act on
	// them without a lookup table of its own. Point it only at data
	// that does not change, or that the owner synchronises itself.
	Meta any
}

const (
	defaultInitial    = 100 * time.Millisecond
	defaultMax        = 30 * time.Second
	defaultSettle     = 5 * time.Second
	defaultMinRun     = time.Second
	defaultCrashAfter = 3
	defaultStopTime   = 10 * time.Second
	defaultMaxSize    = 10 << 20
	defaultMaxFiles   = 5
	defaultMaxLine    = 16 << 10
	defaultMemory     = 1000
)

// withDefaults returns the spec with zero fields filled in, or a
// *SpecError for the first bad value. The caller's slices are copied.
func (sp Spec) withDefaults() (Spec, error) {
	bad := func(field, value, reason string) (Spec, error) {
		return Spec{}, &SpecError{Name: sp.Name, Field: field, Value: value, Reason: reason}
	}
	if sp.Name == "" {
		return bad("Name", "", "must not be empty")
	}
	if strings.ContainsFunc(sp.Name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return bad("Name", "", "must not hold control characters")
	}
	if strings.TrimSpace(sp.Command) == "" {
		return bad("Command", "", "must not be empty")
	}
	if strings.IndexByte(sp.Command, 0) >= 0 {
		return bad("Command", "", "must not hold a NUL byte")
	}
	for i, kv := range sp.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return bad(fmt.Sprintf("Env[%d]", i), "", "must be KEY=value")
		}
		if strings.IndexByte(kv, 0) >= 0 {
			return bad(fmt.Sprintf("Env[%d]", i), k, "must not hold a NUL byte")
		}
	}
	for i, m := range sp.Markers {
		if markerValues(sp.Env, []string{m}) == nil {
			return bad(fmt.Sprintf("Markers[%d]", i), m, "must be a variable of Env")
		}
	}
	if sp.StopSignal < 0 || sp.StopSignal > 64 {
		return bad("StopSignal", fmt.Sprint(int(sp.StopSignal)), "not a signal number")
	}
	if sp.StopSignal == 0 {
		sp.StopSignal = syscall.SIGTERM
	}
	if sp.StopTimeout < 0 {
		return bad("StopTimeout", sp.StopTimeout.String(), "must not be negative")
	}
	if sp.StopTimeout == 0 {
		sp.StopTimeout = defaultStopTime
	}
	b, err := sp.Backoff.withDefaults(sp.Name)
	if err != nil {
		return Spec{}, err
	}
	sp.Backoff = b
	if err := sp.Limits.check(sp.Name); err != nil {
		return Spec{}, err
	}
	l := &sp.Log
	if l.MaxSize < 0 {
		return bad("Log.MaxSize", fmt.Sprint(l.MaxSize), "must not be negative")
	}
	if l.MaxSize == 0 {
		l.MaxSize = defaultMaxSize
	}
	if l.MaxFiles < 0 {
		return bad("Log.MaxFiles", fmt.Sprint(l.MaxFiles), "must not be negative")
	}
	if l.MaxFiles == 0 {
		l.MaxFiles = defaultMaxFiles
	}
	if l.MaxLine < 0 {
		return bad("Log.MaxLine", fmt.Sprint(l.MaxLine), "must not be negative")
	}
	if l.MaxLine == 0 {
		l.MaxLine = defaultMaxLine
	}
	if int64(l.MaxLine)+lineOverhead >= l.MaxSize {
		return bad("Log.MaxLine", fmt.Sprint(l.MaxLine), fmt.Sprintf("a stored line must fit in Log.MaxSize %d", l.MaxSize))
	}
	if err := checkTag(l.Tag); err != nil {
		return bad("Log.Tag", l.Tag, err.Error())
	}
	if l.Memory == 0 {
		l.Memory = defaultMemory
	}
	if l.Memory < 0 {
		l.Memory = 0
	}
	for i, f := range sp.ListenFiles {
		if f == nil {
			return bad(fmt.Sprintf("ListenFiles[%d]", i), "", "must not be nil")
		}
	}
	sp.Env = append([]string(nil), sp.Env...)
	sp.Markers = append([]string(nil), sp.Markers...)
	sp.ListenFiles = append([]*os.File(nil), sp.ListenFiles...)
	return sp, nil
}

// CauseUnhealthy is the cause of a restart asked for with
// RestartUnhealthy, because the process failed its health check. It is
// found in Status.LastCause, Event.Cause and Exit.Cause.
const CauseUnhealthy = "unhealthy"

// Exit is how a process ended.
type Exit struct {
	// Code is the exit code; -1 when killed by a signal, or, with no
	// Signal, when the status is unknown: an adopted process that is not
	// this process's child (see Adopt) is seen to exit, not reaped.
	Code   int
	Signal syscall.Signal // the signal that killed it, or 0
	Time   time.Time      // when the supervisor reaped it
	// Cause is set when the supervisor stopped the process to restart
	// it for a reason of the owner's (CauseUnhealthy); it is "" for an
	// exit of the process's own, a Stop and a Restart. Such an exit is
	// no crash: it is neither backed off nor shown as crashed.
	Cause string
	// OOMKill says the kernel's OOM killer killed the process: it died
	// of SIGKILL as its container's OOM count grew (see Limiter).
	// MemoryMax is the instance's memory limit then (0: none set).
	OOMKill   bool
	MemoryMax int64
}

// String returns "exit 1" or "signal SIGKILL", "killed by the OOM
// killer at 256 MiB" for an OOM kill, and for an exit with a Cause
// "restarted: unhealthy (signal SIGTERM)".
func (e Exit) String() string {
	how := fmt.Sprintf("exit %d", e.Code)
	if e.Code == -1 && e.Signal == 0 {
		how = "exit status unknown (adopted process)"
	}
	if e.Signal != 0 {
		how = "signal " + signalName(e.Signal)
	}
	if e.OOMKill {
		how = "killed by the OOM killer"
		if e.MemoryMax > 0 {
			how += " at " + FormatBytes(e.MemoryMax)
		}
	}
	if e.Cause != "" {
		return "restarted: " + e.Cause + " (" + how + ")"
	}
	return how
}

func exitOf(ws syscall.WaitStatus, t time.Time) Exit {
	if ws.Signaled() {
		return Exit{Code: -1, Signal: ws.Signal(), Time: t}
	}
	return Exit{Code: ws.ExitStatus(), Time: t}
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT",
	syscall.SIGILL: "SIGILL", syscall.SIGTRAP: "SIGTRAP", syscall.SIGABRT: "SIGABRT",
	syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE", syscall.SIGKILL: "SIGKILL",
	syscall.SIGUSR1: "SIGUSR1", syscall.SIGSEGV: "SIGSEGV", syscall.SIGUSR2: "SIGUSR2",
	syscall.SIGPIPE: "SIGPIPE", syscall.SIGALRM: "SIGALRM", syscall.SIGTERM: "SIGTERM",
	syscall.SIGCHLD: "SIGCHLD", syscall.SIGCONT: "SIGCONT", syscall.SIGSTOP: "SIGSTOP",
	syscall.SIGTSTP: "SIGTSTP", syscall.SIGTTIN: "SIGTTIN", syscall.SIGTTOU: "SIGTTOU",
	syscall.SIGURG: "SIGURG", syscall.SIGXCPU: "SIGXCPU", syscall.SIGXFSZ: "SIGXFSZ",
	syscall.SIGVTALRM: "SIGVTALRM", syscall.SIGPROF: "SIGPROF", syscall.SIGWINCH: "SIGWINCH",
	syscall.SIGIO: "SIGIO", syscall.SIGPWR: "SIGPWR", syscall.SIGSYS: "SIGSYS",
}

func signalName(s syscall.Signal) string {
	if n, ok := signalNames[s]; ok {
		return n
	}
	return fmt.Sprintf("signal %d", int(s))
}

// Status is a snapshot of an instance.
type Status struct {
	Name        string
	State       State
	PID         int       // 0 when no process runs
	StartedAt   time.Time // when the current (or last) process was started
	Restarts    int       // automatic restarts since Start
	LastExit    *Exit     // nil until a process has exited
	NextAttempt time.Time // in backoff and crashed: when the next start is due
	LastError   string    // the last fork/exec failure, "" if the last start worked
	// LastCause is why the latest restart (in progress, or the one that
	// started the current process) was made, when it was not a plain
	// one: CauseUnhealthy from RestartUnhealthy, from its stopping state
	// until the next start, stop or exit. It is "" after Start, Restart,
	// Stop and an automatic restart after an exit or a failed start.
	LastCause string
	Meta      any // Spec.Meta, as given
}

// Event is a state change of an instance.
type Event struct {
	Name  string
	Time  time.Time
	State State
	PID   int   // the process the change is about, 0 if none
	Exit  *Exit // set when the change follows an exit
	// NextAttempt is when the next start is due, in backoff and crashed.
	NextAttempt time.Time
	// Restarts and StartedAt are Status.Restarts and Status.StartedAt
	// as they were when the change happened (StartedAt is that of the
	// current or last process: of the exited one in backoff, of the new
	// one in running), so a waiter can act on the event alone.
	Restarts  int
	StartedAt time.Time
	// Cause is Status.LastCause at the change: CauseUnhealthy on the
	// stopping, starting and running events of a RestartUnhealthy (the
	// starting one carries the stopped process's PID and Exit), so a
	// subscriber can tell "restarted: unhealthy" from a crash.
	Cause string
	// Meta is Spec.Meta of the instance, as given.
	Meta any
	// Missed counts the events this subscriber lost, because its
	// buffer was full, just before this one.
	Missed int
}

// LogLine is one stored line of output.
type LogLine struct {
	Name   string
	Time   time.Time
	Tag    string // LogConfig.Tag of the instance that wrote it ("" for none)
	Stream string // "stdout" or "stderr"; "" for a stored line that does not parse
	Text   string // without the newline
	// Split marks a piece of a line longer than LogConfig.MaxLine that
	// continues in the next piece of the same stream; the last piece
	// has Split false. Joining pieces while Split gives the whole line.
	Split bool
	// Partial marks the last line of an output that did not end with a
	// newline (stored when the process's pipe closed).
	Partial bool
	// Missed counts the lines a follower lost, because its buffer was
	// full, just before this one.
	Missed int
}
