package rollout

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"testing"
)

// procfile is the types of a typical Procfile, in file order.
var procfile = []string{"web", "worker", "release"}

// TestDesired ensures the formation drives the instances: its count per
// type, 1 for a type it does not name, never the release phase, types
// the Procfile lacks skipped, and web.2 before web.10.
func TestDesired(t *testing.T) {
	tests := []struct {
		name      string
		formation map[string]int
		types     []string
		want      []string
	}{
		{"no formation", nil, procfile, []string{"web.1", "worker.1"}},
		{"scaled", map[string]int{"web": 3, "worker": 2}, procfile, []string{"web.1", "web.2", "web.3", "worker.1", "worker.2"}},
		{"type absent from the Procfile", map[string]int{"web": 3, "clock": 2}, procfile, []string{"web.1", "web.2", "web.3", "worker.1"}},
		{"scaled to zero", map[string]int{"web": 0, "worker": 0}, procfile, nil},
		{"negative count", map[string]int{"web": -1}, []string{"web"}, nil},
		{"release never desired", map[string]int{"release": 2}, procfile, []string{"web.1", "worker.1"}},
		{"only a release phase", nil, []string{"release"}, nil},
		{"empty Procfile", map[string]int{"web": 2}, nil, nil},
		{"numeric order", map[string]int{"web": 11}, []string{"web"},
			[]string{"web.1", "web.2", "web.3", "web.4", "web.5", "web.6", "web.7", "web.8", "web.9", "web.10", "web.11"}},
		{"types sorted whatever the Procfile order", nil, []string{"worker", "clock", "web"}, []string{"clock.1", "web.1", "worker.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Desired(tt.formation, tt.types); !slices.Equal(got, tt.want) {
				t.Errorf("Desired(%v, %v) = %v, want %v", tt.formation, tt.types, got, tt.want)
			}
		})
	}
}

// TestDefaultFormation ensures a build adds 1 of each new type (never
// the release phase), keeps what is recorded, even 0 or types the build
// lacks, and leaves its input alone.
func TestDefaultFormation(t *testing.T) {
	tests := []struct {
		name  string
		cur   map[string]int
		types []string
		want  map[string]int
	}{
		{"first build", nil, procfile, map[string]int{"web": 1, "worker": 1}},
		{"scaled to zero stays", map[string]int{"web": 0}, procfile, map[string]int{"web": 0, "worker": 1}},
		{"counts kept", map[string]int{"web": 4, "worker": 2}, procfile, map[string]int{"web": 4, "worker": 2}},
		{"types the build lacks kept", map[string]int{"clock": 2}, []string{"web"}, map[string]int{"clock": 2, "web": 1}},
		{"release not added", nil, []string{"release"}, map[string]int{}},
		{"empty", nil, nil, map[string]int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := maps.Clone(tt.cur)
			got := DefaultFormation(tt.cur, tt.types)
			if got == nil || !maps.Equal(got, tt.want) {
				t.Errorf("DefaultFormation(%v, %v) = %v, want %v", tt.cur, tt.types, got, tt.want)
			}
			if !maps.Equal(tt.cur, before) {
				t.Errorf("DefaultFormation changed its input to %v", tt.cur)
			}
		})
	}
}

// TestCompareInstances ensures slots sort by type, then number.
func TestCompareInstances(t *testing.T) {
	names := []string{"web.10", "web.2", "clock.1", "web.1", "worker.3", "web.9"}
	slices.SortFunc(names, CompareInstances)
	if want := []string{"clock.1", "web.1", "web.2", "web.9", "web.10", "worker.3"}; !slices.Equal(names, want) {
		t.Fatalf("sorted = %v, want %v", names, want)
	}
	for _, tt := range []struct {
		a, b string
		sign int
	}{
		{"web.2", "web.10", -1}, {"web.10", "web.2", 1}, {"web.1", "web.1", 0},
		{"a.9", "b.1", -1}, {"web", "web.1", -1}, {"web.x", "web.0", 0}, {"", "", 0},
	} {
		if got := CompareInstances(tt.a, tt.b); sign(got) != tt.sign {
			t.Errorf("CompareInstances(%q, %q) = %d, want sign %d", tt.a, tt.b, got, tt.sign)
		}
	}
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}

// TestSplitInstance ensures a slot splits into type and number, with 0
// for a missing or bad number.
func TestSplitInstance(t *testing.T) {
	for _, tt := range []struct {
		in  string
		typ string
		n   int
	}{
		{"web.1", "web", 1}, {"web.10", "web", 10}, {"web", "web", 0}, {"web.x", "web", 0},
		{"my-worker.3", "my-worker", 3}, {"", "", 0}, {"a.b.2", "a", 0},
	} {
		if typ, n := SplitInstance(tt.in); typ != tt.typ || n != tt.n {
			t.Errorf("SplitInstance(%q) = %q, %d; want %q, %d", tt.in, typ, n, tt.typ, tt.n)
		}
	}
}

// TestToStart ensures a restart starts every desired slot, and
// otherwise only the slots with no instance of the version.
func TestToStart(t *testing.T) {
	v7 := func(slot string) Running { return Running{Name: "app/" + slot, Slot: slot, Release: 7} }
	v8 := func(slot string) Running {
		return Running{Name: "app/" + slot + "@v8", Slot: slot, Release: 8, Socket: true}
	}
	tests := []struct {
		name    string
		want    []string
		running []Running
		version int
		restart bool
		start   []string
	}{
		{"boot starts all", []string{"web.1", "worker.1"}, nil, 7, false, []string{"web.1", "worker.1"}},
		{"switch restarts all", []string{"web.1", "worker.1"}, []Running{v7("web.1"), v7("worker.1")}, 8, true, []string{"web.1", "worker.1"}},
		{"restart on the same version", []string{"web.1"}, []Running{v7("web.1")}, 7, true, []string{"web.1"}},
		{"scale up starts the missing", []string{"web.1", "web.2", "web.3"}, []Running{v7("web.1")}, 7, false, []string{"web.2", "web.3"}},
		{"scale down starts nothing", []string{"web.1"}, []Running{v7("web.1"), v7("web.2")}, 7, false, nil},
		{"other release does not count", []string{"web.1"}, []Running{v7("web.1")}, 8, false, []string{"web.1"}},
		{"two releases in a slot, one current", []string{"web.1"}, []Running{v7("web.1"), v8("web.1")}, 8, false, nil},
		{"restore after a failed switch", []string{"web.1", "web.2"}, []Running{v7("web.1"), v8("web.1"), v8("web.2")}, 7, false, []string{"web.2"}},
		{"keeps want's order", []string{"clock.1", "web.2", "web.10"}, nil, 1, false, []string{"clock.1", "web.2", "web.10"}},
		{"nothing wanted", nil, []Running{v7("web.1")}, 7, true, nil},
		{"empty", nil, nil, 0, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ToStart(tt.want, tt.running, tt.version, tt.restart); !slices.Equal(got, tt.start) {
				t.Errorf("ToStart = %v, want %v", got, tt.start)
			}
		})
	}
}

// Instances for the plan tests: bind-mode ones named after the slot,
// socket-mode ones after the slot and release, as the agent names them.
func bind(slot string, v int) Running {
	return Running{Name: "app/" + slot, Slot: slot, Release: v}
}

func sock(slot string, v int) Running {
	return Running{Name: fmt.Sprintf("app/%s@v%d", slot, v), Slot: slot, Release: v, Socket: true}
}

func sockHTTP(slot string, v int) Running {
	r := sock(slot, v)
	r.HTTPCheck = true
	return r
}

func newBind(slot string) Starting { return Starting{Name: "app/" + slot, Slot: slot} }

// steered is a running instance on a socket of its own (socket mode or
// not), named after its release.
func steered(slot string, v int, http bool) Running {
	return Running{Name: fmt.Sprintf("app/%s@v%d", slot, v), Slot: slot, Release: v, Steered: true, HTTPCheck: http}
}

func newSteered(slot string, v int, socket bool) Starting {
	return Starting{Name: fmt.Sprintf("app/%s@v%d", slot, v), Slot: slot, Socket: socket, Steered: true}
}

func newSock(slot string, v int, open bool) Starting {
	return Starting{Name: fmt.Sprintf("app/%s@v%d", slot, v), Slot: slot, Socket: true, SocketOpen: open}
}

// TestPlanStops ensures which old instances stop before the new ones
// start, which once they are up, and which slots overlap.
func TestPlanStops(t *testing.T) {
	tests := []struct {
		name     string
		want     []string
		running  []Running
		starting []Starting
		version  int
		healthy  bool
		plan     Plan
	}{
		{
			name: "empty",
		},
		{
			name:     "boot: nothing runs",
			want:     []string{"web.1"},
			starting: []Starting{newSock("web.1", 3, false)},
			version:  3,
			plan:     Plan{KeepSockets: []string{"web.1"}},
		},
		{
			name:     "bind switch stops first",
			want:     []string{"web.1", "worker.1"},
			running:  []Running{bind("web.1", 7), bind("worker.1", 7)},
			starting: []Starting{newBind("web.1"), newBind("worker.1")},
			version:  8, healthy: true,
			plan: Plan{StopFirst: []string{"app/web.1", "app/worker.1"}},
		},
		{
			name:     "socket switch overlaps",
			want:     []string{"web.1", "web.2"},
			running:  []Running{sock("web.1", 7), sock("web.2", 7)},
			starting: []Starting{newSock("web.1", 8, true), newSock("web.2", 8, true)},
			version:  8, healthy: true,
			plan: Plan{StopAlong: []string{"app/web.1@v7", "app/web.2@v7"},
				Overlaps: []string{"web.1", "web.2"}, KeepSockets: []string{"web.1", "web.2"}},
		},
		{
			name:     "steered switch overlaps, holds no check, keeps no slot socket",
			want:     []string{"web.1", "web.2"},
			running:  []Running{steered("web.1", 7, true), steered("web.2", 7, false)},
			starting: []Starting{newSteered("web.1", 8, true), newSteered("web.2", 8, false)},
			version:  8, healthy: true,
			plan: Plan{StopAlong: []string{"app/web.1@v7", "app/web.2@v7"}, Overlaps: []string{"web.1", "web.2"}},
		},
		{
			name:     "steered new beside an old one that is not stops it first",
			want:     []string{"web.1", "web.2"},
			running:  []Running{bind("web.1", 7), sock("web.2", 7)},
			starting: []Starting{newSteered("web.1", 8, false), newSteered("web.2", 8, true)},
			version:  8, healthy: true,
			plan: Plan{StopFirst: []string{"app/web.1", "app/web.2@v7"}},
		},
		{
			name:     "socket new beside a steered old one stops it first",
			want:     []string{"web.1"},
			running:  []Running{steered("web.1", 7, false)},
			starting: []Starting{newSock("web.1", 8, true)},
			version:  8, healthy: true,
			plan: Plan{StopFirst: []string{"app/web.1@v7"}, KeepSockets: []string{"web.1"}},
		},
		{
			name:     "socket switch holds HTTP checks when healthy",
			want:     []string{"web.1", "web.2"},
			running:  []Running{sockHTTP("web.1", 7), sock("web.2", 7)},
			starting: []Starting{newSock("web.1", 8, true), newSock("web.2", 8, true)},
			version:  8, healthy: true,
			plan: Plan{StopAlong: []string{"app/web.1@v7", "app/web.2@v7"}, Held: []string{"app/web.1@v7"},
				Overlaps: []string{"web.1", "web.2"}, KeepSockets: []string{"web.1", "web.2"}},
		},
		{
			name:     "no hold without health waits",
			want:     []string{"web.1"},
			running:  []Running{sockHTTP("web.1", 7)},
			starting: []Starting{newSock("web.1", 8, true)},
			version:  8,
			plan: Plan{StopAlong: []string{"app/web.1@v7"},
				Overlaps: []string{"web.1"}, KeepSockets: []string{"web.1"}},
		},
		{
			name:     "missing socket stops first",
			want:     []string{"web.1"},
			running:  []Running{sockHTTP("web.1", 7)},
			starting: []Starting{newSock("web.1", 8, false)},
			version:  8, healthy: true,
			plan: Plan{StopFirst: []string{"app/web.1@v7"}, KeepSockets: []string{"web.1"}},
		},
		{
			name:     "bind to socket stops first",
			want:     []string{"web.1"},
			running:  []Running{bind("web.1", 7)},
			starting: []Starting{newSock("web.1", 8, true)},
			version:  8, healthy: true,
			plan: Plan{StopFirst: []string{"app/web.1"}, KeepSockets: []string{"web.1"}},
		},
		{
			name:     "socket to bind stops first",
			want:     []string{"web.1"},
			running:  []Running{sockHTTP("web.1", 7)},
			starting: []Starting{newBind("web.1")},
			version:  8, healthy: true,
			plan: Plan{StopFirst: []string{"app/web.1@v7"}},
		},
		{
			name:     "mixed modes in one slot stop first",
			want:     []string{"web.1"},
			running:  []Running{sock("web.1", 6), bind("web.1", 7)},
			starting: []Starting{newSock("web.1", 8, true)},
			version:  8, healthy: true,
			plan: Plan{StopFirst: []string{"app/web.1", "app/web.1@v6"}, KeepSockets: []string{"web.1"}},
		},
		{
			name:     "same name restarting stops first",
			want:     []string{"web.1"},
			running:  []Running{sockHTTP("web.1", 8)},
			starting: []Starting{newSock("web.1", 8, true)},
			version:  8, healthy: true,
			plan: Plan{StopFirst: []string{"app/web.1@v8"}, KeepSockets: []string{"web.1"}},
		},
		{
			name:     "two releases in a slot after a crash overlap together",
			want:     []string{"web.1"},
			running:  []Running{sockHTTP("web.1", 6), sockHTTP("web.1", 7)},
			starting: []Starting{newSock("web.1", 8, true)},
			version:  8, healthy: true,
			plan: Plan{StopAlong: []string{"app/web.1@v6", "app/web.1@v7"}, Held: []string{"app/web.1@v6", "app/web.1@v7"},
				Overlaps: []string{"web.1"}, KeepSockets: []string{"web.1"}},
		},
		{
			name:    "two releases in a kept slot: the other one stops",
			want:    []string{"web.1"},
			running: []Running{sock("web.1", 7), sock("web.1", 8)},
			version: 8, healthy: true,
			plan: Plan{StopFirst: []string{"app/web.1@v7"}},
		},
		{
			name:     "scale down stops the dropped slots first",
			want:     []string{"web.1"},
			running:  []Running{sock("web.1", 7), sock("web.2", 7), bind("worker.1", 7)},
			starting: nil,
			version:  7, healthy: true,
			plan: Plan{StopFirst: []string{"app/web.2@v7", "app/worker.1"}},
		},
		{
			name:     "scale up starts beside, stops nothing",
			want:     []string{"web.1", "web.2", "web.3"},
			running:  []Running{sock("web.1", 7)},
			starting: []Starting{newSock("web.2", 7, false), newSock("web.3", 7, false)},
			version:  7, healthy: true,
			plan: Plan{KeepSockets: []string{"web.2", "web.3"}},
		},
		{
			name:     "restore keeps the previous release and stops the failed one",
			want:     []string{"web.1", "web.2"},
			running:  []Running{sock("web.1", 7), sock("web.1", 8), sock("web.2", 8)},
			starting: []Starting{newSock("web.2", 7, true)},
			version:  7, healthy: true,
			plan: Plan{StopFirst: []string{"app/web.1@v8"}, StopAlong: []string{"app/web.2@v8"},
				Overlaps: []string{"web.2"}, KeepSockets: []string{"web.2"}},
		},
		{
			name:    "formation type absent from the Procfile stops",
			want:    []string{"web.1"},
			running: []Running{bind("web.1", 7), bind("clock.1", 7)},
			version: 7,
			plan:    Plan{StopFirst: []string{"app/clock.1"}},
		},
		{
			name:     "mixed app: bind first, socket along",
			want:     []string{"web.1", "web.2", "worker.1"},
			running:  []Running{sockHTTP("web.2", 7), sockHTTP("web.1", 7), bind("worker.1", 7)},
			starting: []Starting{newBind("worker.1"), newSock("web.2", 8, true), newSock("web.1", 8, true)},
			version:  8, healthy: true,
			plan: Plan{StopFirst: []string{"app/worker.1"}, StopAlong: []string{"app/web.1@v7", "app/web.2@v7"},
				Held: []string{"app/web.1@v7", "app/web.2@v7"}, Overlaps: []string{"web.1", "web.2"}, KeepSockets: []string{"web.1", "web.2"}},
		},
		{
			name:     "slots sorted numerically",
			want:     []string{"web.1", "web.2", "web.10"},
			running:  []Running{sock("web.10", 7), sock("web.2", 7), sock("web.1", 7)},
			starting: []Starting{newSock("web.10", 8, true), newSock("web.2", 8, true), newSock("web.1", 8, true)},
			version:  8,
			plan: Plan{StopAlong: []string{"app/web.10@v7", "app/web.1@v7", "app/web.2@v7"},
				Overlaps: []string{"web.1", "web.2", "web.10"}, KeepSockets: []string{"web.1", "web.2", "web.10"}},
		},
		{
			name:    "scaled to zero stops all",
			running: []Running{sock("web.1", 7), bind("worker.1", 7)},
			version: 7,
			plan:    Plan{StopFirst: []string{"app/web.1@v7", "app/worker.1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := PlanStops(tt.want, tt.running, tt.starting, tt.version, tt.healthy)
			if !reflect.DeepEqual(got, tt.plan) {
				t.Errorf("PlanStops =\n  %+v\nwant\n  %+v", got, tt.plan)
			}
			// The input's order never matters.
			r := slices.Clone(tt.running)
			s := slices.Clone(tt.starting)
			slices.Reverse(r)
			slices.Reverse(s)
			if again := PlanStops(tt.want, r, s, tt.version, tt.healthy); !reflect.DeepEqual(again, got) {
				t.Errorf("PlanStops of the reversed input =\n  %+v\nwant\n  %+v", again, got)
			}
		})
	}
}

// TestPlan_Overlapping ensures Overlapping answers for the plan's slots.
func TestPlan_Overlapping(t *testing.T) {
	p := Plan{Overlaps: []string{"web.1", "web.10"}}
	if !p.Overlapping("web.10") || p.Overlapping("web.2") || (Plan{}).Overlapping("web.1") {
		t.Fatalf("Overlapping wrong for %+v", p)
	}
}
