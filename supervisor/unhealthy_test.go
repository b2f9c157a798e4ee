package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// pending returns the events already in ch, without waiting.
func pending(ch <-chan Event, name string) []Event {
	var out []Event
	for {
		select {
		case ev := <-ch:
			if ev.Name == name {
				out = append(out, ev)
			}
		default:
			return out
		}
	}
}

// Ensures RestartUnhealthy of a process that exits on SIGTERM stops it
// and starts a new one at once, counted in Restarts but no crash: no
// backoff, not crashed, the backoff count untouched, and recorded as
// "unhealthy" in Status, in the events of that restart and in the exit.
func TestSupervisor_RestartUnhealthy(t *testing.T) {
	s := startSup(t, Config{})
	events, cancel := s.Subscribe(100)
	defer cancel()
	// Had the restart counted as a quick exit, the next crash would be
	// the second in a row and show crashed; backoff would last an hour.
	spec := Spec{Name: "sick", Command: "sleep 1000", Env: []string{"PATH=/usr/bin:/bin"},
		Backoff: Backoff{Initial: time.Hour, Max: time.Hour, Settle: time.Hour, MinRun: time.Hour, CrashAfter: 2}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	run1 := nextEvent(t, events, spec.Name, inState(StateRunning))
	if err := s.RestartUnhealthy(spec.Name, run1.PID, "GET /health: 500"); err != nil {
		t.Fatal(err)
	}
	// Every event of the restart is published before it returns.
	evs := pending(events, spec.Name)
	if len(evs) != 3 {
		t.Fatalf("events of the restart = %+v, want stopping, starting, running", evs)
	}
	stopping, starting, run2 := evs[0], evs[1], evs[2]
	if stopping.State != StateStopping || stopping.PID != run1.PID || stopping.Cause != CauseUnhealthy ||
		stopping.Restarts != 0 || stopping.Exit != nil {
		t.Fatalf("stopping event = %+v", stopping)
	}
	if starting.State != StateStarting || starting.PID != run1.PID || starting.Cause != CauseUnhealthy ||
		starting.Restarts != 1 || starting.Exit == nil || starting.Exit.Cause != CauseUnhealthy ||
		starting.Exit.String() != "restarted: unhealthy (signal SIGTERM)" {
		t.Fatalf("starting event = %+v (exit %v)", starting, starting.Exit)
	}
	if run2.State != StateRunning || run2.PID == run1.PID || run2.Cause != CauseUnhealthy || run2.Restarts != 1 ||
		!run2.StartedAt.After(run1.StartedAt) {
		t.Fatalf("running event = %+v, first run %+v", run2, run1)
	}
	st, _ := s.Status(spec.Name)
	if st.State != StateRunning || st.PID != run2.PID || st.Restarts != 1 || st.LastCause != CauseUnhealthy ||
		!st.NextAttempt.IsZero() || st.LastExit == nil || st.LastExit.Signal != syscall.SIGTERM ||
		st.LastExit.Cause != CauseUnhealthy || !st.StartedAt.Equal(run2.StartedAt) {
		t.Fatalf("status = %+v (exit %v)", st, st.LastExit)
	}
	if alive(run1.PID) {
		t.Fatalf("pid %d alive after the restart", run1.PID)
	}
	// A crash now is the first quick exit in a row: backoff, plain cause.
	syscall.Kill(run2.PID, syscall.SIGKILL)
	ev := nextEvent(t, events, spec.Name, func(ev Event) bool { return ev.Exit != nil })
	if ev.State != StateBackoff || ev.Cause != "" || ev.Exit.Cause != "" || ev.Exit.String() != "signal SIGKILL" || ev.Restarts != 2 {
		t.Fatalf("crash after the restart: %+v (exit %v), want backoff, no cause, restarts 2", ev, ev.Exit)
	}
	if st, _ := s.Status(spec.Name); st.LastCause != "" || st.State != StateBackoff {
		t.Fatalf("status after the crash = %+v", st)
	}
	// A Restart clears the cause too.
	if err := s.Restart(spec.Name); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Status(spec.Name); st.LastCause != "" || st.State != StateRunning {
		t.Fatalf("status after Restart = %+v", st)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures a process that ignores SIGTERM is killed with SIGKILL after the
// stop timeout, and that the restart does not wait for output held open
// by a process that left the group (a Restart would wait DrainTimeout).
func TestSupervisor_RestartUnhealthyEscalates(t *testing.T) {
	s := startSup(t, Config{DrainTimeout: time.Hour})
	// Each run leaves a sleep in its own session holding the output
	// pipes, and prints its pid; the test kills those at the end.
	spec := Spec{Name: "stubborn", Env: helperEnv("PATH=/usr/bin:/bin"), StopTimeout: 200 * time.Millisecond,
		Command: "setsid sleep 1000 & echo $!; exec " + helperCmd("ignoreterm")}
	escaped := func() []int {
		var pids []int
		for _, l := range tailTexts(s, spec.Name) {
			if pid, err := strconv.Atoi(l); err == nil {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	t.Cleanup(func() {
		for _, pid := range escaped() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ready", func() bool { return slices.Contains(tailTexts(s, spec.Name), "ready") })
	before, _ := s.Status(spec.Name)
	t0 := time.Now()
	if err := s.RestartUnhealthy(spec.Name, before.PID, "timeout"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	st, _ := s.Status(spec.Name)
	if st.State != StateRunning || st.PID == before.PID || st.Restarts != 1 || st.LastCause != CauseUnhealthy ||
		st.LastExit == nil || st.LastExit.String() != "restarted: unhealthy (signal SIGKILL)" {
		t.Fatalf("status = %+v (exit %v)", st, st.LastExit)
	}
	if took < spec.StopTimeout {
		t.Fatalf("restart took %v, before the stop timeout %v: SIGKILL came early", took, spec.StopTimeout)
	}
	if alive(before.PID) {
		t.Fatalf("pid %d alive after the restart", before.PID)
	}
	// Let the escaped sleeps go, so Stop's drain ends.
	eventually(t, "second run printed its sleep", func() bool { return len(escaped()) == 2 })
	for _, pid := range escaped() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures RestartUnhealthy with a pid that no longer runs (replaced by a
// Restart, or exited and waiting in backoff) does nothing and returns
// ErrStalePID, and an unknown name returns ErrNotFound.
func TestSupervisor_RestartUnhealthyStalePID(t *testing.T) {
	s := startSup(t, Config{})
	events, cancel := s.Subscribe(100)
	defer cancel()
	spec := Spec{Name: "stale", Command: "sleep 1000", Env: []string{"PATH=/usr/bin:/bin"},
		Backoff: noRestart}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	first, _ := s.Status(spec.Name)
	if err := s.Restart(spec.Name); err != nil {
		t.Fatal(err)
	}
	replaced, _ := s.Status(spec.Name)
	pending(events, spec.Name)
	if err := s.RestartUnhealthy(spec.Name, first.PID, "late verdict"); !errors.Is(err, ErrStalePID) {
		t.Fatalf("RestartUnhealthy(replaced pid) = %v, want ErrStalePID", err)
	}
	if st, _ := s.Status(spec.Name); st.PID != replaced.PID || st.Restarts != 0 || st.LastCause != "" || !alive(st.PID) {
		t.Fatalf("status after a stale restart = %+v, want %+v", st, replaced)
	}
	// The exit of the process leaves it in backoff, for an hour.
	syscall.Kill(replaced.PID, syscall.SIGKILL)
	nextEvent(t, events, spec.Name, inState(StateBackoff))
	if err := s.RestartUnhealthy(spec.Name, replaced.PID, "late verdict"); !errors.Is(err, ErrStalePID) {
		t.Fatalf("RestartUnhealthy(exited pid) = %v, want ErrStalePID", err)
	}
	if st, _ := s.Status(spec.Name); st.State != StateBackoff || st.PID != 0 || st.Restarts != 1 || st.LastCause != "" {
		t.Fatalf("status after a stale restart in backoff = %+v", st)
	}
	if evs := pending(events, spec.Name); len(evs) != 0 {
		t.Fatalf("stale restarts published %+v", evs)
	}
	if err := s.RestartUnhealthy("nope", 1, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("RestartUnhealthy(nope) = %v, want ErrNotFound", err)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures a Stop that comes in while RestartUnhealthy waits for the old
// process wins: no new process is started, RestartUnhealthy returns
// ErrNotFound, and Stop reports the exit as a plain one (it was no
// restart) and leaves nothing running.
func TestSupervisor_StopDuringRestartUnhealthy(t *testing.T) {
	s := startSup(t, Config{})
	events, cancel := s.Subscribe(100)
	defer cancel()
	// The stop timeout is the window in which the Stop must come in.
	spec := Spec{Name: "race", Command: helperCmd("ignoreterm"), Env: helperEnv(), StopTimeout: time.Second}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	run := nextEvent(t, events, spec.Name, inState(StateRunning))
	eventually(t, "ready", func() bool { return slices.Contains(tailTexts(s, spec.Name), "ready") })
	restarted := make(chan error, 1)
	go func() { restarted <- s.RestartUnhealthy(spec.Name, run.PID, "check failed") }()
	// The restart is under way (the process ignores SIGTERM, so it
	// waits the stop timeout); now Stop.
	nextEvent(t, events, spec.Name, func(ev Event) bool { return ev.State == StateStopping && ev.Cause == CauseUnhealthy })
	exit, err := s.Stop(context.Background(), spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if rerr := <-restarted; !errors.Is(rerr, ErrNotFound) {
		t.Fatalf("RestartUnhealthy during Stop = %v, want ErrNotFound", rerr)
	}
	if exit.String() != "signal SIGKILL" || exit.Cause != "" {
		t.Fatalf("Stop's exit = %v, want a plain signal SIGKILL", exit)
	}
	var after []string
	for _, ev := range pending(events, spec.Name) {
		after = append(after, fmt.Sprintf("%v/%q", ev.State, ev.Cause))
		if ev.State == StateStarting || ev.State == StateRunning || ev.State == StateBackoff || ev.State == StateCrashed {
			t.Fatalf("events after the Stop came in: %v", after)
		}
	}
	if len(after) == 0 || after[len(after)-1] != `stopped/""` {
		t.Fatalf("events after the Stop came in: %v, want ending in stopped", after)
	}
	if alive(run.PID) {
		t.Fatalf("pid %d alive after Stop", run.PID)
	}
	if _, err := s.Status(spec.Name); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Status after Stop: %v, want ErrNotFound", err)
	}
}
