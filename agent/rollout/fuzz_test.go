package rollout

import (
	"fmt"
	"slices"
	"testing"
)

// scenario turns fuzz bytes into an app: a formation of web and worker,
// and running instances (2 bytes each: slot and release, mode and
// check). FuzzPlanStops adds the modes of the instances to start and
// whether their sockets are open. Names are unique, as the agent's are (they key its instances).
func scenario(data []byte, version int) (want []string, running []Running) {
	if len(data) < 2 {
		return nil, nil
	}
	want = Desired(map[string]int{"web": int(data[0] % 4), "worker": int(data[1] % 3)}, []string{"web", "worker", "release"})
	data = data[2:]
	seen := map[string]bool{}
	for len(data) >= 2 {
		b, f := data[0], data[1]
		data = data[2:]
		typ := []string{"web", "worker", "clock"}[int(b)%3]
		slot := fmt.Sprintf("%s.%d", typ, 1+int(b/3)%4)
		rel := version - 2 + int(b/12)%4 // older, current or newer
		var r Running
		if f&1 != 0 {
			r = sock(slot, rel)
			r.HTTPCheck = f&2 != 0
		} else {
			r = bind(slot, rel)
		}
		if !seen[r.Name] {
			seen[r.Name] = true
			running = append(running, r)
		}
	}
	return want, running
}

// FuzzPlanStops checks, for any app, that every running instance is
// either kept, stopped first or stopped alongside, never two; kept
// exactly when its slot starts nothing, the formation has it and it
// runs the version; that only socket-mode slots with an open socket and
// only socket-mode old instances overlap; that held instances are among
// those stopped alongside; and that the lists are sorted without
// duplicates.
func FuzzPlanStops(f *testing.F) {
	f.Add([]byte{2, 1, 3, 1, 4, 3, 15, 0}, uint8(0b111), uint8(0b011), 8, true, true)
	f.Add([]byte{3, 0, 0, 1, 3, 1, 6, 3, 13, 3, 25, 1}, uint8(0b101), uint8(0b111), 8, false, true)
	f.Add([]byte{0, 0, 1, 1, 2, 0}, uint8(0), uint8(0), 3, true, false)
	f.Add([]byte{1, 2, 12, 3, 24, 3, 36, 1, 0, 0}, uint8(0b110), uint8(0b010), 7, false, false)
	// web.1 (HTTP check) and web.2 switch in socket mode, web.2's socket
	// closed, without health waits; worker.1 in bind mode.
	f.Add([]byte{2, 1, 12, 3, 15, 1, 13, 0}, uint8(0b011), uint8(0b001), 8, true, false)
	// web.1 restarts on its own release in socket mode.
	f.Add([]byte{1, 0, 24, 1}, uint8(1), uint8(1), 8, true, true)
	f.Fuzz(func(t *testing.T, data []byte, modes, opens uint8, version int, restart, healthy bool) {
		want, running := scenario(data, version)
		toStart := ToStart(want, running, version, restart)
		var starting []Starting
		for i, slot := range toStart {
			if modes&(1<<(i%8)) != 0 {
				starting = append(starting, newSock(slot, version, opens&(1<<(i%8)) != 0))
			} else {
				starting = append(starting, newBind(slot))
			}
		}
		for _, slot := range want {
			if !restart && !slices.Contains(toStart, slot) &&
				!slices.ContainsFunc(running, func(r Running) bool { return r.Slot == slot && r.Release == version }) {
				t.Fatalf("ToStart skips %s, which runs no instance of v%d", slot, version)
			}
		}

		p := PlanStops(want, running, starting, version, healthy)

		for _, l := range [][]string{p.StopFirst, p.StopAlong, p.Held} {
			if !slices.IsSorted(l) || len(slices.Compact(slices.Clone(l))) != len(l) {
				t.Fatalf("not sorted or duplicated: %v", l)
			}
		}
		for _, l := range [][]string{p.Overlaps, p.KeepSockets} {
			if !slices.IsSortedFunc(l, CompareInstances) || len(slices.Compact(slices.Clone(l))) != len(l) {
				t.Fatalf("not sorted or duplicated: %v", l)
			}
		}
		startingAt := map[string]Starting{}
		for _, s := range starting {
			startingAt[s.Slot] = s
		}
		names := map[string]bool{}
		for _, r := range running {
			names[r.Name] = true
			first, along := slices.Contains(p.StopFirst, r.Name), slices.Contains(p.StopAlong, r.Name)
			if first && along {
				t.Fatalf("%s stops both first and alongside: %+v", r.Name, p)
			}
			_, replaced := startingAt[r.Slot]
			kept := !replaced && slices.Contains(want, r.Slot) && r.Release == version
			if kept == (first || along) {
				t.Fatalf("%s kept=%v, stops first=%v, alongside=%v: %+v", r.Name, kept, first, along, p)
			}
			if along != p.Overlapping(r.Slot) {
				t.Fatalf("%s stops alongside=%v but its slot overlaps=%v: %+v", r.Name, along, p.Overlapping(r.Slot), p)
			}
			if slices.Contains(p.Held, r.Name) != (along && healthy && r.HTTPCheck) {
				t.Fatalf("%s held wrongly: %+v", r.Name, p)
			}
		}
		for _, l := range [][]string{p.StopFirst, p.StopAlong} {
			for _, n := range l {
				if !names[n] {
					t.Fatalf("plan stops %s, which does not run", n)
				}
			}
		}
		for _, slot := range p.Overlaps {
			s, ok := startingAt[slot]
			if !ok || !s.Socket || !s.SocketOpen {
				t.Fatalf("slot %s overlaps with new instance %+v", slot, s)
			}
			for _, r := range running {
				if r.Slot == slot && (!r.Socket || r.Name == s.Name) {
					t.Fatalf("slot %s overlaps with old instance %+v", slot, r)
				}
			}
		}
		var socketSlots []string
		for _, s := range starting {
			if s.Socket {
				socketSlots = append(socketSlots, s.Slot)
			}
		}
		slices.SortFunc(socketSlots, CompareInstances)
		if !slices.Equal(socketSlots, p.KeepSockets) {
			t.Fatalf("KeepSockets = %v, want %v", p.KeepSockets, socketSlots)
		}
	})
}
