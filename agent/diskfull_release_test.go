package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
)

// TestAgent_DiskFullDuringConfigSet ensures a config change that runs
// out of disk space after its release was created gets a clear error,
// does not leave the release pending, and the running release keeps
// running; once space is back the release reads failed with the disk
// full cause, and so it does after a restart of an agent that could not
// record it. The data dir is a real tmpfs, filled up by the release
// phase of the new release (between its creation and its activation).
func TestAgent_DiskFullDuringConfigSet(t *testing.T) {
	dir := smallTmpfs(t)
	cfg := testConfig(dir)
	ta := startAgent(t, cfg)
	ctx := context.Background()
	fill := filepath.Join(dir, "apps", "hello", "tmp", "fill")
	ta.mustDeploy(t, "hello", webApp(t, `release: if [ -n "$FILL" ]; then cat /dev/zero > "$TMPDIR/fill"; fi; true`+"\n"))
	before := ta.procs(t, "hello")["web.1"]

	// Big values make the activation write more than the store has
	// free inside its file: it must grow into the full disk.
	set := map[string]string{"FILL": "1"}
	for i := range 4 {
		b := make([]byte, 30<<10) // random: the store may compress
		rand.Read(b)
		set[fmt.Sprintf("BIG%d", i)] = hex.EncodeToString(b)
	}
	_, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: set}, nil)
	t.Logf("config set on a full disk: %v", err)
	wantKind(t, err, api.ErrUnavailable)
	if !strings.Contains(err.Error(), "disk full") {
		t.Errorf("error %q does not say the disk is full", err)
	}
	rels, err := ta.Releases(ctx, "hello")
	if err != nil {
		t.Fatal(err)
	}
	if len(rels) != 2 || rels[0].Status != "failed" || !strings.Contains(rels[0].Reason, "disk full") || rels[1].Status != "active" {
		t.Fatalf("releases on a full disk = %+v", rels)
	}
	if after := ta.procs(t, "hello")["web.1"]; after.PID != before.PID || after.State != "running" {
		t.Fatalf("web.1 changed: before %+v, after %+v", before, after)
	}

	// Space comes back: the agent records the failure by itself.
	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "v2 recorded failed in the store", func() bool {
		r, err := ta.store.Release("hello", 2)
		return err == nil && r.Status == state.StatusFailed && strings.Contains(r.Reason, "disk full")
	})

	// Again, but the agent stops while the disk is still full; space
	// comes back; the next agent records the cause the previous one kept.
	set["FILL"] = "2"
	_, err = ta.SetConfig(ctx, "hello", api.ConfigChange{Set: set}, nil)
	wantKind(t, err, api.ErrUnavailable)
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	ta = startAgent(t, cfg)
	rel, err := ta.Release(ctx, "hello", 3)
	if err != nil {
		t.Fatal(err)
	}
	if rel.Status != "failed" || !strings.Contains(rel.Reason, "disk full") {
		t.Fatalf("after a restart v3 = %s %q, want failed with the disk full cause", rel.Status, rel.Reason)
	}
	t.Logf("v3 after a restart: %s", rel.Reason)
	if ps := ta.procs(t, "hello"); ps["web.1"].Release != 1 || ps["web.1"].State != "running" {
		t.Fatalf("v1 not running after the restart: %+v", ps)
	}
}
