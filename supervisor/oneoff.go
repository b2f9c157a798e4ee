package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"
)

// A one-off command (`berth run`) is attached to whoever asked for it: it
// runs once, its stdout and stderr go to the caller's writers as they
// come, and it is stopped when the caller's context ends. It is never
// restarted and is no instance; OneOffs lists the ones that run, so an
// owner can show them beside its instances.

// oneOffs are the one-off commands running now.
type oneOffs struct {
	mu   sync.Mutex // guards runs
	runs map[string]*oneOff
}

// oneOff is one running command of RunAttached.
type oneOff struct {
	name      string
	meta      any
	startedAt time.Time
	pid       int
}

// OneOffs returns a snapshot of the one-off commands RunAttached runs
// now, sorted by name: State is running (or starting before the exec),
// with the PID, StartedAt and Spec.Meta.
func (s *Supervisor) OneOffs() []Status {
	s.oneoffs.mu.Lock()
	out := make([]Status, 0, len(s.oneoffs.runs))
	for _, o := range s.oneoffs.runs {
		st := Status{Name: o.name, State: StateStarting, PID: o.pid, StartedAt: o.startedAt, Meta: o.meta}
		if o.pid > 0 {
			st.State = StateRunning
		}
		out = append(out, st)
	}
	s.oneoffs.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// register adds a one-off; ErrExists when the name runs already.
func (o *oneOffs) register(r *oneOff) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.runs[r.name]; ok {
		return fmt.Errorf("run %s: %w", r.name, ErrExists)
	}
	if o.runs == nil {
		o.runs = map[string]*oneOff{}
	}
	o.runs[r.name] = r
	return nil
}

func (o *oneOffs) setPID(r *oneOff, pid int) {
	o.mu.Lock()
	r.pid = pid
	r.startedAt = time.Now()
	o.mu.Unlock()
}

func (o *oneOffs) remove(r *oneOff) {
	o.mu.Lock()
	delete(o.runs, r.name)
	o.mu.Unlock()
}

// RunAttached runs a one-off command to completion, as RunCommand does
// (through the reaper, in its own process group and container, with the
// spec's env, dir and credential, stdin from /dev/null), but streams its
// stdout and stderr to the given writers as they are read, and lists it
// in OneOffs while it runs. Spec.Name must be unique among the running
// one-offs (ErrExists); Backoff, Log and Limits are not used.
//
// A writer that fails (the caller went away) gets no more output: what
// follows is read and dropped, so the command never blocks on a full
// pipe; the caller is expected to end ctx. Each writer is called from
// one goroutine at a time. started, if not nil, is called with the pid
// once the command has exec'd, before any output is written.
//
// When the command exits, anything left in its group is killed and its
// Exit returned (a non-zero exit is not an error). If ctx ends first (or
// the supervisor shuts down) the group gets the stop signal, SIGKILL
// after the stop timeout, and the exit is returned with ctx's error (or
// ErrClosed). A command that cannot start returns an error and no exit.
func (s *Supervisor) RunAttached(ctx context.Context, spec Spec, stdout, stderr io.Writer, started func(pid int)) (Exit, error) {
	sp, err := spec.withDefaults()
	if err != nil {
		return Exit{}, err
	}
	if !s.enter() {
		return Exit{}, ErrClosed
	}
	defer s.wg.Done()
	run := &oneOff{name: sp.Name, meta: sp.Meta, startedAt: time.Now()}
	if err := s.oneoffs.register(run); err != nil {
		return Exit{}, err
	}
	defer s.oneoffs.remove(run)

	path, argv, env := command(&sp)
	outR, outW, err := outputPipe(sp.Name, "stdout")
	if err != nil {
		return Exit{}, fmt.Errorf("run %s: %w", sp.Name, err)
	}
	errR, errW, err := outputPipe(sp.Name, "stderr")
	if err != nil {
		outR.Close()
		outW.Close()
		return Exit{}, fmt.Errorf("run %s: %w", sp.Name, err)
	}
	closeAll := func(fs ...*os.File) {
		for _, f := range fs {
			f.Close()
		}
	}
	cgroup, cleanup, err := s.onceContainer(sp.Name)
	if err != nil {
		closeAll(outR, outW, errR, errW)
		return Exit{}, err
	}
	defer cleanup()
	p := &proc{exited: make(chan struct{})}
	err = s.fork(&sp, path, argv, env, outW, errW, cgroup, func(pid int) exitFunc {
		p.pid = pid
		s.oneoffs.setPID(run, pid)
		return func(ws syscall.WaitStatus, at time.Time) {
			p.exit = exitOf(ws, at)
			close(p.exited)
		}
	})
	closeAll(outW, errW)
	if err != nil {
		closeAll(outR, errR)
		return Exit{}, fmt.Errorf("run %s: %w", sp.Name, err)
	}
	if started != nil {
		started(p.pid)
	}
	var readers sync.WaitGroup
	for _, pipe := range []struct {
		r *os.File
		w io.Writer
	}{{outR, stdout}, {errR, stderr}} {
		readers.Go(func() { copyOutput(pipe.w, pipe.r) })
	}
	readersDone := make(chan struct{})
	go func() { // owned: waited for below
		readers.Wait()
		close(readersDone)
	}()

	runErr := s.awaitCommand(ctx, &sp, p, readersDone, func() { closeAll(outR, errR) })
	return p.exit, runErr
}

// awaitCommand waits for the command p to exit, or for ctx or the
// supervisor's shutdown to cut it short (their error is returned), then
// deals with its process group (stopCommand). The output the command
// wrote before its exit is read to its end: it waits for done (its
// output readers) for up to DrainTimeout, since a process that left the
// group may hold the pipes open, then closes them with closePipes and
// waits for the readers to return.
func (s *Supervisor) awaitCommand(ctx context.Context, sp *Spec, p *proc, done <-chan struct{}, closePipes func()) error {
	var runErr error
	select {
	case <-p.exited:
	case <-ctx.Done():
		runErr = ctx.Err()
	case <-s.shutdown:
		runErr = ErrClosed
	}
	if err := s.stopCommand(sp, p, runErr != nil); err != nil {
		runErr = errors.Join(runErr, err)
	}
	t := time.NewTimer(s.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	closePipes()
	<-done
	return runErr
}

// stopCommand deals with the process group of a one-off command (and
// what left it): with stop set, the stop signal, SIGKILL after the stop
// timeout; else (the command exited) SIGKILL to what it left. It returns
// once the leader is reaped.
func (s *Supervisor) stopCommand(sp *Spec, p *proc, stop bool) error {
	sig, timeout := sp.StopSignal, sp.StopTimeout
	if !stop {
		sig = syscall.SIGKILL // leftovers only: the command itself has exited
	}
	markers := markerValues(sp.Env, sp.Markers)
	es := findEscaped(p.pid, p.exited, markers, s.r.known)
	deadline := time.Now().Add(timeout)
	signalEscapees(es, sig)
	err := killGroup(context.Background(), p.pid, p.exited, sig, timeout)
	if werr := waitEscapees(context.Background(), es, deadline); werr != nil {
		s.log.Warn("stop processes that left the group", "command", sp.Name, "error", werr)
	}
	closeEscapees(es)
	if es = findEscaped(0, nil, markers, s.r.known); len(es) > 0 { // what they forked meanwhile
		signalEscapees(es, syscall.SIGKILL)
		waitEscapees(context.Background(), es, time.Now())
		closeEscapees(es)
	}
	return err
}

// copyOutput copies what r reads to w until r ends; once w fails, the
// rest is read and dropped.
func copyOutput(w io.Writer, r *os.File) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 && w != nil {
			if _, werr := w.Write(buf[:n]); werr != nil {
				w = nil
			}
		}
		if err != nil {
			return
		}
	}
}
