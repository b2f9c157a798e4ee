package supervisor

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tickSpec is an instance that prints "tick N" every few milliseconds,
// with markers, logged to a file in dir.
func tickSpec(dir, name string) Spec {
	return Spec{
		Name:    name,
		Command: helperCmd("tick"),
		Env:     helperEnv("BERTH_TEST_INSTANCE="+name, "BERTH_TEST_DIR="+dir),
		Markers: []string{"BERTH_TEST_INSTANCE", "BERTH_TEST_DIR"},
		Log:     LogConfig{Path: filepath.Join(dir, "tick.log")},
		Backoff: Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond},
	}
}

// startTicks returns the start time /proc gives pid.
func startTicks(t *testing.T, pid int) uint64 {
	t.Helper()
	st, ok := readStat(pid)
	if !ok {
		t.Fatalf("pid %d is gone", pid)
	}
	return st.start
}

// waitTick waits until the instance logged a tick of at least n.
func waitTick(t *testing.T, s *Supervisor, name string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		lines, _ := s.Tail(name, 5)
		for _, l := range lines {
			if k, ok := tickOf(l.Text); ok && k >= n {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no tick %d within 20s; last lines %v", name, n, lines)
		}
		time.Sleep(5 * time.Millisecond) // bounded poll of the output
	}
}

func tickOf(s string) (int, bool) {
	v, ok := strings.CutPrefix(s, "tick ")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	return n, err == nil
}

// TestSupervisor_AdoptFromAnotherSupervisor ensures a process another
// supervisor started and let go of (Detach) is adopted by the next one
// with its pipes: same pid, running since its real start, no restart,
// every line it wrote stored once in order, even those it wrote while no
// supervisor read; and it is restarted when it exits afterwards.
func TestSupervisor_AdoptFromAnotherSupervisor(t *testing.T) {
	dir := t.TempDir()
	spec := tickSpec(dir, "app/tick.1")
	a, stopA := startSupStop(t, Config{})
	if err := a.Start(spec); err != nil {
		t.Fatal(err)
	}
	first, _ := a.Status(spec.Name)
	waitTick(t, a, spec.Name, 20)
	hs := a.Detach()
	stopA() // Run returns and stops nothing
	if len(hs) != 1 || hs[0].PID != first.PID || hs[0].Name != spec.Name {
		t.Fatalf("handoff %+v, want %s pid %d", hs, spec.Name, first.PID)
	}
	if err := syscall.Kill(first.PID, 0); err != nil {
		t.Fatalf("the process did not survive its supervisor's end: %v", err)
	}

	b := startSup(t, Config{})
	events, cancel := b.Subscribe(64)
	defer cancel()
	err := b.Adopt(spec, Adopted{PID: first.PID, StartTime: startTicks(t, first.PID), Stdout: hs[0].Stdout, Stderr: hs[0].Stderr})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := b.Status(spec.Name)
	if st.State != StateRunning || st.PID != first.PID || st.Restarts != 0 {
		t.Fatalf("adopted status %+v, want running pid %d, no restart", st, first.PID)
	}
	// /proc gives the start in 10 ms ticks.
	if d := st.StartedAt.Sub(first.StartedAt); d < -time.Second || d > time.Second {
		t.Errorf("adopted StartedAt %s, started at %s", st.StartedAt, first.StartedAt)
	}
	// Tail shows what the process wrote under the first supervisor too.
	mem, _ := b.Tail(spec.Name, 0)
	if len(mem) == 0 || mem[0].Text != "tick 0" {
		t.Fatalf("Tail right after the adoption starts with %v, want tick 0", mem[:min(len(mem), 1)])
	}
	last, err := ReadLogFile(spec.Log.Path, 1) // what the first one stored
	if err != nil || len(last) != 1 {
		t.Fatalf("log before the adoption: %v %v", last, err)
	}
	n, _ := tickOf(last[0].Text)
	waitTick(t, b, spec.Name, n+20)

	// An exit of the adopted process (our child here) is restarted.
	syscall.Kill(first.PID, syscall.SIGKILL)
	ev := nextEvent(t, events, spec.Name, func(e Event) bool { return e.State == StateRunning && e.PID != first.PID })
	if ev.Restarts != 1 {
		t.Errorf("restart after the adopted process was killed: %+v", ev)
	}
	if _, err := b.Stop(t.Context(), spec.Name); err != nil {
		t.Fatal(err)
	}
	// The restarted process counts from 0 again: check the first run.
	lines, _ := ReadLogFile(spec.Log.Path, 0)
	var firstRun []string
	for i, l := range lines {
		if n, _ := tickOf(l.Text); n == 0 && i > 0 {
			break
		}
		firstRun = append(firstRun, l.Text)
	}
	checkTickLines(t, firstRun, n+20)
}

func checkTickLines(t *testing.T, lines []string, min int) {
	t.Helper()
	next := 0
	for _, l := range lines {
		n, ok := tickOf(l)
		if !ok || n != next {
			t.Fatalf("line %q where tick %d was expected: a line is missing or twice", l, next)
		}
		next++
	}
	if next <= min {
		t.Fatalf("ticks up to %d, want past %d", next-1, min)
	}
}

// TestSupervisor_AdoptNonChildExitByPidfd ensures a process that is not
// this process's child is adopted, its exit seen through its pidfd (the
// status unknown) and restarted.
func TestSupervisor_AdoptNonChildExitByPidfd(t *testing.T) {
	dir := t.TempDir()
	spec := tickSpec(dir, "app/tick.1")
	outR, outW, err := outputPipe(spec.Name, "stdout")
	if err != nil {
		t.Fatal(err)
	}
	errR, errW, err := outputPipe(spec.Name, "stderr")
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "spawn", pidFile, "tick")
	cmd.Env = spec.Env
	cmd.Stdout, cmd.Stderr = outW, errW
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	outW.Close()
	errW.Close()
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
	if st, ok := readStat(pid); !ok || st.ppid == os.Getpid() {
		t.Fatalf("pid %d: %+v, want a process that is not our child", pid, st)
	}

	s := startSup(t, Config{})
	events, cancel := s.Subscribe(64)
	defer cancel()
	if err := s.Adopt(spec, Adopted{PID: pid, StartTime: startTicks(t, pid), Stdout: outR, Stderr: errR}); err != nil {
		t.Fatal(err)
	}
	waitTick(t, s, spec.Name, 10)
	syscall.Kill(pid, syscall.SIGKILL)
	ev := nextEvent(t, events, spec.Name, func(e Event) bool { return e.Exit != nil })
	if ev.PID != pid || ev.Exit.Code != -1 || ev.Exit.Signal != 0 {
		t.Errorf("exit event %+v (%v), want pid %d with an unknown status", ev, ev.Exit, pid)
	}
	nextEvent(t, events, spec.Name, func(e Event) bool { return e.State == StateRunning && e.PID != pid })
	if _, err := s.Stop(t.Context(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// TestSupervisor_AdoptRefusesMismatch ensures a process is not adopted
// when its start time (a reused pid) or its markers differ from the
// record, and that it is left alone: the caller decides.
func TestSupervisor_AdoptRefusesMismatch(t *testing.T) {
	dir := t.TempDir()
	spec := tickSpec(dir, "app/tick.1")
	a, stopA := startSupStop(t, Config{})
	if err := a.Start(spec); err != nil {
		t.Fatal(err)
	}
	st, _ := a.Status(spec.Name)
	waitTick(t, a, spec.Name, 1)
	hs := a.Detach()
	stopA()
	pid := st.PID
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
	start := startTicks(t, pid)

	b := startSup(t, Config{})
	dup := func(f *os.File) *os.File {
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return os.NewFile(uintptr(fd), f.Name())
	}
	other := spec
	other.Env = helperEnv("BERTH_TEST_INSTANCE=app/tick.2", "BERTH_TEST_DIR="+dir)
	for _, c := range []struct {
		name string
		spec Spec
		a    Adopted
	}{
		{"reused pid", spec, Adopted{PID: pid, StartTime: start + 1}},
		{"other markers", other, Adopted{PID: pid, StartTime: start}},
		{"no markers", Spec{Name: spec.Name, Command: spec.Command, Env: spec.Env}, Adopted{PID: pid, StartTime: start}},
		{"refused by Verify", spec, Adopted{PID: pid, StartTime: start, Verify: func(int) error { return errors.New("wrong cgroup") }}},
	} {
		c.a.Stdout, c.a.Stderr = dup(hs[0].Stdout), dup(hs[0].Stderr)
		if err := b.Adopt(c.spec, c.a); !errors.Is(err, ErrNotAdopted) {
			t.Errorf("%s: Adopt = %v, want ErrNotAdopted", c.name, err)
		}
		if _, err := b.Status(spec.Name); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: the instance is supervised after a refused adoption", c.name)
		}
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Errorf("a refused adoption touched the process: %v", err)
	}
	closeFiles(hs[0].Stdout, hs[0].Stderr)
}

// TestSupervisor_Salvage ensures what a dead process left in its pipes
// is stored in its log, each line once, the partial last one included.
func TestSupervisor_Salvage(t *testing.T) {
	dir := t.TempDir()
	spec := tickSpec(dir, "app/tick.1")
	outR, outW, err := outputPipe(spec.Name, "stdout")
	if err != nil {
		t.Fatal(err)
	}
	errR, errW, err := outputPipe(spec.Name, "stderr")
	if err != nil {
		t.Fatal(err)
	}
	outW.WriteString("tick 0\ntick 1\ntick 2")
	errW.WriteString("oops\n")
	outW.Close()
	errW.Close()
	s := startSup(t, Config{})
	if err := s.Salvage(spec, outR, errR, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	lines, err := ReadLogFile(spec.Log.Path, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range lines {
		got = append(got, l.Stream+" "+l.Text)
	}
	want := []string{"stdout tick 0", "stdout tick 1", "stdout tick 2", "stderr oops"}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("salvaged %q, want %q", got, want)
	}
}
