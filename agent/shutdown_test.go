package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
)

// TestAgent_SIGTERMDuringSwitch ensures a SIGTERM that arrives while a
// deploy runs a release phase that would sleep 30 s, or while a config
// change waits for a new instance that is still in a 30 s health check
// start period, stops the agent within its stop timeout plus 1 s: the
// switch is abandoned and recorded as interrupted, a client of the
// switch gets the "the agent is shutting down" error (not a cut stream),
// an inbox file stays in the inbox for the next start, and after a
// restart the old release is the active one and serves.
func TestAgent_SIGTERMDuringSwitch(t *testing.T) {
	t.Run("release-phase", func(t *testing.T) { sigtermDuringSwitch(t, "cli") })
	t.Run("release-phase-inbox", func(t *testing.T) { sigtermDuringSwitch(t, "inbox") })
	t.Run("health", func(t *testing.T) { sigtermDuringSwitch(t, "health") })
}

func sigtermDuringSwitch(t *testing.T, how string) {
	inbox := how == "inbox"
	cfg := testConfig(dataDir(t))
	cfg.BasePort = freeBasePort(t)
	socket := filepath.Join(filepath.Dir(cfg.DataDir), "t.sock")
	logf, childLog := childAgentLog(t)
	ctx := context.Background()
	start := func() (*api.Client, func() time.Duration) {
		child, c := startAnsweringChildAgent(t, cfg, socket, logf, childLog)
		// term sends SIGTERM and returns how long the agent took to exit.
		term := func() time.Duration {
			begin := time.Now()
			if err := child.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			err := child.Wait()
			took := time.Since(begin)
			if err != nil {
				t.Fatalf("agent exited with %v after SIGTERM:\n%s", err, childLog())
			}
			return took
		}
		return c, term
	}
	serving := func() error {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/up", cfg.BasePort))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /up: %s", resp.Status)
		}
		return nil
	}

	// A check that passes at once but allows 30 s to start: a failing
	// instance is waited for that long.
	const slowManifest = `{"processes":{"web":{"healthcheck":{"http":"/up","interval":"100ms","timeout":"500ms","start_period":"30s","retries":3},"stop_timeout":"5s"}}}`
	c, term := start()
	if _, err := c.Deploy(ctx, api.DeployRequest{App: "hello", Body: bytes.NewReader(helloTar(t, slowManifest, "v1"))}, nil); err != nil {
		t.Fatalf("deploy v1: %v\n%s", err, childLog())
	}
	if err := serving(); err != nil {
		t.Fatalf("v1 does not serve: %v", err)
	}

	v2 := helloTarFiles(t, "web: ./hello\nrelease: exec sleep 30\n", bindManifest, "v2")
	deployErr := make(chan error, 1)
	inboxFile := filepath.Join(cfg.DataDir, "inbox", "hello.tar")
	switch how {
	case "inbox":
		if err := writeFileAtomic(inboxFile, v2, 0o644); err != nil {
			t.Fatal(err)
		}
	case "health":
		go func() {
			_, err := c.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"HELLO_FAIL_HEALTH": "1"}}, nil)
			deployErr <- err
		}()
	default:
		go func() {
			_, err := c.Deploy(ctx, api.DeployRequest{App: "hello", Body: bytes.NewReader(v2)}, nil)
			deployErr <- err
		}()
	}
	waitFor(t, 30*time.Second, "the release phase or the instance of v2 to run", func() bool {
		for _, rel := range appProcs(t, cfg.DataDir, "hello") {
			if rel == "v2" {
				return true
			}
		}
		return false
	})

	took := term()
	if os.Getenv("BERTH_TEST_SHOWLOG") != "" {
		t.Log(childLog())
	}
	t.Logf("the agent exited %s after SIGTERM (stop timeout %s)", took.Round(time.Millisecond), cfg.StopTimeout)
	if took > cfg.StopTimeout+time.Second {
		t.Errorf("the agent took %s to exit after SIGTERM, more than its stop timeout %s plus 1s", took, cfg.StopTimeout)
	}
	if left := appProcs(t, cfg.DataDir, "hello"); len(left) != 0 {
		t.Errorf("app processes left after the agent stopped: %v", left)
	}
	if inbox {
		if _, err := os.Stat(inboxFile); err != nil {
			t.Errorf("the inbox file of the interrupted deploy is gone: %v", err)
		}
		if _, err := os.Stat(filepath.Join(cfg.DataDir, "inbox", ".failed", "hello.tar")); err == nil {
			t.Errorf("the interrupted inbox deploy was moved to .failed")
		}
		// Out of the way: the next start would deploy it again.
		if err := os.Remove(inboxFile); err != nil {
			t.Fatal(err)
		}
	} else {
		err := <-deployErr
		if !errors.Is(err, api.ErrUnavailable) || !strings.Contains(err.Error(), "the agent is shutting down") {
			t.Errorf("deploy client got %v, want the agent's shutdown error", err)
		}
	}

	c, _ = start()
	rels, err := c.Releases(ctx, "hello")
	if err != nil {
		t.Fatal(err)
	}
	if len(rels) != 2 || rels[0].Version != 2 || rels[1].Version != 1 {
		t.Fatalf("releases after the restart: %+v", rels)
	}
	if rels[0].Status != "failed" || !strings.Contains(rels[0].Reason, "interrupted") {
		t.Errorf("v2 is %s (%s), want failed as interrupted", rels[0].Status, rels[0].Reason)
	}
	if rels[1].Status != "active" {
		t.Errorf("v1 is %s after the restart, want active", rels[1].Status)
	}
	ps, err := c.Processes(ctx, "hello")
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Release != 1 || ps[0].State != "running" {
		t.Errorf("processes after the restart: %+v", ps)
	}
	waitFor(t, 30*time.Second, "v1 to serve again", func() bool { return serving() == nil })
}
