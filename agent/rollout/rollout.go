// Planning a rollout: the instances a formation wants, those that start,
// and the order in which the running ones stop. Every function here is
// pure and deterministic; see doc.go for the steps that execute a plan.

package rollout

import (
	"cmp"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// releaseType is the Procfile type of the release phase: it runs once per
// switch and is never part of a formation.
const releaseType = "release"

// Running is an instance of the app that runs now (or is supervised).
type Running struct {
	Name    string // supervisor name: "app/web.1", or "app/web.1@v8" in socket mode
	Slot    string // instance slot: "web.1"
	Release int    // version of the release it runs
	// Socket is true in socket mode: it accepts on the slot's socket,
	// which the agent owns.
	Socket bool
	// HTTPCheck is true when it has a running HTTP health check, which a
	// new instance sharing its socket would otherwise answer.
	HTTPCheck bool
	// Steered is true when it listens on a socket of its own that the
	// agent steers the public port's connections to (set Socket false).
	Steered bool
}

// Starting is an instance about to start; at most one per slot.
type Starting struct {
	Name string // supervisor name, as in Running
	Slot string // "web.1"
	// Socket is true in socket mode.
	Socket bool
	// SocketOpen is true when the agent holds the slot's socket open
	// already (an instance used it before), so the new instance can
	// share it with the old ones.
	SocketOpen bool
	// Steered is true when it gets a socket of its own and the agent
	// steers the public port's connections to it once it is up: it can
	// start beside any steered old instance, sharing nothing.
	Steered bool
}

// Plan says which running instances a rollout stops, and when. Names
// are sorted bytewise, slots with CompareInstances; empty lists are nil.
type Plan struct {
	// StopFirst are stopped before the new instances start: bind-mode
	// instances, socket-mode ones that cannot overlap, and those of slots
	// that start nothing (dropped by the formation, or another release
	// beside a kept instance).
	StopFirst []string
	// StopAlong are stopped once the new instances, sharing their
	// sockets, are up.
	StopAlong []string
	// Held are the instances of StopAlong whose HTTP checks pause while
	// a new instance shares their socket (only with healthy).
	Held []string
	// Overlaps are the slots whose new instance starts beside the old
	// ones.
	Overlaps []string
	// KeepSockets are the slots whose socket a new instance uses: every
	// socket-mode instance starting that is not steered, overlapping or
	// not.
	KeepSockets []string
}

// Overlapping reports whether slot's new instance starts beside its old
// ones.
func (p Plan) Overlapping(slot string) bool {
	return slices.Contains(p.Overlaps, slot)
}

// DefaultFormation returns the formation to record for a build whose
// Procfile has types: cur plus 1 for each type cur does not name yet,
// except the release phase. cur is not changed; the result is never nil.
func DefaultFormation(cur map[string]int, types []string) map[string]int {
	f := maps.Clone(cur)
	if f == nil {
		f = map[string]int{}
	}
	for _, t := range types {
		if _, ok := f[t]; !ok && t != releaseType {
			f[t] = 1
		}
	}
	return f
}

// Desired lists the instance slots ("web.1") a build with the Procfile
// types runs under formation: formation's count for each type (1 for a
// type formation does not name), never the release phase; types of the
// formation the Procfile lacks are skipped. The result is sorted with
// CompareInstances.
func Desired(formation map[string]int, types []string) []string {
	var out []string
	for _, t := range types {
		if t == releaseType {
			continue
		}
		n, ok := formation[t]
		if !ok {
			n = 1
		}
		for i := 1; i <= n; i++ {
			out = append(out, t+"."+strconv.Itoa(i))
		}
	}
	slices.SortFunc(out, CompareInstances)
	return out
}

// CompareInstances orders instance slots by type, then by number, so
// that "web.2" comes before "web.10". A part after the first dot that is
// not a number counts as 0.
func CompareInstances(a, b string) int {
	at, an := SplitInstance(a)
	bt, bn := SplitInstance(b)
	if c := strings.Compare(at, bt); c != 0 {
		return c
	}
	return an - bn
}

// SplitInstance splits an instance slot ("web.2") into its type ("web")
// and number (2; 0 when missing or not a number).
func SplitInstance(inst string) (string, int) {
	t, n, _ := strings.Cut(inst, ".")
	i, _ := strconv.Atoi(n)
	return t, i
}

// ToStart lists the slots of want that start an instance of version:
// all of them with restart (a release switch), else those with no
// running instance of version (a scale, the start at boot, a rollback's
// restore). It keeps want's order.
func ToStart(want []string, running []Running, version int, restart bool) []string {
	current := map[string]bool{}
	for _, r := range running {
		if r.Release == version {
			current[r.Slot] = true
		}
	}
	var out []string
	for _, slot := range want {
		if restart || !current[slot] {
			out = append(out, slot)
		}
	}
	return out
}

// PlanStops decides which running instances stop before the starting
// ones start and which once they are up. want is the slots of the
// formation (Desired), version the release starting, healthy whether
// the rollout waits for health checks (false at boot).
//
//   - A slot that starts nothing keeps its instances of version if
//     want has it; every other instance of it stops first.
//   - A slot that starts an instance overlaps when the new instance and
//     every old one are in socket mode, the socket is open and no old
//     one has the new one's name, or when the new one and every old one
//     are steered (each on a socket of its own) and none has the new
//     one's name: its old instances stop alongside, and those with an
//     HTTP check are held when healthy (never steered ones: nothing
//     shares their socket). Otherwise they stop first.
func PlanStops(want []string, running []Running, starting []Starting, version int, healthy bool) Plan {
	var plan Plan
	bySlot := map[string]Starting{}
	keep := map[string]bool{}
	for _, s := range starting {
		bySlot[s.Slot] = s
		if s.Socket && !s.Steered {
			keep[s.Slot] = true
		}
	}
	plan.KeepSockets = slices.Collect(maps.Keys(keep))
	olds := map[string][]Running{}
	for _, r := range running {
		olds[r.Slot] = append(olds[r.Slot], r)
	}
	for slot, rs := range olds {
		s, ok := bySlot[slot]
		if !ok {
			// A kept slot stops only the instances of other releases
			// beside it; a slot the formation no longer has stops all.
			kept := slices.Contains(want, slot)
			for _, r := range rs {
				if !kept || r.Release != version {
					plan.StopFirst = append(plan.StopFirst, r.Name)
				}
			}
			continue
		}
		overlap := s.Socket && s.SocketOpen || s.Steered
		for _, r := range rs {
			if r.Name == s.Name || s.Steered && !r.Steered || !s.Steered && (!r.Socket || r.Steered) {
				overlap = false
			}
		}
		if overlap {
			plan.Overlaps = append(plan.Overlaps, slot)
		}
		for _, r := range rs {
			switch {
			case !overlap:
				plan.StopFirst = append(plan.StopFirst, r.Name)
			default:
				plan.StopAlong = append(plan.StopAlong, r.Name)
				if r.HTTPCheck && healthy && !r.Steered {
					plan.Held = append(plan.Held, r.Name)
				}
			}
		}
	}
	slices.Sort(plan.StopFirst)
	slices.Sort(plan.StopAlong)
	slices.Sort(plan.Held)
	slices.SortFunc(plan.Overlaps, compareSlots)
	slices.SortFunc(plan.KeepSockets, compareSlots)
	return plan
}

// compareSlots is CompareInstances made total: slots it finds equal
// ("web.1", "web.01") are ordered bytewise, so a sort's result does not
// depend on its input's order.
func compareSlots(a, b string) int {
	return cmp.Or(CompareInstances(a, b), strings.Compare(a, b))
}
