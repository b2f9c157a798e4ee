package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
)

// switchesPerOp is how many release switches each benchmark iteration
// measures, so that `-benchtime 1x` still yields a median.
const switchesPerOp = 7

// BenchmarkConfigSet20 measures `berth config set` on an app with 20
// web instances: the CLI's own time (it returns once the new processes
// run) and the time until the agent reports all 20 running on the new
// release, from the command's start and from its return. It reports the
// medians. The agent runs with --settle 300ms --probation 300ms (see
// spawnAgent): the CLI's time includes those waits, the time to "all
// running" does not depend on them.
func BenchmarkConfigSet20(b *testing.B) {
	benchSwitch(b, func(e *e2e, i int) []string {
		return []string{"config", "set", "-a", e2eApp, "--json", fmt.Sprintf("FOO=%d", i)}
	})
}

// BenchmarkDeployExisting20 is BenchmarkConfigSet20 for a deploy of a
// build the agent has imported already (the same tarball again).
func BenchmarkDeployExisting20(b *testing.B) {
	benchSwitch(b, func(e *e2e, _ int) []string {
		return []string{"deploy", "-a", e2eApp, "--json", e.dir + "/app.tar.gz"}
	})
}

func benchSwitch(b *testing.B, args func(e *e2e, i int) []string) {
	const instances = 20
	e := newE2E(b)
	writeFile(b, e.dir, "app.tar.gz", appTarball(b, map[string]string{"Procfile": "web: " + webCmd + "\n"}))
	e.startAgent()
	e.ok("deploy", "-a", e2eApp, e.dir+"/app.tar.gz")
	e.ok("scale", "-a", e2eApp, fmt.Sprintf("web=%d", instances))
	e.running(e2eApp, instances, 1)
	c := api.NewClient(e.sock)
	defer c.Close()

	var cli, total, lag, up []time.Duration
	prev := 1
	b.ResetTimer()
	for i := range b.N * switchesPerOp {
		// Watch the agent while the command runs, for the moment all 20
		// instances first run on a newer release (before the settle and
		// probation waits end).
		watchCtx, stopWatch := context.WithCancel(context.Background())
		upAt := make(chan time.Time, 1)
		go func() {
			defer close(upAt)
			for watchCtx.Err() == nil {
				if allNewer(c, prev, instances) {
					upAt <- time.Now()
					return
				}
				time.Sleep(2 * time.Millisecond) // bounded poll of the agent's state
			}
		}()
		start := time.Now()
		out := e.ok(args(e, i)...)
		returned := time.Now()
		stopWatch()
		var rel api.Release
		if err := json.Unmarshal([]byte(out), &rel); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		prev = rel.Version
		if t, ok := <-upAt; ok {
			up = append(up, t.Sub(start))
		}
		for !allRunning(b, c, rel.Version, instances) {
			if time.Since(returned) > time.Minute {
				b.Fatalf("v%d: the %d instances did not all run within a minute", rel.Version, instances)
			}
			time.Sleep(2 * time.Millisecond) // bounded poll of the agent's state
		}
		done := time.Now()
		cli = append(cli, returned.Sub(start))
		total = append(total, done.Sub(start))
		lag = append(lag, done.Sub(returned))
	}
	b.StopTimer()
	ms := func(d []time.Duration) float64 { return float64(p50(d)) / float64(time.Millisecond) }
	b.ReportMetric(ms(cli), "ms-cli-p50")
	b.ReportMetric(ms(total), "ms-all-running-p50")
	b.ReportMetric(ms(lag), "ms-after-return-p50")
	if len(up) > 0 {
		b.ReportMetric(ms(up), "ms-new-up-p50")
		b.Logf("the 20 new instances were all running %s (p50) after the command started", p50(up).Round(time.Millisecond))
	}
	b.Logf("%d switches of %d instances: command p50 %s, all running p50 %s after the start and %s after the command returned",
		len(cli), instances, p50(cli).Round(time.Millisecond), p50(total).Round(time.Millisecond), p50(lag).Round(time.Millisecond))
	e.stopAgent()
}

// allRunning reports whether exactly n instances run, all on release v.
func allRunning(b *testing.B, c *api.Client, v, n int) bool {
	procs, err := c.Processes(context.Background(), e2eApp)
	if err != nil {
		b.Fatal(err)
	}
	count := 0
	for _, p := range procs {
		if p.State != "running" || p.Release != v {
			return false
		}
		count++
	}
	return count == n
}

// allNewer reports whether exactly n instances run, all on a release
// newer than prev.
func allNewer(c *api.Client, prev, n int) bool {
	procs, err := c.Processes(context.Background(), e2eApp)
	if err != nil || len(procs) != n {
		return false
	}
	for _, p := range procs {
		if p.State != "running" || p.Release <= prev {
			return false
		}
	}
	return true
}

// p50 returns the median.
func p50(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
