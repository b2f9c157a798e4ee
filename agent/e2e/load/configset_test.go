//go:build e2e_load

package load

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
)

// TestLoad_ConfigSetTime measures `berth config set` on examples/hello
// with the agent's default settings (no --settle, no --probation): ten
// runs, their median and max (issue 13's goal: within 2 s). Each must
// come back saying that probation goes on in the agent. The figures are
// reported, not asserted: a loaded machine must not fail the suite.
func TestLoad_ConfigSetTime(t *testing.T) {
	berth, helloTar := binaries(t)
	h := startAgent(t, berth)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := h.cli(ctx, "deploy", "-a", "hello", helloTar); err != nil {
		t.Fatalf("deploy: %v\nagent log:\n%s", err, h.logTail(30))
	}
	if _, err := h.web("hello"); err != nil {
		t.Fatal(err)
	}
	var took []time.Duration
	for i := range 10 {
		start := time.Now()
		out, err := h.cli(ctx, "config", "set", "-a", "hello", "--json", fmt.Sprintf("GREETING=g%d", i))
		d := time.Since(start)
		if err != nil {
			t.Fatalf("config set %d: %v\nagent log:\n%s", i, err, h.logTail(30))
		}
		var rel api.Release
		if err := json.Unmarshal([]byte(out), &rel); err != nil {
			t.Fatalf("config set --json: %v: %s", err, out)
		}
		if rel.Probation != api.ProbationWatching {
			t.Fatalf("config set returned probation %q, want %q: %s", rel.Probation, api.ProbationWatching, out)
		}
		took = append(took, d)
		t.Logf("config set %2d: v%d in %s", i+1, rel.Version, d.Round(time.Millisecond))
	}
	line := fmt.Sprintf("config set on examples/hello, default settings, %d runs: median %s, max %s",
		len(took), median(took).Round(time.Millisecond), slices.Max(took).Round(time.Millisecond))
	t.Log(line)
	fmt.Println(line)
}
