package agent

import (
	"context"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/berth-dev/berth/agent/api"
)

// TestAgent_PerAppQueue ensures two changes to one app run one after the
// other (both succeed, in order) while another app is not held up by a
// slow release phase.
func TestAgent_PerAppQueue(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	ta.mustDeploy(t, "slow", webBuild(t, "slow v1"))
	ta.mustDeploy(t, "fast", webBuild(t, "fast v1"))

	// The release phase holds slow's queue until the gate file exists.
	gate := filepath.Join(ta.cfg.DataDir, "gate")
	slowBody := webApp(t, "release: while [ ! -e "+gate+" ]; do sleep 0.02; done\n")
	var wg sync.WaitGroup
	var slowErr error
	var slowRel api.Release
	wg.Go(func() {
		slowRel, _, slowErr = ta.deploy(t, "slow", slowBody)
	})
	// Wait until slow's release phase runs (its release is pending).
	waitFor(t, 10*time.Second, "slow's release phase", func() bool {
		rels, _ := ta.Releases(ctx, "slow")
		return len(rels) == 2 && rels[0].Status == "pending"
	})
	var cfgRel api.Release
	var cfgErr error
	wg.Go(func() {
		cfgRel, cfgErr = ta.SetConfig(ctx, "slow", api.ConfigChange{Set: map[string]string{"FOO": "queued"}}, nil)
	})
	// fast is not held up.
	if _, err := ta.SetConfig(ctx, "fast", api.ConfigChange{Set: map[string]string{"FOO": "now"}}, nil); err != nil {
		t.Fatal(err)
	}
	if rels, _ := ta.Releases(ctx, "slow"); len(rels) != 2 {
		t.Fatalf("the queued config change ran during the deploy: %+v", rels)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if slowErr != nil || cfgErr != nil {
		t.Fatalf("deploy: %v; config: %v", slowErr, cfgErr)
	}
	if slowRel.Version != 2 || cfgRel.Version != 3 || cfgRel.Build != slowRel.Build {
		t.Fatalf("deploy v%d, config v%d (build %s vs %s)", slowRel.Version, cfgRel.Version, cfgRel.Build, slowRel.Build)
	}
	ta.waitLog(t, "slow", "web.1", "rel=v3 FOO=queued")
}

// TestAgent_DestroyApp ensures destroy stops the processes, forgets the
// app and removes apps/<app>/, and that a new app of the same name starts
// over at v1.
func TestAgent_DestroyApp(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	ta.mustDeploy(t, "hello", webApp(t, ""))
	if err := ta.DestroyApp(ctx, "hello"); err != nil {
		t.Fatal(err)
	}
	if n := len(appProcs(t, ta.cfg.DataDir, "hello")); n != 0 {
		t.Fatalf("%d processes left after destroy", n)
	}
	if _, err := os.Stat(filepath.Join(ta.cfg.DataDir, "apps", "hello")); !os.IsNotExist(err) {
		t.Fatalf("apps/hello left after destroy: %v", err)
	}
	_, err := ta.Releases(ctx, "hello")
	wantKind(t, err, api.ErrNotFound)
	if rel := ta.mustDeploy(t, "hello", webApp(t, "")); rel.Version != 1 {
		t.Fatalf("recreated app starts at v%d", rel.Version)
	}
}

// TestAgent_SetAppUser ensures the app user is checked (unknown users and
// root-by-default refused) and applied by restarting the processes.
func TestAgent_SetAppUser(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	ta.mustDeploy(t, "hello", webApp(t, ""))
	_, err := ta.SetAppUser(ctx, "hello", "no-such-user-x")
	wantKind(t, err, api.ErrInvalid)
	_, err = ta.SetAppUser(ctx, "hello", "bad user!")
	wantKind(t, err, api.ErrInvalid)
	if os.Geteuid() != 0 {
		// Not root: only the agent's own user is possible.
		self, _ := user.Current()
		if _, err := ta.SetAppUser(ctx, "hello", self.Username); err != nil {
			t.Fatal(err)
		}
		return
	}
	before := ta.procs(t, "hello")["web.1"]
	app, err := ta.SetAppUser(ctx, "hello", "daemon")
	if err != nil || app.User != "daemon" {
		t.Fatalf("set user = %+v, %v", app, err)
	}
	after := ta.procs(t, "hello")["web.1"]
	if after.PID == before.PID {
		t.Fatal("processes not restarted as the new user")
	}
	u, _ := user.Lookup("daemon")
	if uid, _ := readProcStatus(after.PID); uid != u.Uid {
		t.Fatalf("web.1 runs as uid %s, want daemon's %s", uid, u.Uid)
	}
	// TMPDIR follows the user.
	fi, err := os.Stat(filepath.Join(ta.cfg.DataDir, "apps", "hello", "tmp"))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("TMPDIR = %v, %v", fi, err)
	}
}

// TestAgent_ReloadWarnsOfFixedSettings ensures a reload that changes a
// setting read only at start keeps the old value and says so.
func TestAgent_ReloadWarnsOfFixedSettings(t *testing.T) {
	cfg := testConfig(dataDir(t))
	var buf strings.Builder
	a, err := New(cfg, hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info}))
	if err != nil {
		t.Fatal(err)
	}
	next := cfg
	next.InboxQuiet = cfg.withDefaults().InboxQuiet + time.Second
	next.SocketPath = cfg.SocketPath + ".other"
	next.Retention = 3
	if err := a.Reload(next); err != nil {
		t.Fatal(err)
	}
	got := a.config()
	if got.InboxQuiet != cfg.withDefaults().InboxQuiet || got.SocketPath != cfg.withDefaults().SocketPath || got.Retention != 3 {
		t.Errorf("after reload: inbox quiet %v, socket %s, retention %d", got.InboxQuiet, got.SocketPath, got.Retention)
	}
	for _, name := range []string{"inbox_quiet", "socket"} {
		if !strings.Contains(buf.String(), "setting changes only when the agent restarts: setting="+name) {
			t.Errorf("no warning for %s in:\n%s", name, buf.String())
		}
	}
}

// TestAgent_Reload ensures Reload applies the run-time settings to
// processes started afterwards and refuses a bad configuration.
func TestAgent_Reload(t *testing.T) {
	cfg := testConfig(dataDir(t))
	ta := startAgent(t, cfg)
	ctx := context.Background()
	t.Setenv("BERTH_TEST_ALLOWED", "passed")
	ta.mustDeploy(t, "hello", webApp(t, ""))
	if env := procEnv(t, ta.procs(t, "hello")["web.1"].PID); env["BERTH_TEST_ALLOWED"] != "" {
		t.Fatal("an env var leaked before it was allowed")
	}
	next := cfg
	next.AllowEnv = []string{"BERTH_TEST_ALLOWED"}
	next.Retention = 2
	if err := ta.Reload(next); err != nil {
		t.Fatal(err)
	}
	if err := ta.Restart(ctx, "hello", ""); err != nil {
		t.Fatal(err)
	}
	// A restart keeps the spec; a new release picks up the new settings.
	if _, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"X": "1"}}, nil); err != nil {
		t.Fatal(err)
	}
	if env := procEnv(t, ta.procs(t, "hello")["web.1"].PID); env["BERTH_TEST_ALLOWED"] != "passed" {
		t.Fatalf("allowed env not passed after reload: %v", env)
	}
	if ta.config().Retention != 2 {
		t.Fatal("retention not reloaded")
	}
	bad := cfg
	bad.BasePort = -1
	if err := ta.Reload(bad); err == nil {
		t.Fatal("Reload accepted a bad base port")
	}
	if ta.config().BasePort != DefaultBasePort {
		t.Fatal("a refused reload changed the configuration")
	}
}
