package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// proc is one process of an instance.
type proc struct {
	pid    int
	exited chan struct{} // closed by the reaper once exit is set
	exit   Exit
	output chan struct{} // closed once its output pipes reached end of file

	// stdout and stderr are the read ends of its output pipes (nil once
	// closed), kept for Detach; their readers own them until then.
	stdout, stderr *os.File
	// pidfd, for an adopted process that is not this process's child,
	// is the pidfd its exit is watched by (adopt.go); nil otherwise.
	pidfd *os.File
	// oomWatch says its container's OOM events are counted (a Limiter),
	// from oomBase at its start (limits.go).
	oomWatch bool
	oomBase  uint64
}

// instance is one supervised instance across its restarts.
type instance struct {
	s       *Supervisor
	spec    Spec     // with defaults; never changes
	markers []string // "KEY=value" of Spec.Markers; never changes
	logs    *logSink

	// opMu serializes Stop, Restart and RestartUnhealthy of this
	// instance. Lock order: opMu, then spawnMu, then mu.
	opMu sync.Mutex
	// stopWaiting counts the Stops waiting for or holding opMu: a
	// RestartUnhealthy that sees one does not start a new process.
	stopWaiting atomic.Int32
	// spawnMu is held by a spawn from its decision to start until the
	// process is recorded (or failed to start); halt takes it to wait
	// for a spawn in flight.
	spawnMu sync.Mutex

	mu          sync.Mutex // guards the fields below
	state       State
	proc        *proc // the running process, nil if none
	startedAt   time.Time
	restarts    int
	quick       int // quick exits (runs shorter than Backoff.MinRun) in a row; reset by a run of Backoff.Settle
	lastExit    *Exit
	lastErr     string
	nextAttempt time.Time
	timer       *time.Timer // pending backoff restart
	halting     bool        // a Stop, Restart or RestartUnhealthy is in progress: exits are not restarted
	cause       string      // Status.LastCause; while halting, also the cause of the exit
	announced   bool        // starting was published with the exit that caused it
	gone        bool        // stopped and forgotten
	detached    bool        // Detach let go of the process: nothing more is done
	lastExited  *proc       // the process that exited last, for WaitOutput
	pipes       map[*os.File]*pipeReader
	idle        chan struct{} // closed while no pipe reader runs
}

func newInstance(s *Supervisor, sp Spec) *instance {
	idle := make(chan struct{})
	close(idle)
	return &instance{s: s, spec: sp, markers: markerValues(sp.Env, sp.Markers), logs: newLogSink(s, sp.Name, sp.Log), pipes: make(map[*os.File]*pipeReader), idle: idle}
}

// setState is the one place where the state changes; every change is
// published, with the fields it shares with Status taken from the same
// fields status reads, so the event agrees with a Status taken at that
// moment. Called with mu held.
func (in *instance) setState(st State, pid int, exit *Exit) {
	in.state = st
	ev := Event{Name: in.spec.Name, Time: time.Now(), State: st, PID: pid, Exit: exit,
		Restarts: in.restarts, StartedAt: in.startedAt, Cause: in.cause, Meta: in.spec.Meta}
	if st == StateBackoff || st == StateCrashed {
		ev.NextAttempt = in.nextAttempt
	}
	in.s.publish(ev)
}

func (in *instance) isGone() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.gone
}

func (in *instance) status() Status {
	in.mu.Lock()
	defer in.mu.Unlock()
	st := Status{Name: in.spec.Name, State: in.state, StartedAt: in.startedAt, Restarts: in.restarts, LastError: in.lastErr,
		LastCause: in.cause, Meta: in.spec.Meta}
	if in.proc != nil {
		st.PID = in.proc.pid
	}
	if in.lastExit != nil {
		e := *in.lastExit
		st.LastExit = &e
	}
	if in.state == StateBackoff || in.state == StateCrashed {
		st.NextAttempt = in.nextAttempt
	}
	return st
}

// spawn starts a process unless the instance is being halted. On
// failure it schedules a retry like a quick exit and returns the error.
func (in *instance) spawn() error {
	in.spawnMu.Lock()
	defer in.spawnMu.Unlock()
	in.mu.Lock()
	if in.halting || in.gone || in.detached {
		in.mu.Unlock()
		return nil
	}
	in.timer = nil
	if !in.announced {
		in.setState(StateStarting, 0, nil)
	}
	in.announced = false
	in.mu.Unlock()
	err := in.s.startInstance(in)
	if err != nil {
		in.mu.Lock()
		in.lastErr = err.Error()
		in.cause = "" // what follows is a retry after a failed start
		in.quick++
		in.restarts++
		in.scheduleRetry(0, nil)
		in.mu.Unlock()
		in.s.log.Warn("start failed", "instance", in.spec.Name, "error", err)
	}
	return err
}

// respawn restarts after an unexpected exit, clearing the container
// first so nothing of the old process runs beside the new one.
func (in *instance) respawn() {
	in.stopEscaped(context.Background())
	if c := in.s.cfg.Container; c != nil {
		if err := c.Kill(in.spec.Name); err != nil {
			in.s.log.Warn("kill container before restart", "instance", in.spec.Name, "error", err)
		}
	}
	in.spawn() // a failure schedules a retry and is logged
}

// started records a process that has just exec'd. It runs before the
// reaper may see the pid exit.
func (in *instance) started(p *proc) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.proc = p
	in.startedAt = time.Now()
	in.lastErr = ""
	in.setState(StateRunning, p.pid, nil)
}

// exited handles the exit of p. It runs on the reaper goroutine.
func (in *instance) exited(p *proc, ws syscall.WaitStatus, at time.Time) {
	exit := exitOf(ws, at)
	in.markOOM(p, ws, &exit)
	in.exitedAs(p, exit, at)
}

// exitedAs handles the exit of p, reaped by the reaper or, for an adopted
// process that is not a child, seen on its pidfd (its status unknown).
func (in *instance) exitedAs(p *proc, exit Exit, at time.Time) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.halting {
		exit.Cause = in.cause
	}
	p.exit = exit
	close(p.exited)
	in.lastExit = &exit
	in.lastExited = p
	if in.proc == p {
		in.proc = nil
	}
	if in.halting || in.gone {
		return // halt reports the exit
	}
	// Leftovers of the group must not run beside the next process.
	syscall.Kill(-p.pid, syscall.SIGKILL)
	in.restarts++
	in.cause = ""
	// See Backoff: a settled run resets the count, a run of MinRun
	// leaves it, a quicker one adds to it and waits.
	ran := at.Sub(in.startedAt)
	if ran >= in.spec.Backoff.Settle {
		in.quick = 0
	}
	if ran >= in.spec.Backoff.MinRun {
		in.setState(StateStarting, p.pid, &exit)
		in.announced = true
		in.s.wg.Add(1)
		go func() {
			defer in.s.wg.Done()
			in.respawn()
		}()
		return
	}
	in.quick++
	in.scheduleRetry(p.pid, &exit)
	in.s.log.Debug("quick exit", "instance", in.spec.Name, "exit", exit.String(), "in_a_row", in.quick)
}

// scheduleRetry arms the backoff timer for the in.quick-th quick exit in
// a row and publishes backoff (or crashed) with the exit of pid, if any.
// Called with mu held.
func (in *instance) scheduleRetry(pid int, exit *Exit) {
	d := in.spec.Backoff.delay(in.quick)
	in.nextAttempt = time.Now().Add(d)
	st := StateBackoff
	if in.quick >= in.spec.Backoff.CrashAfter {
		st = StateCrashed
	}
	in.setState(st, pid, exit)
	in.s.wg.Add(1)
	in.timer = time.AfterFunc(d, func() {
		defer in.s.wg.Done()
		in.respawn()
	})
}

// cancelTimer stops a pending backoff restart. Called with mu held.
func (in *instance) cancelTimer() {
	if in.timer != nil && in.timer.Stop() {
		in.s.wg.Done()
	}
	in.timer = nil
}

// delay returns the wait before the n-th attempt after quick exits:
// Initial doubling up to Max, minus up to 20% of jitter.
func (b Backoff) delay(n int) time.Duration {
	d := b.Initial
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return d - time.Duration(rand.Int64N(int64(d)/5+1))
}

// halt stops the process group on purpose and waits until it is gone and
// its output is stored. The instance stays known; Stop forgets it and
// Restart resumes it.
func (in *instance) halt(ctx context.Context) (Exit, error) {
	in.mu.Lock()
	in.beginHalt("")
	in.mu.Unlock()
	exit, err := in.stopGroup(ctx)
	in.drain(ctx)
	return exit, err
}

// beginHalt marks the instance halting, so that no exit from now on is
// restarted or counted, records cause (Status.LastCause, and Exit.Cause
// of the exit to come) and cancels a pending backoff restart. Called
// with mu held.
func (in *instance) beginHalt(cause string) {
	in.halting = true
	in.cause = cause
	in.cancelTimer()
}

// stopGroup stops the process group of a halting instance: it waits for
// a spawn in flight, publishes stopping, signals the group (SIGKILL after
// the stop timeout) and clears the container. It returns the exit of the
// process it stopped, or the last exit if none ran, without waiting for
// the output to be stored.
func (in *instance) stopGroup(ctx context.Context) (Exit, error) {
	in.spawnMu.Lock() // a spawn in flight finishes first
	in.mu.Lock()
	p := in.proc
	var exit Exit
	if in.lastExit != nil {
		exit = *in.lastExit
	}
	pid := 0
	if p != nil {
		pid = p.pid
	}
	in.setState(StateStopping, pid, nil)
	in.mu.Unlock()
	in.spawnMu.Unlock()

	// What left the group is found before the group is signalled, while
	// the chain of parents through the leader still stands.
	var es []escapee
	if p != nil {
		es = findEscaped(p.pid, p.exited, in.markers, in.s.r.known)
	} else {
		es = findEscaped(0, nil, in.markers, in.s.r.known)
	}
	deadline := time.Now().Add(in.spec.StopTimeout)
	signalEscapees(es, in.spec.StopSignal)
	var err error
	if p != nil {
		err = killGroup(ctx, p.pid, p.exited, in.spec.StopSignal, in.spec.StopTimeout)
		select {
		case <-p.exited:
			exit = p.exit
		default:
		}
	}
	if werr := waitEscapees(ctx, es, deadline); werr != nil && ctx.Err() == nil {
		in.s.log.Warn("stop processes that left the group", "instance", in.spec.Name, "error", werr)
	}
	if len(es) > 0 {
		// What they forked meanwhile. With none found before the
		// signal, every process was in the group, and a second walk
		// would only cost each stop a look at every descendant.
		in.stopEscaped(ctx)
	}
	closeEscapees(es)
	if c := in.s.cfg.Container; c != nil {
		if cerr := c.Kill(in.spec.Name); cerr != nil {
			err = errors.Join(err, fmt.Errorf("kill container of %s: %w", in.spec.Name, cerr))
		}
	}
	return exit, err
}

// restartUnhealthy stops the process pid if it still runs and starts a
// new one at once, recording CauseUnhealthy; see
// Supervisor.RestartUnhealthy. Called with opMu held.
func (in *instance) restartUnhealthy(pid int, reason string) error {
	name := in.spec.Name
	in.mu.Lock()
	switch {
	case in.gone || in.stopWaiting.Load() > 0:
		in.mu.Unlock()
		return fmt.Errorf("restart %s: %w", name, ErrNotFound)
	case in.proc == nil || in.proc.pid != pid || in.halting:
		in.mu.Unlock()
		return fmt.Errorf("restart %s pid %d: %w", name, pid, ErrStalePID)
	}
	// Checked and marked under one lock: from here no exit of pid is
	// restarted by the reaper, so nothing but pid can be stopped below.
	in.beginHalt(CauseUnhealthy)
	in.mu.Unlock()
	in.s.log.Info("restarting unhealthy process", "instance", name, "pid", pid, "reason", reason)

	// No drain: as after a crash, the new process starts while the old
	// one's last output is still being stored.
	exit, err := in.stopGroup(context.Background())
	if err != nil { // only the container's kill can fail; go on, as respawn does
		in.s.log.Warn("restart unhealthy process", "instance", name, "error", err)
	}
	if in.stopWaiting.Load() > 0 {
		// The Stop wins; the exit it reports was no restart.
		in.mu.Lock()
		if in.lastExit != nil {
			e := *in.lastExit
			e.Cause = ""
			in.lastExit = &e
		}
		in.mu.Unlock()
		return fmt.Errorf("restart %s: stopped meanwhile: %w", name, ErrNotFound)
	}
	in.mu.Lock()
	in.halting = false
	if exit.Time.Sub(in.startedAt) >= in.spec.Backoff.Settle {
		in.quick = 0 // a settled run resets the backoff, as its exit would
	}
	in.restarts++
	in.setState(StateStarting, pid, &exit)
	in.announced = true
	in.mu.Unlock()
	if err := in.spawn(); err != nil {
		return &SpawnError{Name: name, Err: err}
	}
	return nil
}

// resume lets a halted instance run again, with its backoff reset.
func (in *instance) resume() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.halting = false
	in.quick = 0
}

// forget marks a halted instance stopped for good and closes its log.
func (in *instance) forget(exit Exit) {
	in.mu.Lock()
	in.gone = true
	var ep *Exit
	if !exit.Time.IsZero() {
		ep = &exit
	}
	in.setState(StateStopped, 0, ep)
	in.mu.Unlock()
	in.logs.close()
}

// drain waits for the pipe readers to reach EOF, at most DrainTimeout
// (a process that left the group may hold a pipe open), then closes the
// pipes under them and waits for them to finish.
func (in *instance) drain(ctx context.Context) {
	in.mu.Lock()
	idle := in.idle
	in.mu.Unlock()
	t := time.NewTimer(in.s.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-idle:
		return
	case <-t.C:
	case <-ctx.Done():
	}
	in.mu.Lock()
	for f := range in.pipes {
		f.Close()
	}
	in.mu.Unlock()
	<-idle
}

// addReader starts a reader goroutine for the read end of an output
// pipe; done is called once the pipe reached end of file.
func (in *instance) addReader(f *os.File, stream string, done func()) {
	in.mu.Lock()
	if len(in.pipes) == 0 {
		in.idle = make(chan struct{})
	}
	pr := &pipeReader{f: f, stream: stream, ls: in.logs, maxLine: in.spec.Log.MaxLine}
	in.pipes[f] = pr
	in.mu.Unlock()
	in.s.wg.Add(1)
	go func() {
		defer in.s.wg.Done()
		pr.run()
		done()
		in.mu.Lock()
		delete(in.pipes, f)
		if len(in.pipes) == 0 {
			close(in.idle)
		}
		in.mu.Unlock()
	}()
}

// killGroup sends sig (and SIGCONT, so a stopped group can act on it) to
// the process group pgid, SIGKILL after timeout, and returns once the
// leader has been reaped (exited is closed) and no member of the group
// is left. The group is checked with kill(-pgid, 0) at a short, growing
// interval only while members outlive the leader. If ctx ends first the
// group is killed and ctx's error returned at once.
func killGroup(ctx context.Context, pgid int, exited <-chan struct{}, sig syscall.Signal, timeout time.Duration) error {
	syscall.Kill(-pgid, sig)
	if sig != syscall.SIGKILL && sig != syscall.SIGCONT {
		syscall.Kill(-pgid, syscall.SIGCONT)
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	kill := func() { syscall.Kill(-pgid, syscall.SIGKILL) }
	for leader := true; leader; {
		select {
		case <-exited:
			leader = false
		case <-deadline.C:
			kill()
		case <-ctx.Done():
			kill()
			return ctx.Err()
		}
	}
	interval := time.Millisecond
	for {
		if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
			return nil
		}
		t := time.NewTimer(interval)
		select {
		case <-t.C:
		case <-deadline.C:
			kill()
		case <-ctx.Done():
			t.Stop()
			kill()
			return ctx.Err()
		}
		t.Stop()
		interval = min(2*interval, 50*time.Millisecond)
	}
}
