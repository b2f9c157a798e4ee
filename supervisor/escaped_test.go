package supervisor

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// escaper is a command that starts two processes which leave its
// process group and prints their pids: one with setsid whose parent
// (the instance's process) still runs, one whose parent exits at once
// (double fork: an orphan, reparented to the subreaper), then runs on.
const escaper = `setsid sleep 1000 & echo $!; sh -c 'setsid sleep 1000 & echo $!'; exec sleep 1000`

// escapedPids waits for the two pids escaper prints, and for both to
// run in a session of their own.
func escapedPids(t *testing.T, s *Supervisor, name string, skip int) []int {
	t.Helper()
	var pids []int
	eventually(t, "escaped pids", func() bool {
		l := tailTexts(s, name)
		if len(l) < skip+2 {
			return false
		}
		pids = pids[:0]
		for _, x := range l[skip : skip+2] {
			pid, err := strconv.Atoi(strings.TrimSpace(x))
			if err != nil {
				return false
			}
			pids = append(pids, pid)
		}
		return true
	})
	for _, pid := range pids {
		eventually(t, fmt.Sprintf("pid %d in its own session", pid), func() bool {
			st, ok := readStat(pid)
			return ok && st.pgid == pid
		})
	}
	return pids
}

func assertGone(t *testing.T, what string, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("%s: process %d that left the group survived", what, pid)
		}
	}
}

// Ensures Stop and Restart stop the processes an instance started that
// left its process group: one found through its parent, one (orphaned)
// found by the spec's Markers; and that a process of another instance
// with other marker values is left alone.
func TestSupervisor_StopKillsEscaped(t *testing.T) {
	s := startSup(t, Config{Subreaper: true})
	env := []string{"PATH=/usr/bin:/bin", "APP=a", "INST=web.1"}
	spec := Spec{Name: "escaper", Command: escaper, Env: env, Markers: []string{"APP", "INST"},
		StopTimeout: 2 * time.Second}
	other := Spec{Name: "other", Command: escaper, Env: []string{"PATH=/usr/bin:/bin", "APP=a", "INST=web.2"},
		Markers: []string{"APP", "INST"}}
	for _, sp := range []Spec{spec, other} {
		if err := s.Start(sp); err != nil {
			t.Fatal(err)
		}
	}
	others := escapedPids(t, s, other.Name, 0)
	first := escapedPids(t, s, spec.Name, 0)
	if err := s.Restart(spec.Name); err != nil {
		t.Fatal(err)
	}
	assertGone(t, "Restart", first)
	second := escapedPids(t, s, spec.Name, 2)
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	assertGone(t, "Stop", second)
	for _, pid := range others {
		if !alive(pid) {
			t.Errorf("process %d of another instance was killed", pid)
		}
	}
	if _, err := s.Stop(context.Background(), other.Name); err != nil {
		t.Fatal(err)
	}
	assertGone(t, "Stop of the other", others)
}

// Ensures that without Markers the process that left the group while its
// parent runs is still stopped (found through the parent).
func TestSupervisor_StopKillsEscapedWithoutMarkers(t *testing.T) {
	s := startSup(t, Config{Subreaper: true})
	spec := Spec{Name: "escaper", Command: `setsid sleep 1000 & echo $!; echo 0; exec sleep 1000`,
		Env: []string{"PATH=/usr/bin:/bin"}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	var pid int
	eventually(t, "escaped pid", func() bool {
		l := tailTexts(s, spec.Name)
		if len(l) == 0 {
			return false
		}
		pid, _ = strconv.Atoi(l[0])
		st, ok := readStat(pid)
		return ok && st.pgid == pid
	})
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	assertGone(t, "Stop", []int{pid})
}

// Ensures that when an instance's process exits, what it left outside
// its group is killed before the restart, so it never runs beside the
// new process.
func TestSupervisor_ExitKillsEscaped(t *testing.T) {
	s := startSup(t, Config{Subreaper: true})
	spec := Spec{Name: "escaper", Env: []string{"PATH=/usr/bin:/bin", "APP=a"}, Markers: []string{"APP"},
		Command: `setsid sleep 1000 & echo $!; sh -c 'setsid sleep 1000 & echo $!'; sleep 0.2`,
		Backoff: Backoff{Initial: time.Millisecond, Max: time.Millisecond, Settle: time.Hour, CrashAfter: 1000}}
	ch, cancel := s.Subscribe(64)
	defer cancel()
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	first := escapedPids(t, s, spec.Name, 0)
	nextEvent(t, ch, spec.Name, func(ev Event) bool { return ev.State == StateRunning && ev.Restarts == 1 })
	assertGone(t, "exit and restart", first)
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures a one-off command's processes that left its group do not
// outlive it.
func TestSupervisor_RunCommandKillsEscaped(t *testing.T) {
	s := startSup(t, Config{Subreaper: true})
	spec := Spec{Name: "release", Env: []string{"PATH=/usr/bin:/bin", "APP=a"}, Markers: []string{"APP"},
		Command: `setsid sleep 1000 & echo $!; sh -c 'setsid sleep 1000 & echo $!'; sleep 0.1`}
	_, out, err := s.RunCommand(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("output %q", out)
		}
		pids = append(pids, pid)
	}
	if len(pids) != 2 {
		t.Fatalf("output %q", out)
	}
	assertGone(t, "RunCommand", pids)
}

// Ensures a marker that is not a variable of Env is refused.
func TestSupervisor_MarkersMustBeInEnv(t *testing.T) {
	_, err := Spec{Name: "x", Command: "true", Env: []string{"A=1"}, Markers: []string{"B"}}.withDefaults()
	if err == nil || !strings.Contains(err.Error(), "Markers[0]") {
		t.Fatalf("err = %v", err)
	}
}
