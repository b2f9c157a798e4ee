package agent

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
)

// benchAgent runs an agent with one app scaled to 20 web instances.
func benchAgent(b *testing.B) (*Agent, api.Release, func()) {
	dir := dataDir(b)
	cfg := testConfig(dir)
	// The switch's own cost, not the waits an operator configures: the
	// instances count as up once they ran 1ms, and no probation follows.
	cfg.Settle = time.Millisecond
	cfg.Probation = -1
	a, err := New(cfg, testLogger())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	<-a.up
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}
	body := webBuild(b, "bench")
	rel, err := a.Deploy(ctx, api.DeployRequest{App: "bench", Body: bytesReader(body)}, nil)
	if err != nil {
		stop()
		b.Fatal(err)
	}
	if _, err := a.Scale(ctx, "bench", map[string]int{"web": 20}); err != nil {
		stop()
		b.Fatal(err)
	}
	return a, rel, stop
}

// checkAll fails unless all 20 instances run the version.
func checkAll(b *testing.B, a *Agent, version int) {
	ps := a.processes("bench")
	running := 0
	for _, p := range ps {
		if p.State == "running" && p.Release == version {
			running++
		}
	}
	if running != 20 || len(ps) != 20 {
		b.Fatalf("%d of %d instances running v%d", running, len(ps), version)
	}
}

func reportP50(b *testing.B, what string, d []time.Duration) {
	slices.Sort(d)
	p50 := d[len(d)/2]
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(d[len(d)-1].Microseconds())/1000, "max-ms")
	b.Logf("%s, 20 instances: p50 %s, max %s over %d switches", what, p50.Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond), len(d))
}

// BenchmarkAgent_ConfigSet20 measures a config change on an app with 20
// instances: from the call until every instance runs the new release
// (SetConfig returns only then; the check after it proves it).
func BenchmarkAgent_ConfigSet20(b *testing.B) {
	a, _, stop := benchAgent(b)
	defer stop()
	ctx := context.Background()
	var d []time.Duration
	for i := range 10 * b.N {
		start := time.Now()
		rel, err := a.SetConfig(ctx, "bench", api.ConfigChange{Set: map[string]string{"N": fmt.Sprint(i)}}, nil)
		if err != nil {
			b.Fatal(err)
		}
		d = append(d, time.Since(start))
		checkAll(b, a, rel.Version)
	}
	reportP50(b, "config set", d)
}

// BenchmarkAgent_Redeploy20 measures a deploy of an already imported
// build (by digest, no upload) on an app with 20 instances.
func BenchmarkAgent_Redeploy20(b *testing.B) {
	a, first, stop := benchAgent(b)
	defer stop()
	ctx := context.Background()
	var d []time.Duration
	for range 10 * b.N {
		start := time.Now()
		rel, err := a.Deploy(ctx, api.DeployRequest{App: "bench", Body: bytesReader(nil), Digest: first.Build}, nil)
		if err != nil {
			b.Fatal(err)
		}
		d = append(d, time.Since(start))
		checkAll(b, a, rel.Version)
	}
	reportP50(b, "redeploy of an imported build", d)
}
