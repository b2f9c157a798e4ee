package agent

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/berth-dev/berth/agent/api"
)

// TestAgent_DiskFull ensures a deploy that runs out of disk space gets a
// clear "disk full" error of kind unavailable and changes nothing: no new
// release, no temp build left behind, the running process untouched. The
// data dir is a real 8 MiB tmpfs, so the ENOSPC comes from the kernel.
func TestAgent_DiskFull(t *testing.T) {
	dir := smallTmpfs(t)
	ta := startAgent(t, testConfig(dir))
	ctx := context.Background()
	ta.mustDeploy(t, "hello", webApp(t, ""))
	before := ta.procs(t, "hello")["web.1"]

	// 12 MiB that do not compress: more than the filesystem holds.
	big := make([]byte, 12<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	body := tarball(t, map[string]string{"Procfile": "web: exec sleep 1000\n", "blob": string(big)})
	_, _, err := ta.deploy(t, "hello", body)
	wantKind(t, err, api.ErrUnavailable)
	if !strings.Contains(err.Error(), "disk full") {
		t.Errorf("error %q does not say the disk is full", err)
	}

	rels, err := ta.Releases(ctx, "hello")
	if err != nil || len(rels) != 1 || rels[0].Status != "active" {
		t.Fatalf("releases after a deploy on a full disk = %+v, %v", rels, err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "builds"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != rels[0].Build {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("builds dir holds %v, want only %s", names, rels[0].Build)
	}
	after := ta.procs(t, "hello")["web.1"]
	if after.PID != before.PID || after.State != "running" {
		t.Fatalf("web.1 changed: before %+v, after %+v", before, after)
	}
	// Once space is back the same agent deploys again.
	ta.mustDeploy(t, "hello", webBuild(t, "after"))
}

// smallTmpfs returns a data dir on a real 8 MiB tmpfs, unmounted when the
// test ends, so that the ENOSPC of a test comes from the kernel.
func smallTmpfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("mounting the small tmpfs this test fills needs root; euid %d", os.Geteuid())
	}
	dir := dataDir(t)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=8m,mode=0755"); err != nil {
		t.Fatalf("mount a small tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}
