package state

import (
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
)

// TestStore_ConfigRoundTrip ensures PutConfig stores a copy that Config
// returns as a fresh map.
func TestStore_ConfigRoundTrip(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "web")
	if cfg, err := s.Config("web"); err != nil || cfg == nil || len(cfg) != 0 {
		t.Fatalf("Config of a new app = %v, %v; want an empty map", cfg, err)
	}
	in := map[string]string{"A": "1", "B_2": "two words", "_": ""}
	if err := s.PutConfig("web", in); err != nil {
		t.Fatal(err)
	}
	in["A"] = "changed"
	got, err := s.Config("web")
	if err != nil || !maps.Equal(got, map[string]string{"A": "1", "B_2": "two words", "_": ""}) {
		t.Fatalf("Config = %v, %v", got, err)
	}
	got["A"] = "changed"
	if again, _ := s.Config("web"); again["A"] != "1" {
		t.Error("changing a returned config changed the store")
	}
	if err := s.PutConfig("web", nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Config("web"); len(got) != 0 {
		t.Errorf("Config after PutConfig(nil) = %v", got)
	}
	_, err = s.Config("nope")
	wantErr(t, err, ErrAppNotFound, `"nope"`)
}

// TestStore_Formation ensures SetFormation merges counts (0 kept as
// scaled-to-zero) and returns the whole formation.
func TestStore_Formation(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "web")
	if f, err := s.Formation("web"); err != nil || len(f) != 0 {
		t.Fatalf("Formation of a new app = %v, %v", f, err)
	}
	f, err := s.SetFormation("web", map[string]int{"web": 2, "worker": 1})
	if err != nil || !maps.Equal(f, map[string]int{"web": 2, "worker": 1}) {
		t.Fatalf("SetFormation = %v, %v", f, err)
	}
	f, err = s.SetFormation("web", map[string]int{"worker": 0, "clock": MaxProcessCount})
	if want := map[string]int{"web": 2, "worker": 0, "clock": MaxProcessCount}; err != nil || !maps.Equal(f, want) {
		t.Fatalf("merged SetFormation = %v, %v; want %v", f, err, want)
	}
	if got, _ := s.Formation("web"); !maps.Equal(got, f) {
		t.Errorf("Formation = %v, want %v", got, f)
	}
}

// TestStore_StopApp ensures StopApp scales every type (the formation's
// and the ones given) to 0 and marks the app stopped, that the mark
// survives reopening the store, and that ResumeApp restores the counts
// and clears it; bad input changes nothing.
func TestStore_StopApp(t *testing.T) {
	path := t.TempDir() + "/berth.db"
	s := openAt(t, path, Config{})
	mustApp(t, s, "web")
	if _, err := s.SetFormation("web", map[string]int{"web": 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StopApp("web", []string{"bad type!"}); err == nil {
		t.Fatal("StopApp with a bad type name: no error")
	}
	if a, _ := s.App("web"); a.Stopped {
		t.Fatal("a refused StopApp marked the app stopped")
	}
	a, err := s.StopApp("web", []string{"worker"})
	if err != nil || !a.Stopped {
		t.Fatalf("StopApp = %+v, %v", a, err)
	}
	if f, _ := s.Formation("web"); !maps.Equal(f, map[string]int{"web": 0, "worker": 0}) {
		t.Fatalf("Formation after StopApp = %v", f)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path, Config{})
	if a, err := s.App("web"); err != nil || !a.Stopped {
		t.Fatalf("after reopening: App = %+v, %v; want stopped", a, err)
	}
	if _, err := s.ResumeApp("web", map[string]int{"web": -1}); err == nil {
		t.Fatal("ResumeApp with a negative count: no error")
	}
	a, err = s.ResumeApp("web", map[string]int{"web": 2, "worker": 1})
	if err != nil || a.Stopped {
		t.Fatalf("ResumeApp = %+v, %v", a, err)
	}
	if f, _ := s.Formation("web"); !maps.Equal(f, map[string]int{"web": 2, "worker": 1}) {
		t.Fatalf("Formation after ResumeApp = %v", f)
	}
	_, err = s.StopApp("nope", nil)
	wantErr(t, err, ErrAppNotFound, `"nope"`)
}

// TestStore_Port ensures ports are allocated lowest-free from the base
// across all apps, stored, and the same forever after, whatever base a
// later call passes.
func TestStore_Port(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "a")
	mustApp(t, s, "b")
	steps := []struct {
		app, inst string
		base      int
		want      int
	}{
		{"a", "web.1", 5000, 5000},
		{"a", "web.2", 5000, 5001},
		{"b", "web.1", 5000, 5002}, // across apps
		{"a", "web.1", 9000, 5000}, // stored: base ignored
		{"b", "worker.1", 5001, 5003},
		{"b", "clock.1", 4000, 4000}, // a lower base has free ports
		{"a", "worker.1", 6000, 6000},
		{"b", "web.2", 5999, 5999},
		{"a", "web.3", 5999, 6001}, // 5999 and 6000 taken
	}
	for _, st := range steps {
		got, err := s.Port(st.app, st.inst, st.base)
		if err != nil || got != st.want {
			t.Fatalf("Port(%s, %s, %d) = %d, %v; want %d", st.app, st.inst, st.base, got, err, st.want)
		}
	}
	ports, err := s.Ports("a")
	if want := map[string]int{"web.1": 5000, "web.2": 5001, "worker.1": 6000, "web.3": 6001}; err != nil || !maps.Equal(ports, want) {
		t.Errorf("Ports(a) = %v, %v; want %v", ports, err, want)
	}
}

// TestStore_PortExhausted ensures allocation stops at 65535 with
// ErrPortsExhausted.
func TestStore_PortExhausted(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "a")
	for i, want := range []int{65534, 65535} {
		if p, err := s.Port("a", fmt.Sprintf("web.%d", i+1), 65534); err != nil || p != want {
			t.Fatalf("Port = %d, %v; want %d", p, err, want)
		}
	}
	_, err := s.Port("a", "web.3", 65534)
	wantErr(t, err, ErrPortsExhausted, "65534")
}

// TestStore_PortConcurrent ensures concurrent first calls for the same
// instance agree on one port, and distinct instances never share one.
func TestStore_PortConcurrent(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "a")
	const instances, callers = 10, 4
	got := make([][]int, instances)
	errs := make([]error, instances*callers)
	var wg sync.WaitGroup
	for i := range instances {
		got[i] = make([]int, callers)
		for c := range callers {
			wg.Go(func() {
				got[i][c], errs[i*callers+c] = s.Port("a", fmt.Sprintf("web.%d", i+1), 7000)
			})
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	used := map[int]int{}
	for i, ps := range got {
		for _, p := range ps {
			if p != ps[0] {
				t.Errorf("web.%d got ports %v: not one answer", i+1, ps)
			}
		}
		if other, dup := used[ps[0]]; dup {
			t.Errorf("web.%d and web.%d share port %d", i+1, other+1, ps[0])
		}
		used[ps[0]] = i
		if ps[0] < 7000 || ps[0] >= 7000+instances {
			t.Errorf("web.%d got %d, want one of the %d lowest from 7000", i+1, ps[0], instances)
		}
	}
}
