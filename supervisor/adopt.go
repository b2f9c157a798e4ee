package supervisor

// Adoption: a supervisor takes over the processes another one left
// running (the agent re-executed in place, or restarted after a crash),
// and Detach is how a supervisor lets go of its processes for that.
//
// A process is adopted only when it is beyond doubt the one its record
// names (nomad#23969 killed a process that had taken a reused pid): the
// pid is held by a pidfd opened first, and only then are its start time
// (/proc/PID/stat, which a reused pid cannot share), its process group
// (it leads its own, as every process Start makes does), every one of
// the spec's Markers in its environment and the owner's own check
// (Adopted.Verify, e.g. its cgroup) compared with the record. A process
// still this process's child (a re-exec keeps the children) is reaped by
// the reaper as any other; one that is not (it was reparented to systemd
// or init when the agent that started it died) is watched through its
// pidfd, and its exit status is unknown.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotAdopted is returned (wrapped, with the reason) by Adopt when the
// process cannot be verified to be the recorded one, or no longer runs.
// Nothing was changed: the caller stops the process as a leftover, or
// starts the instance afresh.
var ErrNotAdopted = errors.New("process not adopted")

// Adopted describes a running process that another supervisor started,
// for Adopt.
type Adopted struct {
	// PID is the process, the leader of its own process group.
	PID int
	// StartTime is its start time as recorded when it started: field 22
	// of /proc/PID/stat, clock ticks after boot. A process with another
	// start time (a reused pid) is never adopted.
	StartTime uint64
	// Stdout and Stderr are the read ends of its output pipes, kept
	// outside the process that died (systemd's file descriptor store)
	// or passed through exec. Adopt owns them from the call on, adopted
	// or not (it closes them when it refuses).
	Stdout, Stderr *os.File
	// Verify, if set, is a further check of the owner's on the process
	// (e.g. that it sits in the instance's cgroup), made while the pid is
	// held by a pidfd.
	Verify func(pid int) error
}

// Adopt supervises a process another supervisor started for spec as if
// Start had started it: its output is read from Stdout and Stderr, it is
// restarted when it exits, stopped by Stop. It is verified first (see
// the file's comment): spec must have Markers, and a process that does
// not match gets an error wrapping ErrNotAdopted. Status shows it running
// since its real start time (from /proc), with no restart. A name in use
// returns ErrExists; a bad spec a *SpecError.
func (s *Supervisor) Adopt(spec Spec, a Adopted) (err error) {
	defer func() {
		if err != nil {
			closeFiles(a.Stdout, a.Stderr)
		}
	}()
	sp, err := spec.withDefaults()
	if err != nil {
		return err
	}
	notAdopted := func(format string, args ...any) error {
		return fmt.Errorf("adopt %s pid %d: %w: %s", sp.Name, a.PID, ErrNotAdopted, fmt.Sprintf(format, args...))
	}
	markers := markerValues(sp.Env, sp.Markers)
	switch {
	case len(markers) == 0:
		return notAdopted("the spec has no markers to recognise the process by")
	case a.Stdout == nil || a.Stderr == nil:
		return notAdopted("its output pipes were not kept (it would die of SIGPIPE at its next line)")
	case a.PID <= 1:
		return notAdopted("bad pid")
	}
	if !s.enter() {
		return ErrClosed
	}
	defer s.wg.Done()

	// While spawnMu is held shared, the reaper reaps no child it does
	// not know: a child checked alive below cannot vanish before it is
	// registered.
	s.r.spawnMu.RLock()
	locked := true
	defer func() {
		if locked {
			s.r.spawnMu.RUnlock()
		}
	}()
	fd, err := unix.PidfdOpen(a.PID, unix.PIDFD_NONBLOCK)
	if err != nil {
		return notAdopted("pidfd_open: %v", err)
	}
	pidfd := os.NewFile(uintptr(fd), "pidfd "+strconv.Itoa(a.PID))
	keepPidfd := false
	defer func() {
		if !keepPidfd {
			pidfd.Close()
		}
	}()
	st, ok := readStat(a.PID)
	switch {
	case !ok:
		return notAdopted("it no longer runs")
	case st.start != a.StartTime:
		return notAdopted("start time %d, recorded %d: the pid was reused", st.start, a.StartTime)
	case st.zombie:
		return notAdopted("it has exited")
	case st.pgid != a.PID:
		return notAdopted("it does not lead its own process group (pgid %d)", st.pgid)
	case !environHas(a.PID, markers):
		return notAdopted("its environment lacks the instance's markers")
	}
	if a.Verify != nil {
		if err := a.Verify(a.PID); err != nil {
			return notAdopted("%v", err)
		}
	}
	started, err := startedAt(st.start)
	if err != nil {
		return notAdopted("%v", err)
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if _, ok := s.instances[sp.Name]; ok {
		s.mu.Unlock()
		return fmt.Errorf("adopt %s: %w", sp.Name, ErrExists)
	}
	in := newInstance(s, sp)
	s.instances[sp.Name] = in
	s.mu.Unlock()

	p := &proc{pid: a.PID, exited: make(chan struct{}), output: make(chan struct{})}
	child := st.ppid == os.Getpid()
	if !child {
		p.pidfd = pidfd
		keepPidfd = true
	}
	in.mu.Lock()
	in.proc = p
	in.startedAt = started
	in.setState(StateRunning, p.pid, nil)
	in.mu.Unlock()
	if child {
		// Still our child (a re-exec in place): the reaper reaps it.
		s.r.register(a.PID, func(ws syscall.WaitStatus, at time.Time) { in.exited(p, ws, at) })
		s.r.spawnMu.RUnlock() // registered: the reaper may take it from here
		locked = false
	} else {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			in.watchPidfd(p)
		}()
	}
	in.logs.seed()
	in.readOutput(p, a.Stdout, a.Stderr)
	s.log.Info("adopted process", "instance", sp.Name, "pid", a.PID, "running_since", started.Format(time.RFC3339))
	return nil
}

// watchPidfd waits until the adopted process p, not a child of this
// process, exits (its pidfd turns readable) and handles the exit, with
// an unknown status. It returns without doing so when Detach closes the
// pidfd.
func (in *instance) watchPidfd(p *proc) {
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		in.s.log.Error("watch adopted process", "instance", in.spec.Name, "pid", p.pid, "error", err)
		return
	}
	err = rc.Read(func(fd uintptr) bool {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, 0)
		return err == nil && n > 0
	})
	in.mu.Lock()
	detached := in.detached
	in.mu.Unlock()
	if err != nil || detached {
		return // closed by Detach
	}
	at := time.Now()
	p.pidfd.Close()
	in.exitedAs(p, Exit{Code: -1, Time: at}, at)
}

// Handoff is a process Detach let go of, with the read ends of its
// output pipes.
type Handoff struct {
	Name           string
	PID            int
	Stdout, Stderr *os.File
}

// Detach lets go of every instance without touching its process, so
// that another supervisor can Adopt them: the re-executed agent, or the
// next one after this one exits. Backoff restarts pending are cancelled
// and no exit is restarted from now on; the pipe readers stop once they
// have stored what they read (what the processes write from now on
// waits in the pipes), and the watchers of adopted processes stop. It
// returns, for each instance with a running process, the read ends of
// its pipes (still open: the caller passes them on, then closes them).
// Nothing can be started afterwards, and Run, once its context ends,
// stops nothing. Call it with no Stop or Restart in progress.
func (s *Supervisor) Detach() []Handoff {
	s.mu.Lock()
	if !s.closed {
		close(s.shutdown)
	}
	s.closed, s.detached = true, true
	ins := make([]*instance, 0, len(s.instances))
	for _, in := range s.instances {
		ins = append(ins, in)
	}
	s.mu.Unlock()

	type held struct {
		in       *instance
		p        *proc
		out, err bool
	}
	var hs []held
	for _, in := range ins {
		in.spawnMu.Lock() // a spawn in flight finishes first
		in.mu.Lock()
		in.detached = true
		in.halting = true
		in.cancelTimer()
		h := held{in: in, p: in.proc}
		for f, pr := range in.pipes {
			pr.detach.Store(true)
			f.SetReadDeadline(time.Now()) // wakes the reader
			if h.p != nil && f == h.p.stdout {
				h.out = true
			}
			if h.p != nil && f == h.p.stderr {
				h.err = true
			}
		}
		if h.p != nil && h.p.pidfd != nil {
			h.p.pidfd.Close()
		}
		in.mu.Unlock()
		in.spawnMu.Unlock()
		if h.p != nil {
			hs = append(hs, h)
		}
	}
	s.wg.Wait() // readers, watchers, timers and restarts in flight
	s.mu.Lock()
	s.instances = make(map[string]*instance) // let go: Run stops none
	s.mu.Unlock()
	for _, in := range ins {
		in.logs.close() // everything read is in the file
	}
	var out []Handoff
	for _, h := range hs {
		select {
		case <-h.p.exited:
			closeFiles(pick(h.out, h.p.stdout), pick(h.err, h.p.stderr))
			continue // it exited meanwhile: nothing to hand over
		default:
		}
		if !h.out || !h.err {
			closeFiles(pick(h.out, h.p.stdout), pick(h.err, h.p.stderr))
			continue // its output was no longer read: it cannot be adopted
		}
		for _, f := range []*os.File{h.p.stdout, h.p.stderr} {
			f.SetReadDeadline(time.Time{})
		}
		out = append(out, Handoff{Name: h.in.spec.Name, PID: h.p.pid, Stdout: h.p.stdout, Stderr: h.p.stderr})
	}
	return out
}

func pick(ok bool, f *os.File) *os.File {
	if ok {
		return f
	}
	return nil
}

func closeFiles(fs ...*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

// clockTicks is USER_HZ, the unit of start times in /proc/PID/stat: 100
// on every Linux architecture Go supports.
const clockTicks = 100

// startedAt converts a start time in clock ticks after boot into wall
// clock time, from the uptime in /proc/uptime.
func startedAt(ticks uint64) (time.Time, error) {
	now := time.Now()
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return time.Time{}, fmt.Errorf("read uptime: %w", err)
	}
	f := bytes.Fields(b)
	if len(f) == 0 {
		return time.Time{}, errors.New("read uptime: empty /proc/uptime")
	}
	up, err := strconv.ParseFloat(string(f[0]), 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("read uptime: %w", err)
	}
	ran := time.Duration(up*float64(time.Second)) - time.Duration(ticks)*time.Second/clockTicks
	return now.Add(-ran), nil
}

// seed fills the memory of an adopted instance's log (what Tail returns)
// with the last lines stored in its file, so that the lines the process
// wrote under the previous supervisor are shown with the new ones. Call
// it before the pipe readers start.
func (ls *logSink) seed() {
	m := ls.cfg.Memory
	if m <= 0 || ls.cfg.Path == "" {
		return
	}
	lines, err := ReadLogFile(ls.cfg.Path, m)
	if err != nil || len(lines) == 0 {
		return
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for i := 0; i < len(lines); {
		// One batch per run of lines that shared a read (one stamp).
		first := lines[i]
		word := "out"
		if first.Stream == "stderr" {
			word = "err"
		}
		b := &batch{}
		b.reset(first.Time, first.Tag, word)
		for ; i < len(lines) && lines[i].Time.Equal(first.Time) && lines[i].Stream == first.Stream && lines[i].Tag == first.Tag; i++ {
			var flag byte
			switch {
			case lines[i].Split:
				flag = flagSplit
			case lines[i].Partial:
				flag = flagPartial
			}
			b.add([]byte(lines[i].Text), flag)
		}
		ls.remember(b, m)
	}
}

// Salvage stores what a process that is gone left in its output pipes
// (it died while no supervisor read them) in spec's log, as its reader
// would have, and closes the pipes. It reads until end of file, or for
// at most timeout while something still holds a pipe's write end. Only
// spec's Name and Log are used (with their defaults).
func (s *Supervisor) Salvage(spec Spec, stdout, stderr *os.File, timeout time.Duration) error {
	if spec.Command == "" {
		spec.Command = "true" // not run: only the log settings matter
	}
	sp, err := spec.withDefaults()
	if err != nil {
		closeFiles(stdout, stderr)
		return err
	}
	ls := newLogSink(s, sp.Name, sp.Log)
	var wg sync.WaitGroup
	for _, p := range []struct {
		f      *os.File
		stream string
	}{{stdout, "stdout"}, {stderr, "stderr"}} {
		if p.f == nil {
			continue
		}
		p.f.SetReadDeadline(time.Now().Add(timeout))
		pr := &pipeReader{f: p.f, stream: p.stream, ls: ls, maxLine: sp.Log.MaxLine}
		wg.Go(pr.run) // closes the pipe
	}
	wg.Wait()
	ls.close()
	return nil
}
