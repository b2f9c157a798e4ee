package fleet

import (
	"fmt"
	"maps"
	"slices"
)

// Planning a rollout and choosing what a node runs are pure functions
// of the records in etcd, so every agent reaches the same answer.

// Placed returns the names of the nodes, in name order, that placement
// puts the app on.
func Placed(p Placement, nodes map[string]NodeInfo) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(nodes)) {
		if matches(p.Labels, nodes[name].Labels) {
			out = append(out, name)
		}
	}
	if p.Count > 0 && len(out) > p.Count {
		out = out[:p.Count]
	}
	return out
}

func matches(want, have map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// Waves splits nodes into waves of size (at least 1; 0 means one
// wave of all).
func Waves(nodes []string, size int) [][]string {
	if size <= 0 {
		size = len(nodes)
	}
	var out [][]string
	for chunk := range slices.Chunk(nodes, max(size, 1)) {
		out = append(out, slices.Clone(chunk))
	}
	return out
}

// Target returns the release node should run for an app (ok false:
// none), given the app's release, its rollout (nil: none) and whether
// the placement includes the node. A node a running rollout has reached
// runs the rollout's release; every other placed node runs the app's
// release, which is also where a failed rollout sends its nodes back.
func Target(node string, placed bool, rel *Release, ro *Rollout) (Release, bool) {
	if ro != nil && ro.State == RolloutRunning && ro.Reached(node) {
		return ro.To, true
	}
	if rel == nil || !placed {
		return Release{}, false
	}
	return *rel, true
}

// WaveResult is what the statuses of a wave's nodes say of it.
type WaveResult int

const (
	// WavePending: some node has not reported the release up yet.
	WavePending WaveResult = iota
	// WaveUp: every node of the wave runs the release, all instances up.
	WaveUp
	// WaveFailed: a node failed to switch to the release.
	WaveFailed
)

// CheckWave tells whether the wave's nodes run version, and, on a
// failure, the reason naming the node. A node that left the fleet (no
// record under nodes/: its lease ended) is not waited for: it runs the
// app's release when it comes back.
func CheckWave(wave []string, version int, statuses map[string]Status, nodes map[string]NodeInfo) (WaveResult, string) {
	res := WaveUp
	for _, node := range wave {
		st, ok := statuses[node]
		if _, live := nodes[node]; !live {
			continue
		}
		switch {
		case ok && st.Failed == version:
			return WaveFailed, fmt.Sprintf("node %s failed v%d: %s", node, version, st.Error)
		case !ok || !st.Up(version):
			res = WavePending
		}
	}
	return res, ""
}
