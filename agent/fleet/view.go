package fleet

import (
	"encoding/json"
	"hash/fnv"
	"maps"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// view is this node's copy of the desired state (and, on the driver of
// a rollout, of its app's statuses): the watchers alone write it (under
// Fleet.mu), the converger and the drivers read it. When etcd is unreachable it stays as it was: the
// node keeps running what it runs.
type view struct {
	releases   map[string]Release
	placements map[string]Placement
	rollouts   map[string]Rollout // with their plan's waves
	plans      map[string]rolloutPlan
	rolloutRev map[string]int64 // mod revision of each rollout record
	nodes      map[string]NodeInfo
	statuses   map[string]map[string]Status // app -> node -> status
	locks      map[string]map[string]bool   // app -> keys under its rollout lock
}

func newView() *view {
	return &view{releases: map[string]Release{}, placements: map[string]Placement{}, rollouts: map[string]Rollout{}, plans: map[string]rolloutPlan{},
		rolloutRev: map[string]int64{}, nodes: map[string]NodeInfo{}, statuses: map[string]map[string]Status{},
		locks: map[string]map[string]bool{}}
}

// apply records one key's new value (kv.Value empty on a delete). A
// record that does not decode is ignored: it is not berth's.
func (v *view) apply(k keys, kv *mvccpb.KeyValue, deleted bool) {
	kind, app, node := k.parse(string(kv.Key))
	switch kind {
	case "release":
		setOrDelete(v.releases, app, kv.Value, deleted)
	case "placement":
		setOrDelete(v.placements, app, kv.Value, deleted)
	case "rollout":
		setOrDelete(v.rollouts, app, kv.Value, deleted)
		v.rolloutRev[app] = kv.ModRevision
		v.joinPlan(app)
	case "plan":
		setOrDelete(v.plans, app, kv.Value, deleted)
		v.joinPlan(app)
	case "node":
		setOrDelete(v.nodes, node, kv.Value, deleted)
	case "status":
		if v.statuses[app] == nil {
			v.statuses[app] = map[string]Status{}
		}
		setOrDelete(v.statuses[app], node, kv.Value, deleted)
	case "lock":
		if v.locks[app] == nil {
			v.locks[app] = map[string]bool{}
		}
		if deleted {
			delete(v.locks[app], node)
		} else {
			v.locks[app][node] = true
		}
	}
}

// joinPlan gives app's rollout the waves of its plan, whichever of the
// two records came last.
func (v *view) joinPlan(app string) {
	if ro, ok := v.rollouts[app]; ok {
		p, ok := v.plans[app]
		v.rollouts[app] = withPlan(ro, p, ok)
	}
}

func setOrDelete[T any](m map[string]T, key string, value []byte, deleted bool) {
	var rec T
	if deleted || json.Unmarshal(value, &rec) != nil {
		delete(m, key)
		return
	}
	m[key] = rec
}

// apps returns every app with a release or a rollout.
func (v *view) apps() []string {
	set := map[string]bool{}
	for app := range v.releases {
		set[app] = true
	}
	for app := range v.rollouts {
		set[app] = true
	}
	return slicesSorted(set)
}

// target is what node should run of app (ok false: nothing).
func (v *view) target(node, app string) (Release, bool) {
	var rel *Release
	if r, ok := v.releases[app]; ok {
		rel = &r
	}
	var ro *Rollout
	if r, ok := v.rollouts[app]; ok {
		ro = &r
	}
	placed := false
	for _, n := range Placed(v.placements[app], v.nodes) {
		placed = placed || n == node
	}
	return Target(node, placed, rel, ro)
}

// statusesOf returns a copy of the app's statuses by node.
func (v *view) statusesOf(app string) map[string]Status {
	return maps.Clone(v.statuses[app])
}

// preferredDriver is the live node that tries an app's rollout lock
// first: the one with the highest hash of app and name (rendezvous
// hashing), so the drivers of different apps spread over the nodes and
// the others need not all try at once.
func (v *view) preferredDriver(app string) string {
	best, bestHash := "", uint64(0)
	for name := range v.nodes {
		h := fnv.New64a()
		h.Write([]byte(app + "\x00" + name))
		if s := h.Sum64(); best == "" || s > bestHash || (s == bestHash && name < best) {
			best, bestHash = name, s
		}
	}
	return best
}
