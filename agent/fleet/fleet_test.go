package fleet_test

import (
	"context"
	"strings"
	"testing"

	"github.com/berth-dev/berth/agent/fleet"
)

// TestFleet_DeployConvergesOnEveryNode ensures a fleet deploy, uploaded
// to one node only, reaches every node in waves (the others fetch the
// build over the TLS build endpoint and verify it), each running it as
// a local release that records the fleet version, and that an agent
// restarted on a converged node switches nothing (idempotent).
func TestFleet_DeployConvergesOnEveryNode(t *testing.T) {
	f := newTestFleet(t, 3)
	for _, n := range []string{"n1", "n2", "n3"} {
		f.startNode(n, nil, nil)
	}
	waitFor(t, 30e9, "3 nodes registered", func() bool {
		st, err := f.client.Status(context.Background(), "web")
		return err == nil && len(st.Nodes) == 3
	})
	ro := f.deploy("web", "n1", appBuild(t, "true", "v1"), fleet.RolloutOptions{WaveSize: 2})
	if len(ro.Waves) != 2 || ro.To.Version != 1 {
		t.Fatalf("rollout: want v1 in 2 waves, got %+v", ro)
	}
	if got := f.waitRollout("web", 1); got.State != fleet.RolloutSucceeded {
		t.Fatalf("rollout: %s (%s)", got.State, got.Reason)
	}
	f.waitNodesUp("web", 1, "n1", "n2", "n3")
	for _, n := range f.nodes {
		rels := n.releases(t, "web")
		if len(rels) != 1 || !strings.HasPrefix(rels[0].Description, "Fleet v1:") || rels[0].Status != "active" || rels[0].Build != ro.To.Build {
			t.Fatalf("node %s: want one active local release of fleet v1, got %+v", n.name, rels)
		}
	}

	// A restarted agent finds itself converged: no new local release.
	f.restartNode("n2")
	f.waitNodesUp("web", 1, "n2")
	if rels := f.nodes["n2"].releases(t, "web"); len(rels) != 1 {
		t.Fatalf("restarted node n2: want still 1 local release, got %+v", rels)
	}
}
