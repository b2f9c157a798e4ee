package fleet_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/berth-dev/berth/agent/fleet"
)

// simNode is a simulated agent for the scale benchmark, as the issue
// asks for: it switches at once and is always up, so the benchmark
// measures fleet mode and etcd, not process start-up. Every other test
// runs real agents.
type simNode struct {
	mu       sync.Mutex // guards versions
	versions map[string]int
}

func (n *simNode) Apply(_ context.Context, r fleet.Release) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.versions[r.App] = r.Version
	return nil
}

func (n *simNode) AppStatus(_ context.Context, app string) (fleet.LocalStatus, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if v, ok := n.versions[app]; ok {
		return fleet.LocalStatus{Version: v, Healthy: 1, Instances: 1}, nil
	}
	return fleet.LocalStatus{}, nil
}

func (n *simNode) HasBuild(string) bool { return true }

func (n *simNode) ImportBuild(_ context.Context, r io.Reader, _ string) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

// BenchmarkFleet_Rollout200 measures a rollout to 200 simulated nodes in
// 4 waves of 50 against a single-member etcd: from the client's
// transaction to the rollout's success, with every node registered,
// watching, reporting and competing for the rollout's lock. It reports
// the etcd revisions (writes) each rollout costs.
func BenchmarkFleet_Rollout200(b *testing.B) {
	const nodes, wave = 200, 50
	c := startCluster(b, 1)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range nodes {
		fl, err := fleet.New(fleet.Config{Endpoints: c.clients, Node: fmt.Sprintf("sim-%03d", i), Dir: b.TempDir(),
			LeaseTTL: 10, StatusInterval: time.Second, Retry: 50 * time.Millisecond},
			&simNode{versions: map[string]int{}}, hclog.NewNullLogger())
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() { fl.Run(ctx) })
	}
	client, err := fleet.NewClient(fleet.ClientConfig{Endpoints: c.clients})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	waitStatus(b, client, func(st fleet.AppStatus) bool { return len(st.Nodes) == nodes })
	digest := strings.Repeat("ab", 32)
	var revs int64
	for i := 1; b.Loop(); i++ {
		before := revision(b, client)
		if _, err := client.Deploy(ctx, "web", digest, nil, "", fleet.RolloutOptions{WaveSize: wave}); err != nil {
			b.Fatal(err)
		}
		waitStatus(b, client, func(st fleet.AppStatus) bool {
			return st.Rollout != nil && st.Rollout.To.Version == i && st.Rollout.State == fleet.RolloutSucceeded
		})
		revs += revision(b, client) - before
	}
	b.ReportMetric(float64(revs)/float64(b.N), "etcd-writes/op")
}

func waitStatus(b *testing.B, c *fleet.Client, cond func(fleet.AppStatus) bool) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := c.Status(context.Background(), "web")
		if err == nil && cond(st) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("timed out: %+v", st.Rollout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// revision is etcd's current revision, read through a status read.
func revision(b *testing.B, c *fleet.Client) int64 {
	b.Helper()
	rev, err := c.Revision(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return rev
}
