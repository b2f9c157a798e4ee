package agent

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// escapingApp is an app whose web process starts two processes that
// leave its process group: one whose parent (web) still runs, and an
// orphan whose parent exited at once. With web itself, 3 processes.
func escapingApp(t *testing.T) []byte {
	return tarball(t, map[string]string{"Procfile": "web: setsid sleep 1001 & sh -c 'setsid sleep 1002 &'; exec sleep 1000\n"})
}

// waitAppProcs waits until the app has exactly n processes.
func waitAppProcs(t *testing.T, dataDir, app string, n int, what string) {
	t.Helper()
	waitFor(t, 15*time.Second, what, func() bool { return len(appProcs(t, dataDir, app)) == n })
}

// TestAgent_StopKillsEscaped ensures processes an app started that left
// its process group (setsid) do not survive a scale to 0, a destroy of
// the app or a graceful stop of the agent.
func TestAgent_StopKillsEscaped(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	dir := ta.cfg.DataDir
	ta.mustDeploy(t, "esc", escapingApp(t))
	waitAppProcs(t, dir, "esc", 3, "web and its 2 escaped processes")
	if _, err := ta.Scale(ctx, "esc", map[string]int{"web": 0}); err != nil {
		t.Fatal(err)
	}
	if got := appProcs(t, dir, "esc"); len(got) != 0 {
		t.Fatalf("after scale web=0: processes %v left", got)
	}
	if _, err := ta.Scale(ctx, "esc", map[string]int{"web": 1}); err != nil {
		t.Fatal(err)
	}
	waitAppProcs(t, dir, "esc", 3, "web scaled back with its escaped processes")
	if err := ta.DestroyApp(ctx, "esc"); err != nil {
		t.Fatal(err)
	}
	if got := appProcs(t, dir, "esc"); len(got) != 0 {
		t.Fatalf("after destroy: processes %v left", got)
	}
	ta.mustDeploy(t, "esc", escapingApp(t))
	waitAppProcs(t, dir, "esc", 3, "redeployed")
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	if got := appProcs(t, dir, "esc"); len(got) != 0 {
		t.Fatalf("after the agent stopped: processes %v left", got)
	}
}

// TestAgent_GracefulStopKillsEscaped ensures an agent process that gets
// SIGTERM (no systemd, no cgroup) leaves none of an app's processes
// behind, also those that left its process group.
func TestAgent_GracefulStopKillsEscaped(t *testing.T) {
	cfg := testConfig(dataDir(t))
	cfg.BasePort = freeBasePort(t)
	inbox := filepath.Join(cfg.DataDir, "inbox")
	if err := os.MkdirAll(inbox, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(inbox, "esc.tar.gz"), escapingApp(t), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, childLog := childAgentLog(t)
	child := startChildAgent(t, cfg, "", logf)
	waitFor(t, 30*time.Second, "the child agent to run web and its 2 escaped processes", func() bool {
		if child.ProcessState != nil {
			t.Fatalf("child agent exited: %s", childLog())
		}
		return len(appProcs(t, cfg.DataDir, "esc")) == 3
	})
	left := appProcs(t, cfg.DataDir, "esc")
	t.Cleanup(func() {
		for pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	if err := child.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := child.Wait(); err != nil {
		t.Fatalf("child agent: %v\n%s", err, childLog())
	}
	if got := appProcs(t, cfg.DataDir, "esc"); len(got) != 0 {
		t.Fatalf("after a graceful stop of the agent: processes %v left\n%s", got, childLog())
	}
}
