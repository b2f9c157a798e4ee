package supervisor

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeLimiter is a Container and Limiter without cgroups: it records the
// limits it is given and reports the OOM count a test sets, as
// memory.events would after the kernel's OOM killer acted.
type fakeLimiter struct {
	mu     sync.Mutex
	limits map[string][4]float64 // memory max, memory high, cpus, tasks
	oom    map[string]uint64
	sets   int
}

func newFakeLimiter() *fakeLimiter {
	return &fakeLimiter{limits: map[string][4]float64{}, oom: map[string]uint64{}}
}

func (f *fakeLimiter) Prepare(string) (int, error) { return -1, nil }
func (f *fakeLimiter) Kill(string) error           { return nil }
func (f *fakeLimiter) Remove(string) error         { return nil }

func (f *fakeLimiter) SetLimits(name string, memoryMax, memoryHigh int64, cpus float64, tasksMax int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.limits[name] = [4]float64{float64(memoryMax), float64(memoryHigh), cpus, float64(tasksMax)}
	f.sets++
	return nil
}

func (f *fakeLimiter) Unenforced(memoryMax, _ int64, _ float64, _ int64) string {
	if memoryMax > 1<<40 {
		return "the memory controller is not available"
	}
	return ""
}

func (f *fakeLimiter) OOMEvents(name string) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.oom[name], nil
}

func (f *fakeLimiter) Usage(string) (int64, int64, error) { return 4096, 1500000, nil }

func (f *fakeLimiter) addOOM(name string) {
	f.mu.Lock()
	f.oom[name]++
	f.mu.Unlock()
}

// TestLimits_OOMKillIsACrash ensures an instance's limits reach the
// Limiter before each start, that a SIGKILL while the container's OOM
// count grew is an OOM kill ("killed by the OOM killer at 256 MiB")
// restarted like any crash, and that a plain SIGKILL is not one.
func TestLimits_OOMKillIsACrash(t *testing.T) {
	fl := newFakeLimiter()
	s := startSup(t, Config{Container: fl})
	events, cancel := s.Subscribe(64)
	defer cancel()
	lim := Limits{MemoryMax: 256 << 20, MemoryHigh: 200 << 20, CPUs: 0.5, TasksMax: 64}
	err := s.Start(Spec{Name: "web.1", Command: helperCmd("env"), Env: helperEnv(), Limits: lim,
		Backoff: Backoff{Initial: 10 * time.Millisecond, Settle: 50 * time.Millisecond, MinRun: 10 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	first := nextEvent(t, events, "web.1", inState(StateRunning))
	fl.mu.Lock()
	got := fl.limits["web.1"]
	fl.mu.Unlock()
	if got != [4]float64{256 << 20, 200 << 20, 0.5, 64} {
		t.Errorf("SetLimits got %v", got)
	}
	if !s.Enforces() || s.LimitsUnenforced(lim) != "" {
		t.Errorf("Enforces %v, LimitsUnenforced %q; want enforced", s.Enforces(), s.LimitsUnenforced(lim))
	}
	if u, ok := s.Usage("web.1"); !ok || u.MemoryBytes != 4096 || u.CPU != 1500*time.Millisecond || u.Limits != lim {
		t.Errorf("Usage = %+v, %v", u, ok)
	}

	// The kernel's OOM killer: the count grows, then the SIGKILL.
	fl.addOOM("web.1")
	syscall.Kill(first.PID, syscall.SIGKILL)
	ev := nextEvent(t, events, "web.1", func(ev Event) bool { return ev.Exit != nil })
	if !ev.Exit.OOMKill || ev.Exit.MemoryMax != 256<<20 || ev.Exit.String() != "killed by the OOM killer at 256 MiB" {
		t.Errorf("exit after an OOM kill: %+v %q", *ev.Exit, ev.Exit.String())
	}
	second := nextEvent(t, events, "web.1", inState(StateRunning))
	if st, _ := s.Status("web.1"); st.Restarts != 1 || st.LastExit == nil || !st.LastExit.OOMKill {
		t.Errorf("status after the OOM kill: %+v", st)
	}

	// A SIGKILL of someone else's: no OOM kill.
	syscall.Kill(second.PID, syscall.SIGKILL)
	ev = nextEvent(t, events, "web.1", func(ev Event) bool { return ev.Exit != nil })
	if ev.Exit.OOMKill || ev.Exit.String() != "signal SIGKILL" {
		t.Errorf("exit after a plain SIGKILL: %+v %q", *ev.Exit, ev.Exit.String())
	}
	nextEvent(t, events, "web.1", inState(StateRunning))
	fl.mu.Lock()
	sets := fl.sets
	fl.mu.Unlock()
	if sets != 3 {
		t.Errorf("SetLimits called %d times for 3 starts", sets)
	}
	if _, err := s.Stop(context.Background(), "web.1"); err != nil {
		t.Fatal(err)
	}
}

// TestLimits_Unenforced covers what a supervisor says of limits it
// cannot enforce, and refuses bad ones before anything starts.
func TestLimits_Unenforced(t *testing.T) {
	s := startSup(t, Config{})
	lim := Limits{MemoryMax: 64 << 20}
	if s.Enforces() || s.LimitsUnenforced(lim) != NoLimiter || s.LimitsUnenforced(Limits{}) != "" {
		t.Errorf("without a Limiter: Enforces %v, LimitsUnenforced %q", s.Enforces(), s.LimitsUnenforced(lim))
	}
	fl := notRunning(t, newFakeLimiter())
	if why := fl.LimitsUnenforced(Limits{MemoryMax: 2 << 40}); !strings.Contains(why, "memory controller") {
		t.Errorf("LimitsUnenforced = %q", why)
	}
	for _, bad := range []Limits{{MemoryMax: -1}, {MemoryHigh: -5}, {TasksMax: -1}, {CPUs: -0.5}} {
		err := s.Start(Spec{Name: "bad", Command: "true", Limits: bad})
		var se *SpecError
		if !errors.As(err, &se) || !strings.HasPrefix(se.Field, "Limits.") {
			t.Errorf("Start with limits %+v: %v, want a *SpecError on Limits", bad, err)
		}
	}
	if l := s.List(); len(l) != 0 {
		t.Errorf("bad specs started %v", l)
	}
}

// notRunning returns a supervisor with the given Container, not run: only its
// queries are used.
func notRunning(t *testing.T, c Container) *Supervisor {
	t.Helper()
	return New(Config{Container: c}, nil)
}

func TestLimits_String(t *testing.T) {
	for _, tc := range []struct {
		l    Limits
		want string
	}{
		{Limits{}, "none"},
		{Limits{MemoryMax: 256 << 20, CPUs: 1.5, TasksMax: 10}, "memory_max 256 MiB, cpus 1.5, tasks_max 10"},
		{Limits{MemoryHigh: 1536 << 10}, "memory_high 1536 KiB"},
		{Limits{MemoryMax: 1<<30 + 1}, "memory_max 1073741825 bytes"},
	} {
		if got := tc.l.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.l, got, tc.want)
		}
	}
	if got := (Exit{Code: -1, Signal: syscall.SIGKILL, OOMKill: true}).String(); got != "killed by the OOM killer" {
		t.Errorf("OOM exit without a limit: %q", got)
	}
}

// TestRunAttached covers one-off commands: stdout and stderr streamed
// apart, the exit code, OneOffs while it runs with its pid, a second one
// of the same name refused, and the stop of its group when its context
// ends.
func TestRunAttached(t *testing.T) {
	s := startSup(t, Config{})
	var out, errOut bytes.Buffer
	exit, err := s.RunAttached(context.Background(), Spec{Name: "app/run.1", Command: "echo out; echo err >&2; exit 3"}, &out, &errOut, nil)
	if err != nil || exit.Code != 3 || out.String() != "out\n" || errOut.String() != "err\n" {
		t.Fatalf("RunAttached: %+v %v, stdout %q, stderr %q", exit, err, out.String(), errOut.String())
	}
	if l := s.OneOffs(); len(l) != 0 {
		t.Errorf("OneOffs after the end: %v", l)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan int, 1)
	type result struct {
		exit Exit
		err  error
	}
	done := make(chan result, 1)
	go func() {
		exit, err := s.RunAttached(ctx, Spec{Name: "app/run.2", Command: "sleep 1000 & wait", Meta: "meta"}, nil, nil,
			func(pid int) { started <- pid })
		done <- result{exit, err}
	}()
	pid := <-started
	l := s.OneOffs()
	if len(l) != 1 || l[0].Name != "app/run.2" || l[0].PID != pid || l[0].State != StateRunning || l[0].Meta != "meta" {
		t.Errorf("OneOffs while it runs: %+v, want app/run.2 running as %d", l, pid)
	}
	if _, err := s.RunAttached(context.Background(), Spec{Name: "app/run.2", Command: "true"}, nil, nil, nil); !errors.Is(err, ErrExists) {
		t.Errorf("a second app/run.2: %v, want ErrExists", err)
	}
	cancel()
	r := <-done
	if !errors.Is(r.err, context.Canceled) || r.exit.Signal != syscall.SIGTERM {
		t.Errorf("after its context ended: %+v %v, want SIGTERM and context.Canceled", r.exit, r.err)
	}
	if alive(pid) {
		t.Errorf("one-off %d still runs", pid)
	}
	if err := syscall.Kill(-pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("its process group is still there: %v", err)
	}
}

// TestRunAttached_FailingWriter ensures a writer that fails does not block
// the command: its output is dropped and the command runs to its end.
func TestRunAttached_FailingWriter(t *testing.T) {
	s := startSup(t, Config{})
	exit, err := s.RunAttached(context.Background(), Spec{Name: "spew", Command: helperCmd("spew", "20000", "100"), Env: helperEnv()},
		failingWriter{}, nil, nil)
	if err != nil || exit.Code != 0 {
		t.Fatalf("RunAttached with a failing writer: %+v %v", exit, err)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("client gone") }
