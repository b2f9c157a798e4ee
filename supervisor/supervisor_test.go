package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Ensures a process that exits after settling is restarted at once,
// with the exit recorded and the restart counted.
func TestSupervisor_RestartAfterCrash(t *testing.T) {
	s := startSup(t, Config{})
	events, cancel := s.Subscribe(100)
	defer cancel()
	spec := Spec{Name: "app/web.1", Command: helperCmd("exit", "3", "100ms"), Env: helperEnv(),
		Backoff: Backoff{Settle: 50 * time.Millisecond, Initial: time.Hour, Max: time.Hour}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	first := nextEvent(t, events, spec.Name, inState(StateRunning))
	exit := nextEvent(t, events, spec.Name, func(ev Event) bool { return ev.Exit != nil })
	if exit.State != StateStarting || exit.Exit.Code != 3 || exit.PID != first.PID {
		t.Fatalf("exit event = %+v (exit %v), want starting after exit 3 of pid %d", exit, exit.Exit, first.PID)
	}
	second := nextEvent(t, events, spec.Name, inState(StateRunning))
	if second.PID == first.PID || second.PID == 0 {
		t.Fatalf("restarted pid %d, first pid %d", second.PID, first.PID)
	}
	st, err := s.Status(spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if st.Restarts < 1 || st.LastExit == nil || st.LastExit.String() != "exit 3" {
		t.Fatalf("status = %+v", st)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures quick exits back off exponentially (with at most 20% jitter
// subtracted), show crashed after CrashAfter in a row, keep being retried
// at the cap; that a run between MinRun and Settle is restarted at once
// but leaves the count (the next quick exit is still crashed, at the
// cap); and that a settled run resets the backoff.
func TestSupervisor_BackoffGrowsAndResets(t *testing.T) {
	s := startSup(t, Config{})
	events, cancel := s.Subscribe(1000)
	defer cancel()
	counter := filepath.Join(t.TempDir(), "runs")
	b := Backoff{MinRun: 100 * time.Millisecond, Initial: 10 * time.Millisecond, Max: 40 * time.Millisecond, Settle: time.Second, CrashAfter: 3}
	// Run 5 runs 150ms (past MinRun, not Settle), run 7 stays up past
	// Settle; all others exit at once.
	spec := Spec{Name: "flaky", Env: []string{"PATH=/usr/bin:/bin"}, Backoff: b, Command: `n=0; [ -f ` + counter + ` ] && read n < ` + counter +
		`; n=$((n+1)); echo $n > ` + counter + `; if [ $n = 5 ]; then sleep 0.15; fi; if [ $n = 7 ]; then sleep 1.2; fi; exit 2`}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	quick := func(ev Event) bool { return ev.State == StateBackoff || ev.State == StateCrashed }
	exited := func(ev Event) bool { return ev.Exit != nil }
	checkQuick := func(run int, st State, delay time.Duration) {
		t.Helper()
		ev := nextEvent(t, events, spec.Name, exited)
		d := ev.NextAttempt.Sub(ev.Time)
		full := delay * time.Millisecond
		if ev.State != st || d < full*8/10-time.Millisecond || d > full || ev.Exit.Code != 2 {
			t.Fatalf("run %d: state %v, delay %v, exit %v; want %v, delay in [%v, %v], exit 2", run, ev.State, d, ev.Exit, st, full*8/10, full)
		}
		if st, _ := s.Status(spec.Name); st.Restarts < run {
			t.Fatalf("restarts = %d after %d runs", st.Restarts, run)
		}
	}
	checkAtOnce := func(run int) {
		t.Helper()
		if ev := nextEvent(t, events, spec.Name, exited); ev.State != StateStarting {
			t.Fatalf("run %d: exit in state %v, want starting (restart at once)", run, ev.State)
		}
	}
	// Runs 1-4 exit at once: delays 10, 20, 40, 40 ms (cap), minus jitter.
	checkQuick(1, StateBackoff, 10)
	checkQuick(2, StateBackoff, 20)
	checkQuick(3, StateCrashed, 40)
	checkQuick(4, StateCrashed, 40)
	// Run 5 ran past MinRun: restarted at once, shown running, not
	// crashed; run 6's quick exit is the 5th in a row.
	checkAtOnce(5)
	checkQuick(6, StateCrashed, 40)
	// Run 7 settles: restarted at once, and run 8's quick exit starts
	// over at Initial, in state backoff, not crashed.
	checkAtOnce(7)
	ev := nextEvent(t, events, spec.Name, quick)
	if d := ev.NextAttempt.Sub(ev.Time); ev.State != StateBackoff || d > 10*time.Millisecond {
		t.Fatalf("after reset: state %v delay %v, want backoff within 10ms", ev.State, d)
	}
	st, _ := s.Status(spec.Name)
	if st.Restarts < 8 || st.LastExit == nil || st.LastExit.Code != 2 {
		t.Fatalf("status = %+v", st)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures a program that always runs past MinRun but not Settle (here
// 150ms, with MinRun 100ms and Settle 1s: the program that runs
// 1.5s under the defaults, scaled down) is restarted at once every time
// and never shown in backoff or crashed, however many times it exits.
// A backoff would take an hour.
func TestSupervisor_RunPastMinRunRestartsAtOnce(t *testing.T) {
	s := startSup(t, Config{})
	events, cancel := s.Subscribe(1000)
	defer cancel()
	spec := Spec{Name: "short", Command: "sleep 0.15", Env: []string{"PATH=/usr/bin:/bin"},
		Backoff: Backoff{MinRun: 100 * time.Millisecond, Settle: time.Second, Initial: time.Hour, Max: time.Hour, CrashAfter: 2}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	const runs = 6
	var gaps []time.Duration
	for i := 1; i <= runs; i++ {
		ev := nextEvent(t, events, spec.Name, func(ev Event) bool { return ev.Exit != nil || ev.State == StateBackoff || ev.State == StateCrashed })
		if ev.State != StateStarting || ev.Exit == nil || ev.Exit.Code != 0 {
			t.Fatalf("exit %d: state %v, exit %v; want starting (restart at once) after exit 0", i, ev.State, ev.Exit)
		}
		next := nextEvent(t, events, spec.Name, inState(StateRunning))
		gaps = append(gaps, next.Time.Sub(ev.Exit.Time))
		if st, _ := s.Status(spec.Name); st.State == StateBackoff || st.State == StateCrashed || st.Restarts < i {
			t.Fatalf("after exit %d: status %+v", i, st)
		}
	}
	t.Logf("exit to running: %v", gaps)
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures a process that ignores SIGTERM is killed with SIGKILL after the
// stop timeout, and Stop returns only once it is gone.
func TestSupervisor_StopEscalatesToSIGKILL(t *testing.T) {
	s := startSup(t, Config{})
	spec := Spec{Name: "stubborn", Command: helperCmd("ignoreterm"), Env: helperEnv(), StopTimeout: 200 * time.Millisecond}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ready", func() bool { return slices.Contains(tailTexts(s, spec.Name), "ready") })
	st, _ := s.Status(spec.Name)
	exit, err := s.Stop(context.Background(), spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if exit.Signal != syscall.SIGKILL || exit.String() != "signal SIGKILL" {
		t.Fatalf("exit = %v, want signal SIGKILL", exit)
	}
	if alive(st.PID) {
		t.Fatalf("pid %d still alive after Stop", st.PID)
	}
	if _, err := s.Status(spec.Name); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Status after Stop: %v, want ErrNotFound", err)
	}
}

// Ensures a grandchild in the group dies with its parent, even one that
// ignores SIGTERM and outlives the leader: Stop waits for the whole group.
func TestSupervisor_StopKillsGrandchild(t *testing.T) {
	s := startSup(t, Config{Subreaper: true})
	spec := Spec{Name: "forker", Env: []string{"PATH=/usr/bin:/bin"}, StopTimeout: 300 * time.Millisecond,
		Command: `sh -c 'trap "" TERM; exec sleep 1000' & echo $!; wait`}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	var child int
	eventually(t, "grandchild pid", func() bool {
		l := tailTexts(s, spec.Name)
		return len(l) > 0 && func() bool { _, err := fmt.Sscan(l[0], &child); return err == nil }()
	})
	eventually(t, "grandchild exec'd sleep", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", child))
		return strings.TrimSpace(string(b)) == "sleep"
	})
	exit, err := s.Stop(context.Background(), spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if exit.Signal != syscall.SIGTERM {
		t.Fatalf("leader exit = %v, want signal SIGTERM", exit)
	}
	if alive(child) {
		t.Fatalf("grandchild %d survived the stop", child)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", child)); err == nil {
		t.Fatalf("grandchild %d left as a zombie", child)
	}
}

// Ensures orphans reparented to the subreaper are reaped (no zombie
// children left) while children run by other code with os/exec keep
// their statuses (none stolen by the reaper).
func TestSupervisor_ReapsOrphansNotForeignChildren(t *testing.T) {
	s := startSup(t, Config{Subreaper: true})
	spec := Spec{Name: "orphaner", Env: []string{"PATH=/usr/bin:/bin"},
		Command: `for i in 1 2 3 4 5; do sh -c 'setsid sleep 0.05 &'; done; exec sleep 1000`}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	// Meanwhile, other code in this process runs commands and waits.
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 4; i++ {
		wg.Go(func() {
			for j := 0; j < 10; j++ {
				if err := exec.Command("/bin/true").Run(); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("os/exec child lost its status: %v", err)
	}
	eventually(t, "5 orphans reaped", func() bool { return s.r.orphans.Load() >= 5 })
	eventually(t, "no zombie children", func() bool { return len(zombieChildren()) == 0 })
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures the process gets exactly the given environment, nothing of
// ours, both when exec'd directly and through sh.
func TestSupervisor_EnvPassedExactly(t *testing.T) {
	os.Setenv("BERTH_SECRET_OF_THE_AGENT", "leak")
	defer os.Unsetenv("BERTH_SECRET_OF_THE_AGENT")
	s := startSup(t, Config{})
	env := helperEnv("FOO=bar baz", "EMPTY=", "PORT=5001", "UNICODE=é")
	for _, cmd := range []string{helperCmd("env"), "exec " + helperCmd("env")} {
		name := "env " + cmd[:4]
		if err := s.Start(Spec{Name: name, Command: cmd, Env: env}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "env printed", func() bool { return len(tailTexts(s, name)) >= len(env) })
		got := tailTexts(s, name)
		// sh may export PWD; nothing else may be added.
		want := env
		if cmd[:4] == "exec" { // sh exports in its own order
			got = slices.DeleteFunc(got, func(kv string) bool { return strings.HasPrefix(kv, "PWD=") })
			slices.Sort(got)
			want = slices.Sorted(slices.Values(env))
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: env = %q, want %q", cmd[:4], got, want)
		}
		if _, err := s.Stop(context.Background(), name); err != nil {
			t.Fatal(err)
		}
	}
}

// Ensures the credential is applied: uid, gid and supplementary groups.
func TestSupervisor_RunsAsNobody(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch users")
	}
	s := startSup(t, Config{})
	spec := Spec{Name: "nobody", Dir: "/", Env: []string{"PATH=/usr/bin:/bin"},
		Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{65534}},
		Command:    `echo "$(id -u) $(id -g) $(id -G)"; exec sleep 1000`}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "id printed", func() bool { return len(tailTexts(s, spec.Name)) > 0 })
	if got := tailTexts(s, spec.Name)[0]; got != "65534 65534 65534" {
		t.Fatalf("id = %q, want 65534 65534 65534", got)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures socket activation: the listener arrives as fd 3 with
// LISTEN_FDS=1 and LISTEN_PID the app's own pid, for a simple command and
// for a compound one that ends in exec (as Procfiles are written).
func TestSupervisor_ListenFiles(t *testing.T) {
	s := startSup(t, Config{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for name, cmd := range map[string]string{
		"simple":   helperCmd("listen"),
		"compound": "echo before; exec " + helperCmd("listen"),
	} {
		spec := Spec{Name: name, Command: cmd, Env: helperEnv(), ListenFiles: []*os.File{f}}
		if err := s.Start(spec); err != nil {
			t.Fatal(err)
		}
		const want = "listen pid-ok=true fd-ok=true"
		eventually(t, name+" verdict", func() bool { return slices.Contains(tailTexts(s, spec.Name), want) })
		if _, err := s.Stop(context.Background(), spec.Name); err != nil {
			t.Fatal(err)
		}
	}
}

// Ensures starting an instance leaves a passed socket's flags alone: the
// blocking flag is shared by every process holding the socket, so the
// supervisor flipping it would hang another instance's accept (issue 13).
func TestSupervisor_ListenFilesKeepFlags(t *testing.T) {
	s := startSup(t, Config{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	nonblock := func() (nb bool) {
		if err := rc.Control(func(fd uintptr) {
			flags, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
			if err != nil {
				t.Fatal(err)
			}
			nb = flags&unix.O_NONBLOCK != 0
		}); err != nil {
			t.Fatal(err)
		}
		return nb
	}
	for i, want := range []bool{true, false} {
		if err := rc.Control(func(fd uintptr) { unix.SetNonblock(int(fd), want) }); err != nil {
			t.Fatal(err)
		}
		spec := Spec{Name: fmt.Sprint("s", i), Command: "sleep 1000", Env: []string{"PATH=/usr/bin:/bin"}, ListenFiles: []*os.File{f}}
		if err := s.Start(spec); err != nil {
			t.Fatal(err)
		}
		if got := nonblock(); got != want {
			t.Errorf("after starting %s, O_NONBLOCK = %v, want it left at %v", spec.Name, got, want)
		}
		if _, err := s.Stop(context.Background(), spec.Name); err != nil {
			t.Fatal(err)
		}
	}
}

// Ensures Restart stops on purpose (not counted as a crash) and starts a
// new process with the same spec.
func TestSupervisor_Restart(t *testing.T) {
	s := startSup(t, Config{})
	spec := Spec{Name: "r", Command: "sleep 1000", Env: []string{"PATH=/usr/bin:/bin"}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	before, _ := s.Status("r")
	if err := s.Restart("r"); err != nil {
		t.Fatal(err)
	}
	after, _ := s.Status("r")
	if after.State != StateRunning || after.PID == before.PID || after.Restarts != 0 ||
		after.LastExit == nil || after.LastExit.Signal != syscall.SIGTERM || alive(before.PID) {
		t.Fatalf("before %+v, after %+v", before, after)
	}
	if err := s.Restart("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Restart(nope) = %v", err)
	}
}

// Ensures events carry what a waiter needs without calling Status:
// through start, crash, backoff and restart, each event's Restarts,
// StartedAt and PID agree with Status at that moment.
func TestSupervisor_EventsAgreeWithStatus(t *testing.T) {
	s := startSup(t, Config{})
	events, cancel := s.Subscribe(100)
	defer cancel()
	spec := Spec{Name: "agree", Command: "sleep 1000", Env: []string{"PATH=/usr/bin:/bin"},
		Backoff: Backoff{Initial: 20 * time.Millisecond, Settle: time.Hour, MinRun: time.Hour}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	same := func(what string, ev Event, st Status) {
		t.Helper()
		if ev.Restarts != st.Restarts || !ev.StartedAt.Equal(st.StartedAt) {
			t.Fatalf("%s: event restarts %d started %v; status restarts %d started %v",
				what, ev.Restarts, ev.StartedAt, st.Restarts, st.StartedAt)
		}
	}
	// The process blocks, so Status read now is Status at the event.
	ev := nextEvent(t, events, spec.Name, inState(StateStarting))
	if ev.Restarts != 0 || !ev.StartedAt.IsZero() {
		t.Fatalf("first starting event: restarts %d, started %v; want 0, zero", ev.Restarts, ev.StartedAt)
	}
	run1 := nextEvent(t, events, spec.Name, inState(StateRunning))
	st1, _ := s.Status(spec.Name)
	same("first run", run1, st1)
	if run1.PID != st1.PID || st1.Restarts != 0 || st1.StartedAt.IsZero() {
		t.Fatalf("first run: event pid %d, status %+v", run1.PID, st1)
	}
	syscall.Kill(st1.PID, syscall.SIGKILL)
	// A quick exit: backoff, then a start of a new process.
	back := nextEvent(t, events, spec.Name, func(ev Event) bool { return ev.Exit != nil })
	if back.State != StateBackoff || back.PID != st1.PID || back.Exit.Signal != syscall.SIGKILL {
		t.Fatalf("exit event = %+v (exit %v), want backoff after SIGKILL of pid %d", back, back.Exit, st1.PID)
	}
	// In backoff the last process is the first one, and the exit is
	// counted already.
	if back.Restarts != 1 || !back.StartedAt.Equal(st1.StartedAt) {
		t.Fatalf("backoff event: restarts %d started %v; want 1, %v", back.Restarts, back.StartedAt, st1.StartedAt)
	}
	start2 := nextEvent(t, events, spec.Name, inState(StateStarting))
	run2 := nextEvent(t, events, spec.Name, inState(StateRunning))
	st2, _ := s.Status(spec.Name)
	same("second run", run2, st2)
	if run2.PID != st2.PID || run2.PID == st1.PID || st2.Restarts != 1 || !st2.StartedAt.After(st1.StartedAt) {
		t.Fatalf("second run: event pid %d, status %+v; first pid %d", run2.PID, st2, st1.PID)
	}
	// Between the exit and the new process, Restarts stayed the same
	// and StartedAt was the first process's.
	if start2.Restarts != st2.Restarts || !start2.StartedAt.Equal(st1.StartedAt) {
		t.Fatalf("second starting event: restarts %d started %v; want %d, %v", start2.Restarts, start2.StartedAt, st2.Restarts, st1.StartedAt)
	}
	for _, ev := range []Event{run1, back, start2, run2} {
		if ev.Missed != 0 {
			t.Fatalf("event %+v: missed %d", ev, ev.Missed)
		}
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures Spec.Meta comes back as it was given (the same pointer, never
// copied) in Status, List and every event of the instance, the stopped
// one included.
func TestSupervisor_MetaReturned(t *testing.T) {
	s := startSup(t, Config{})
	events, cancel := s.Subscribe(100)
	defer cancel()
	type desc struct{ app, typ string }
	meta := &desc{"app", "web"}
	spec := Spec{Name: "meta", Command: "sleep 1000", Env: []string{"PATH=/usr/bin:/bin"}, Meta: meta}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	for _, st := range []State{StateStarting, StateRunning} {
		if ev := nextEvent(t, events, spec.Name, inState(st)); ev.Meta != any(meta) {
			t.Fatalf("%v event: Meta = %v, want %p", st, ev.Meta, meta)
		}
	}
	if st, _ := s.Status(spec.Name); st.Meta != any(meta) {
		t.Fatalf("Status.Meta = %v, want %p", st.Meta, meta)
	}
	if l := s.List(); len(l) != 1 || l[0].Meta != any(meta) {
		t.Fatalf("List = %+v, want Meta %p", l, meta)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, events, spec.Name, inState(StateStopped)); ev.Meta != any(meta) {
		t.Fatalf("stopped event: Meta = %v, want %p", ev.Meta, meta)
	}
}

// Ensures StopMany stops instances concurrently and Run's shutdown stops
// whatever is left.
func TestSupervisor_StopManyAndShutdown(t *testing.T) {
	s, stop := startSupStop(t, Config{})
	var names []string
	var pids []int
	for i := 0; i < 10; i++ {
		name := fmt.Sprintf("app/worker.%d", i)
		if err := s.Start(Spec{Name: name, Command: helperCmd("ignoreterm"), Env: helperEnv(), StopTimeout: 300 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	for _, name := range names {
		eventually(t, "ready", func() bool { return slices.Contains(tailTexts(s, name), "ready") })
		st, _ := s.Status(name)
		pids = append(pids, st.PID)
	}
	if err := s.StopMany(context.Background(), append(names[:5:5], "missing")); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("StopMany with a missing name: %v", err)
	}
	for _, pid := range pids[:5] {
		if alive(pid) {
			t.Fatalf("pid %d alive after StopMany", pid)
		}
	}
	if n := len(s.List()); n != 5 {
		t.Fatalf("%d instances left, want 5", n)
	}
	// The rest is stopped by Run's shutdown.
	stop()
	for _, pid := range pids[5:] {
		if alive(pid) {
			t.Errorf("pid %d alive after shutdown", pid)
		}
	}
}

// Ensures StopMany stops instances concurrently, so 50 that ignore
// SIGTERM take about one stop timeout, not fifty: every one is told to
// stop (state stopping, SIGTERM sent) before the first is killed, and
// each is then killed by SIGKILL. An order of events, not a timing.
func TestSupervisor_StopManyConcurrently(t *testing.T) {
	s := startSup(t, Config{})
	const n = 50
	var names []string
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("app/worker.%d", i)
		if err := s.Start(Spec{Name: name, Command: helperCmd("ignoreterm"), Env: helperEnv(), StopTimeout: 500 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	for _, name := range names {
		eventually(t, "ready", func() bool { return slices.Contains(tailTexts(s, name), "ready") })
	}
	events, cancel := s.Subscribe(4 * n)
	defer cancel()
	if err := s.StopMany(context.Background(), names); err != nil {
		t.Fatal(err)
	}
	stopping, stopped := map[string]bool{}, map[string]bool{}
	timeout := time.After(15 * time.Second)
	for len(stopped) < n {
		var ev Event
		select {
		case ev = <-events:
		case <-timeout:
			t.Fatalf("%d of %d stopped events within 15s", len(stopped), n)
		}
		if ev.Missed > 0 {
			t.Fatalf("missed %d events", ev.Missed)
		}
		switch ev.State {
		case StateStopping:
			stopping[ev.Name] = true
		case StateStopped:
			if len(stopping) < n {
				t.Fatalf("%s stopped when only %d of %d had been told to stop: stops are not concurrent", ev.Name, len(stopping), n)
			}
			if ev.Exit == nil || ev.Exit.Signal != syscall.SIGKILL {
				t.Errorf("%s: exit %v, want SIGKILL after the stop timeout", ev.Name, ev.Exit)
			}
			stopped[ev.Name] = true
		}
	}
	if len(s.List()) != 0 {
		t.Fatalf("instances left: %v", s.List())
	}
}

// Ensures bad specs are refused with an error naming the field, and start
// nothing; duplicate and unknown names get their sentinel errors.
func TestSupervisor_BadInput(t *testing.T) {
	s := startSup(t, Config{})
	ok := Spec{Name: "ok", Command: "sleep 1000", Env: []string{"PATH=/usr/bin:/bin"}}
	cases := []struct {
		field string
		edit  func(*Spec)
	}{
		{"Name", func(sp *Spec) { sp.Name = "" }},
		{"Name", func(sp *Spec) { sp.Name = "a\nb" }},
		{"Command", func(sp *Spec) { sp.Command = "  " }},
		{"Command", func(sp *Spec) { sp.Command = "a\x00b" }},
		{"Env[1]", func(sp *Spec) { sp.Env = []string{"A=1", "NOEQUALS"} }},
		{"Env[0]", func(sp *Spec) { sp.Env = []string{"=value"} }},
		{"StopSignal", func(sp *Spec) { sp.StopSignal = 99 }},
		{"StopTimeout", func(sp *Spec) { sp.StopTimeout = -time.Second }},
		{"Backoff.Initial", func(sp *Spec) { sp.Backoff.Initial = -1 }},
		{"Backoff.Initial", func(sp *Spec) { sp.Backoff.Initial = time.Minute; sp.Backoff.Max = time.Second }},
		{"Backoff.CrashAfter", func(sp *Spec) { sp.Backoff.CrashAfter = -1 }},
		{"Backoff.MinRun", func(sp *Spec) { sp.Backoff.MinRun = -1 }},
		{"Backoff.MinRun", func(sp *Spec) { sp.Backoff.MinRun = 2 * time.Second; sp.Backoff.Settle = time.Second }},
		{"Backoff.MinRun", func(sp *Spec) { sp.Backoff.MinRun = 6 * time.Second }}, // above the default Settle
		{"Log.MaxSize", func(sp *Spec) { sp.Log.MaxSize = -1 }},
		{"Log.MaxLine", func(sp *Spec) { sp.Log.MaxSize = 1000; sp.Log.MaxLine = 2000 }},
		{"Log.MaxFiles", func(sp *Spec) { sp.Log.MaxFiles = -2 }},
		{"ListenFiles[0]", func(sp *Spec) { sp.ListenFiles = []*os.File{nil} }},
	}
	for _, c := range cases {
		sp := ok
		c.edit(&sp)
		err := s.Start(sp)
		var se *SpecError
		if !errors.As(err, &se) || !errors.Is(err, ErrInvalidSpec) || se.Field != c.field || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: err = %v, want a SpecError naming it", c.field, err)
		}
		if l := s.List(); len(l) != 0 {
			t.Fatalf("%s: a bad spec left %v", c.field, l)
		}
	}
	if err := s.Start(Spec{Name: "x", Command: "true", Env: []string{"SECRET=hunter2", "bad"}}); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("env error %v must not show values", err)
	}
	if err := s.Start(ok); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ok); !errors.Is(err, ErrExists) {
		t.Fatalf("second Start = %v, want ErrExists", err)
	}
	for name, err := range map[string]error{
		"Stop":    func() error { _, err := s.Stop(context.Background(), "nope"); return err }(),
		"Status":  func() error { _, err := s.Status("nope"); return err }(),
		"Tail":    func() error { _, err := s.Tail("nope", 1); return err }(),
		"Restart": s.Restart("nope"),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s(nope) = %v, want ErrNotFound", name, err)
		}
	}
	if _, err := s.Stop(context.Background(), "ok"); err != nil {
		t.Fatal(err)
	}
}

// Ensures a first start that fails is reported, and the instance stays
// supervised in backoff and retried until stopped.
func TestSupervisor_SpawnFailureIsRetried(t *testing.T) {
	s := startSup(t, Config{})
	events, cancel := s.Subscribe(100)
	defer cancel()
	spec := Spec{Name: "nodir", Command: "sleep 1000", Env: []string{"PATH=/usr/bin:/bin"}, Dir: "/does/not/exist",
		Backoff: Backoff{Initial: 5 * time.Millisecond, Max: 20 * time.Millisecond}}
	err := s.Start(spec)
	var se *SpawnError
	if !errors.As(err, &se) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("Start = %v, want a SpawnError wrapping ENOENT", err)
	}
	for i := 0; i < 3; i++ {
		nextEvent(t, events, spec.Name, func(ev Event) bool { return ev.State == StateBackoff || ev.State == StateCrashed })
	}
	st, _ := s.Status(spec.Name)
	if st.Restarts < 3 || !strings.Contains(st.LastError, "no such file") {
		t.Fatalf("status = %+v", st)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures RunCommand returns the exit and output of a one-off command,
// kills what it leaves in its group, and stops it when ctx ends.
func TestSupervisor_RunCommand(t *testing.T) {
	s := startSup(t, Config{})
	env := []string{"PATH=/usr/bin:/bin"}
	exit, out, err := s.RunCommand(context.Background(), Spec{Name: "release", Env: env,
		Command: `echo migrating; echo oops >&2; sleep 1000 & echo $! ; exit 4`})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(out))
	if exit.Code != 4 || len(lines) != 3 || lines[0] != "migrating" || lines[1] != "oops" {
		t.Fatalf("exit %v, output %q", exit, out)
	}
	var left int
	fmt.Sscan(lines[2], &left)
	if alive(left) {
		t.Fatalf("background process %d survived its command", left)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	exit, _, err = s.RunCommand(ctx, Spec{Name: "slow", Env: env, Command: "sleep 1000"})
	if !errors.Is(err, context.DeadlineExceeded) || exit.Signal != syscall.SIGTERM {
		t.Fatalf("cancelled command: exit %v, err %v", exit, err)
	}
}

// Ensures RunCommand's output over Config.OutputLimit keeps its last
// bytes behind a notice that says exactly how many were dropped.
func TestSupervisor_RunCommandCutOutputIsMarked(t *testing.T) {
	s := startSup(t, Config{OutputLimit: 1000})
	env := []string{"PATH=/usr/bin:/bin"}
	// 3000 lines "NNNN\n" (5 bytes each), then "end".
	_, out, err := s.RunCommand(context.Background(), Spec{Name: "loud", Env: env,
		Command: `i=1000; while [ $i -lt 4000 ]; do echo $i; i=$((i+1)); done; printf end`})
	if err != nil {
		t.Fatal(err)
	}
	const total = 3000*5 + 3
	notice := fmt.Sprintf("[... %d bytes of output dropped ...]\n", total-1000)
	if !strings.HasPrefix(string(out), notice) || len(out) != len(notice)+1000 || !strings.HasSuffix(string(out), "3999\nend") {
		t.Fatalf("output of %d bytes: %.60q ... %q", len(out), out, out[max(0, len(out)-10):])
	}
	_, out, err = s.RunCommand(context.Background(), Spec{Name: "quiet", Env: env, Command: "echo short"})
	if err != nil || string(out) != "short\n" {
		t.Fatalf("short output %q, %v", out, err)
	}
}

// fakeContainer records the calls of the containment hook.
type fakeContainer struct {
	mu    sync.Mutex
	calls []string
	fail  error
}

func (c *fakeContainer) record(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, s)
}

func (c *fakeContainer) Prepare(name string) (int, error) {
	c.record("prepare " + name)
	return -1, c.fail
}
func (c *fakeContainer) Kill(name string) error   { c.record("kill " + name); return nil }
func (c *fakeContainer) Remove(name string) error { c.record("remove " + name); return nil }

// Ensures the containment hook is called around each start and stop, and
// a failing Prepare is a start failure.
func TestSupervisor_ContainerHook(t *testing.T) {
	c := &fakeContainer{}
	s := startSup(t, Config{Container: c})
	spec := Spec{Name: "c", Command: "sleep 1000", Env: []string{"PATH=/usr/bin:/bin"}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stop(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	if want := []string{"prepare c", "kill c", "remove c"}; !slices.Equal(c.calls, want) {
		t.Fatalf("calls = %q, want %q", c.calls, want)
	}
	c.fail = errors.New("no cgroup")
	var se *SpawnError
	if err := s.Start(spec); !errors.As(err, &se) || !strings.Contains(err.Error(), "no cgroup") {
		t.Fatalf("Start with failing Prepare = %v", err)
	}
	if _, err := s.Stop(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
}

// Ensures a full event subscriber loses events without blocking the
// supervisor, and is told how many it missed.
func TestSupervisor_SlowEventSubscriber(t *testing.T) {
	s := startSup(t, Config{})
	slow, cancelSlow := s.Subscribe(1)
	defer cancelSlow()
	all, cancelAll := s.Subscribe(100)
	defer cancelAll()
	spec := Spec{Name: "e", Command: "sleep 1000", Env: []string{"PATH=/usr/bin:/bin"}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stop(context.Background(), "e"); err != nil {
		t.Fatal(err)
	}
	nextEvent(t, all, "e", inState(StateStopped))
	first := <-slow
	if first.State != StateStarting || s.DroppedEvents() != 3 {
		t.Fatalf("first = %+v, dropped %d; want starting, 3 dropped (running, stopping, stopped)", first, s.DroppedEvents())
	}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	if ev := <-slow; ev.Missed != 3 {
		t.Fatalf("next event Missed = %d, want 3", ev.Missed)
	}
	if _, err := s.Stop(context.Background(), "e"); err != nil {
		t.Fatal(err)
	}
}

// Ensures Run refuses to start twice or beside another running
// Supervisor: one reaper per process.
func TestSupervisor_OneReaper(t *testing.T) {
	s := startSup(t, Config{})
	s.Start(Spec{Name: "x", Command: "sleep 1000", Env: []string{"PATH=/usr/bin:/bin"}})
	if err := New(Config{}, nil).Run(context.Background()); !errors.Is(err, ErrReaperBusy) {
		t.Fatalf("second Run = %v, want ErrReaperBusy", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Run(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run again = %v, want ErrClosed", err)
	}
}

// Ensures a zombie child of other code in this process (os/exec, not
// waited for yet) neither hides our instances' exits from the reaper nor
// has its status stolen.
func TestSupervisor_ForeignZombieDoesNotBlockReaper(t *testing.T) {
	s := startSup(t, Config{Subreaper: true})
	foreign := exec.Command("/bin/true")
	if err := foreign.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "foreign child is a zombie", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", foreign.Process.Pid))
		return strings.Contains(string(b), ") Z ")
	})
	events, cancel := s.Subscribe(100)
	defer cancel()
	spec := Spec{Name: "quick", Command: "exit 7", Env: []string{"PATH=/usr/bin:/bin"}, Backoff: noRestart}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, events, spec.Name, func(ev Event) bool { return ev.Exit != nil })
	if ev.Exit.Code != 7 {
		t.Fatalf("exit = %v, want exit 7", ev.Exit)
	}
	if err := foreign.Wait(); err != nil {
		t.Fatalf("foreign child's status was stolen: %v", err)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures WaitOutput lets a caller read an exited process's last line:
// the exit is published as soon as it is reaped, while 2 MB of output may
// still be in the pipe, and after WaitOutput returns true the tail ends
// with the last line the process wrote.
func TestSupervisor_WaitOutputAfterExit(t *testing.T) {
	s := startSup(t, Config{})
	events, cancel := s.Subscribe(64)
	defer cancel()
	spec := Spec{Name: "spew", Command: helperCmd("spew", "20000", "100"), Env: helperEnv(),
		Backoff: Backoff{Initial: time.Minute, Max: time.Minute, Settle: time.Minute, MinRun: time.Minute}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	for ev := range events {
		if ev.Name == spec.Name && ev.Exit != nil {
			break
		}
	}
	ok, err := s.WaitOutput(spec.Name, 10*time.Second)
	if err != nil || !ok {
		t.Fatalf("WaitOutput = %v, %v; want true", ok, err)
	}
	lines, err := s.Tail(spec.Name, 1)
	if err != nil || len(lines) != 1 || !strings.HasPrefix(lines[0].Text, "19999 ") {
		t.Fatalf("last line after WaitOutput = %+v, %v; want the 20000th line", lines, err)
	}
	if _, err := s.WaitOutput("nope", time.Millisecond); !errors.Is(err, ErrNotFound) {
		t.Fatalf("WaitOutput(nope) = %v, want ErrNotFound", err)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}
