package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// inboxDir makes the inbox of cfg.
func inboxDir(t *testing.T, cfg Config) string {
	t.Helper()
	inbox := filepath.Join(cfg.DataDir, "inbox")
	if err := os.MkdirAll(inbox, 0o755); err != nil {
		t.Fatal(err)
	}
	return inbox
}

func waitExists(t *testing.T, p string) {
	t.Helper()
	waitFor(t, 30*time.Second, p, func() bool { _, err := os.Lstat(p); return err == nil })
}

// TestAgent_InboxOrder ensures the files of one app are deployed in the
// order of their mtimes (not of their names), so that the newest ends
// active.
func TestAgent_InboxOrder(t *testing.T) {
	cfg := testConfig(dataDir(t))
	inbox := inboxDir(t, cfg)
	if err := os.MkdirAll(filepath.Join(inbox, "hello"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Names in the reverse of the arrival order.
	const n = 10
	base := time.Now().Add(-time.Hour)
	bodies := make([][]byte, n) // by arrival
	for i := range n {
		p := filepath.Join(inbox, "hello", fmt.Sprintf("b%02d.tar.gz", n-1-i))
		bodies[i] = webBuild(t, fmt.Sprint("build ", i))
		if err := os.WriteFile(p, bodies[i], 0o644); err != nil {
			t.Fatal(err)
		}
		mt := base.Add(time.Duration(i) * time.Minute)
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	ta := startAgent(t, cfg)
	for i := range n {
		waitExists(t, filepath.Join(inbox, ".done", "hello", fmt.Sprintf("b%02d.tar.gz", i)))
	}
	rels, err := ta.Releases(context.Background(), "hello")
	if err != nil || len(rels) != n {
		t.Fatalf("releases = %d, %v", len(rels), err)
	}
	// rels is newest first: v10 has the newest file (b00), v1 the oldest.
	for i, r := range rels {
		if r.Build != sha256Hex(bodies[n-1-i]) {
			t.Errorf("v%d has build %s, want the file of arrival %d", r.Version, r.Build[:12], n-1-i)
		}
	}
	if rels[0].Status != "active" {
		t.Fatalf("newest release is %s", rels[0].Status)
	}
}

// TestAgent_InboxAppsInParallel ensures one app's slow deploy (a
// release phase that waits) does not hold up another app's inbox file.
func TestAgent_InboxAppsInParallel(t *testing.T) {
	cfg := testConfig(dataDir(t))
	inbox := inboxDir(t, cfg)
	ta := startAgent(t, cfg)
	gate := filepath.Join(cfg.DataDir, "gate")
	drop := func(name string, body []byte) {
		tmp := filepath.Join(inbox, ".up-"+name)
		if err := os.WriteFile(tmp, body, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(inbox, name)); err != nil {
			t.Fatal(err)
		}
	}
	drop("slow.tar.gz", webApp(t, "release: while [ ! -e "+gate+" ]; do sleep 0.02; done\n"))
	waitFor(t, 20*time.Second, "slow's release phase", func() bool {
		rels, _ := ta.Releases(context.Background(), "slow")
		return len(rels) == 1 && rels[0].Status == "pending"
	})
	drop("fast.tar.gz", webBuild(t, "fast"))
	waitExists(t, filepath.Join(inbox, ".done", "fast.tar.gz"))
	if rels, _ := ta.Releases(context.Background(), "slow"); len(rels) != 1 || rels[0].Status != "pending" {
		t.Fatalf("slow's deploy is no longer in its release phase: %+v", rels)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitExists(t, filepath.Join(inbox, ".done", "slow.tar.gz"))
}

// TestAgent_InboxSlowWriter ensures a file written in place with a pause
// far longer than the quiet period (a gzip cut in the middle, and a tar
// cut between two entries, which archive/tar alone takes for whole) is
// deployed only once complete, whole.
func TestAgent_InboxSlowWriter(t *testing.T) {
	cfg := testConfig(dataDir(t))
	inbox := inboxDir(t, cfg)
	ta := startAgent(t, cfg)
	gz := webBuild(t, "slow gzip")
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	files := []struct{ name, body string }{{"Procfile", webProcfile}, {"README", strings.Repeat("slow tar ", 200)}}
	var cut int
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(f.body))
		tw.Flush()
		if cut == 0 {
			cut = tb.Len() // after the Procfile: a tar that looks whole
		}
	}
	tw.Close()
	plain := tb.Bytes()
	writers := []struct {
		path string
		body []byte
		cut  int
	}{
		{filepath.Join(inbox, "gzapp.tar.gz"), gz, len(gz) / 2},
		{filepath.Join(inbox, "tarapp.tar"), plain, cut},
	}
	fs := make([]*os.File, len(writers))
	for i, w := range writers {
		f, err := os.Create(w.path)
		if err != nil {
			t.Fatal(err)
		}
		fs[i] = f
		if _, err := f.Write(w.body[:w.cut]); err != nil {
			t.Fatal(err)
		}
	}
	// The writers pause, for many quiet periods.
	time.Sleep(2 * time.Second)
	for _, app := range []string{"gzapp", "tarapp"} {
		if rels, err := ta.Releases(context.Background(), app); err == nil && len(rels) > 0 {
			t.Fatalf("%s deployed half written: %+v", app, rels)
		}
	}
	for _, name := range []string{"gzapp.tar.gz", "tarapp.tar"} {
		if _, err := os.Stat(filepath.Join(inbox, ".failed", name)); err == nil {
			t.Fatalf("%s failed while half written", name)
		}
	}
	for i, w := range writers {
		if _, err := fs[i].Write(w.body[w.cut:]); err != nil {
			t.Fatal(err)
		}
		fs[i].Close()
	}
	waitExists(t, filepath.Join(inbox, ".done", "gzapp.tar.gz"))
	waitExists(t, filepath.Join(inbox, ".done", "tarapp.tar"))
	ta.waitLog(t, "gzapp", "web.1", "rel=v1")
	rels, err := ta.Releases(context.Background(), "tarapp")
	if err != nil || len(rels) != 1 || rels[0].Build != sha256Hex(plain) {
		t.Fatalf("tarapp releases = %+v, %v; want the whole tar", rels, err)
	}
}

// TestAgent_InboxReasons ensures every inbox entry that is not deployed
// (and not ignored by its name) ends in .failed with a reason: a
// symlink, a FIFO, a directory named like a tarball, a file that is no
// archive, and a name that is no tarball's.
func TestAgent_InboxReasons(t *testing.T) {
	cfg := testConfig(dataDir(t))
	inbox := inboxDir(t, cfg)
	if err := os.Symlink("/etc/hostname", filepath.Join(inbox, "link.tar.gz")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(inbox, "fifo.tar"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(inbox, "dir.tar.gz", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(inbox, "junk.tar.gz"), bytes.Repeat([]byte("junk "), 200), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(inbox, "notes.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	startAgent(t, cfg)
	want := map[string]string{
		"link.tar.gz": "a symlink",
		"fifo.tar":    "a FIFO",
		"dir.tar.gz":  "a directory, not a tarball",
		"junk.tar.gz": "not a tar",
		"notes.txt":   "name it <app>.tar.gz",
	}
	for name, reason := range want {
		p := filepath.Join(inbox, ".failed", name)
		waitExists(t, p+".error")
		waitExists(t, p)
		msg, _ := os.ReadFile(p + ".error")
		if !strings.Contains(string(msg), reason) {
			t.Errorf("%s: reason %q, want it to say %q", name, msg, reason)
		}
		if _, err := os.Lstat(filepath.Join(inbox, name)); err == nil {
			t.Errorf("%s still in the inbox", name)
		}
	}
}

// sha256Hex is the build ID of a tarball body.
func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
