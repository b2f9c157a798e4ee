// What an agent computes per watch event, at fleet sizes: the CPU side of
// the scale figures in SCALE.md (scale_test.go measures etcd's side).
package fleet

import (
	"fmt"
	"testing"
)

// BenchmarkScaleViewTarget measures what every agent computes at each
// change of its view (fleet.go's notifier wakes converge and report for
// every watch response): view.target, once per app, which places the app
// by sorting every node's name. With every status of every node in the
// watch (watch.go), an agent wakes O(nodes) times per rollout, so this
// figure times nodes is its CPU per rollout; SCALE.md extrapolates it.
func BenchmarkScaleViewTarget(b *testing.B) {
	for _, n := range []int{200, 10000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			v := newView()
			for i := range n {
				name := fmt.Sprintf("node-%05d", i)
				v.nodes[name] = NodeInfo{Name: name}
			}
			v.releases["web"] = Release{App: "web", Version: 1}
			for b.Loop() {
				if _, ok := v.target("node-00000", "web"); !ok {
					b.Fatal("node-00000 is not placed")
				}
			}
		})
	}
}
