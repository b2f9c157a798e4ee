package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
)

// TestInboxTarget ensures inbox names map to apps, dot and partial files
// are ignored, and other names are refused with a reason.
func TestInboxTarget(t *testing.T) {
	cases := []struct {
		rel    string
		app    string
		ignore bool
		bad    bool
	}{
		{"hello.tar.gz", "hello", false, false},
		{"hello.tgz", "hello", false, false},
		{"hello.tar.zst", "hello", false, false},
		{"hello.tar", "hello", false, false},
		{"hello/anything.bin", "hello", false, false},
		{"hello/deep/er/x.tar.gz", "hello", false, false},
		{".hidden.tar.gz", "", true, false},
		{"hello.tar.gz.part", "", true, false},
		{"hello.tar.gz.tmp", "", true, false},
		{"hello/.x.tar", "", true, false},
		{".done/hello.tar.gz", "", true, false},
		{"hello.zip", "", false, true},
		{"Hello.tar.gz", "", false, true},
		{"Bad_App/x.tar", "", false, true},
	}
	for _, tc := range cases {
		app, ignore, err := inboxTarget(tc.rel)
		if app != tc.app || ignore != tc.ignore || (err != nil) != tc.bad {
			t.Errorf("inboxTarget(%q) = %q, %v, %v; want %q, %v, bad=%v", tc.rel, app, ignore, err, tc.app, tc.ignore, tc.bad)
		}
	}
}

// TestAgent_Inbox ensures a tarball renamed into the inbox, one written
// slowly in place, one inside <app>/ and one present before the agent
// started are each deployed once and moved to .done, and a corrupt one
// goes to .failed with an .error file, changing nothing.
func TestAgent_Inbox(t *testing.T) {
	cfg := testConfig(dataDir(t))
	inbox := filepath.Join(cfg.DataDir, "inbox")
	if err := os.MkdirAll(inbox, 0o755); err != nil {
		t.Fatal(err)
	}
	// Arrived while the agent was down.
	if err := os.WriteFile(filepath.Join(inbox, "early.tar.gz"), webBuild(t, "early"), 0o644); err != nil {
		t.Fatal(err)
	}
	ta := startAgent(t, cfg)
	ctx := context.Background()
	done := func(name string) string { return filepath.Join(inbox, ".done", name) }
	waitFile := func(p string) {
		t.Helper()
		waitFor(t, 20*time.Second, p, func() bool { _, err := os.Stat(p); return err == nil })
	}
	waitFile(done("early.tar.gz"))
	if ps := ta.procs(t, "early"); ps["web.1"].State != "running" {
		t.Fatalf("early not running: %+v", ps)
	}

	// Renamed in: complete at once.
	tmp := filepath.Join(inbox, ".upload")
	if err := os.WriteFile(tmp, webBuild(t, "renamed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(inbox, "hello.tar.gz")); err != nil {
		t.Fatal(err)
	}
	waitFile(done("hello.tar.gz"))
	rels, err := ta.Releases(ctx, "hello")
	if err != nil || len(rels) != 1 || rels[0].Status != "active" || !strings.Contains(rels[0].Description, "inbox") {
		t.Fatalf("releases after the inbox deploy = %+v, %v", rels, err)
	}

	// Written slowly in place, inside <app>/: nothing happens before the
	// writer stops.
	body := webBuild(t, "slow")
	if err := os.MkdirAll(filepath.Join(inbox, "hello"), 0o755); err != nil {
		t.Fatal(err)
	}
	slow := filepath.Join(inbox, "hello", "build-2.tar.gz")
	f, err := os.Create(slow)
	if err != nil {
		t.Fatal(err)
	}
	chunk := len(body)/5 + 1
	for i := 0; i < len(body); i += chunk {
		if _, err := f.Write(body[i:min(i+chunk, len(body))]); err != nil {
			t.Fatal(err)
		}
		// A pause shorter than the quiet period, between writes.
		time.Sleep(cfg.InboxQuiet / 3)
		if rels, _ := ta.Releases(ctx, "hello"); len(rels) != 1 {
			t.Fatalf("deployed while still being written: %+v", rels)
		}
	}
	f.Close()
	waitFile(done("hello/build-2.tar.gz"))
	rels, _ = ta.Releases(ctx, "hello")
	if len(rels) != 2 || rels[0].Status != "active" {
		t.Fatalf("releases after the slow write = %+v", rels)
	}
	pid := ta.procs(t, "hello")["web.1"].PID

	// Corrupt: to .failed with the reason, nothing changes.
	if err := os.WriteFile(filepath.Join(inbox, ".bad"), []byte("not a tarball"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(inbox, ".bad"), filepath.Join(inbox, "hello.tar")); err != nil {
		t.Fatal(err)
	}
	failed := filepath.Join(inbox, ".failed", "hello.tar")
	waitFile(failed + ".error")
	waitFile(failed)
	msg, _ := os.ReadFile(failed + ".error")
	if !strings.Contains(string(msg), "corrupt") && !strings.Contains(string(msg), "tar") {
		t.Errorf(".error = %q", msg)
	}
	if rels, _ := ta.Releases(ctx, "hello"); len(rels) != 2 {
		t.Fatalf("a corrupt inbox file made a release: %+v", rels)
	}
	if ta.procs(t, "hello")["web.1"].PID != pid {
		t.Fatal("a corrupt inbox file restarted the app")
	}
	// A name that is no app: refused with the rule.
	if err := os.WriteFile(filepath.Join(inbox, "notes.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFile(filepath.Join(inbox, ".failed", "notes.txt.error"))
	if _, err := os.Stat(filepath.Join(inbox, "hello.tar.gz")); !os.IsNotExist(err) {
		t.Fatalf("handled file still in the inbox: %v", err)
	}
}

// FuzzInboxTarget ensures any path under the inbox maps to a valid app
// name, is ignored, or is refused: never an invalid app.
func FuzzInboxTarget(f *testing.F) {
	for _, s := range []string{"hello.tar.gz", "a/b/c.tar", ".x", "x.tgz.part", "Bad.tar", "a//b", "-.tar"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rel string) {
		app, ignore, err := inboxTarget(rel)
		switch {
		case ignore && (app != "" || err != nil):
			t.Fatalf("%q: ignored but app %q, err %v", rel, app, err)
		case err != nil && app != "":
			t.Fatalf("%q: refused but app %q", rel, app)
		case !ignore && err == nil && state.ValidateAppName(app) != nil:
			t.Fatalf("%q: invalid app %q accepted", rel, app)
		}
	})
}

// TestAgent_InboxNotRegular ensures the agent, which runs as root, opens
// only regular files from the inbox: a symlink to a secret, a FIFO (with
// no writer: opening it must not block) and a device go to .failed with
// an .error saying what they are, that never quotes a file's content, and
// a tarball dropped after them is still deployed.
func TestAgent_InboxNotRegular(t *testing.T) {
	cfg := testConfig(dataDir(t))
	inbox := filepath.Join(cfg.DataDir, "inbox")
	if err := os.MkdirAll(inbox, 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(secret, []byte("root:SECRETHASH:19000"), 0o600); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"link.tar.gz": "a symlink",
		"fifo.tar.gz": "a FIFO",
	}
	if err := os.Symlink(secret, filepath.Join(inbox, "link.tar.gz")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(inbox, "fifo.tar.gz"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A character device like /dev/null (1, 3), where mknod is allowed.
	if err := syscall.Mknod(filepath.Join(inbox, "dev.tar.gz"), syscall.S_IFCHR|0o644, 1<<8|3); err == nil {
		want["dev.tar.gz"] = "a character device"
	}
	ta := startAgent(t, cfg)
	for name, kind := range want {
		errFile := filepath.Join(inbox, ".failed", name+".error")
		waitFor(t, 20*time.Second, errFile, func() bool { _, err := os.Stat(errFile); return err == nil })
		msg, _ := os.ReadFile(errFile)
		if !strings.Contains(string(msg), "not a regular file but "+kind) || strings.Contains(string(msg), "SECRET") {
			t.Errorf("%s: .error = %q", name, msg)
		}
	}
	if b, _ := os.ReadFile(secret); string(b) != "root:SECRETHASH:19000" {
		t.Errorf("the symlink's target changed: %q", b)
	}
	if err := os.WriteFile(filepath.Join(inbox, ".up"), webApp(t, ""), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(inbox, ".up"), filepath.Join(inbox, "hello.tar.gz")); err != nil {
		t.Fatal(err)
	}
	done := filepath.Join(inbox, ".done", "hello.tar.gz")
	waitFor(t, 20*time.Second, done, func() bool { _, err := os.Stat(done); return err == nil })
	if ps := ta.procs(t, "hello"); ps["web.1"].State != "running" {
		t.Fatalf("hello not running after the refusals: %+v", ps)
	}
}

// TestOpenInboxFile ensures openInboxFile refuses what is not a regular
// file, without blocking on a FIFO, and opens a regular one.
func TestOpenInboxFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ok"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("ok", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := openInboxFile(dir, "ok")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	for name, kind := range map[string]string{"fifo": "a FIFO", "link": "a symlink", "d": "a directory"} {
		if _, err := openInboxFile(dir, name); !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), kind) {
			t.Errorf("openInboxFile(%s) = %v, want ErrInvalid naming %s", name, err, kind)
		}
	}
	if _, err := openInboxFile(dir, "../x"); err == nil {
		t.Error("openInboxFile left the inbox")
	}
}
