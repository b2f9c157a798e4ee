package agent

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
)

// TestAgent_OverSocket drives the agent through its real unix socket
// with the api client, as the CLI does: deploy with progress, ps, logs,
// config, events, and error kinds that survive the wire.
func TestAgent_OverSocket(t *testing.T) {
	cfg := testConfig(dataDir(t))
	cfg.NoSocket = false
	ta := startAgent(t, cfg)
	c := api.NewClient(cfg.SocketPath)
	defer c.Close()
	ctx := context.Background()

	info, err := c.Info(ctx)
	if err != nil || info.Version != "test" || info.DataDir != ta.cfg.DataDir {
		t.Fatalf("info = %+v, %v", info, err)
	}
	var steps []string
	rel, err := c.Deploy(ctx, api.DeployRequest{App: "hello", Body: bytes.NewReader(webApp(t, "")), Source: "cli"},
		func(p api.Progress) { steps = append(steps, p.Step) })
	if err != nil {
		t.Fatal(err)
	}
	if rel.Version != 1 || len(steps) < 3 {
		t.Fatalf("release %+v, steps %v", rel, steps)
	}
	ps, err := c.Processes(ctx, "hello")
	if err != nil || len(ps) != 1 || ps[0].State != "running" {
		t.Fatalf("ps = %+v, %v", ps, err)
	}
	if _, err := c.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"FOO": "wire"}}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the v2 log line over the socket", func() bool {
		lines, err := c.Logs(ctx, "hello", api.LogQuery{Instance: "web.1", N: 10})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range lines {
			if strings.Contains(l.Text, "rel=v2 FOO=wire") && l.App == "hello" && l.Instance == "web.1" {
				return true
			}
		}
		return false
	})

	// Follow logs: a restart prints the line again.
	fctx, cancel := context.WithCancel(ctx)
	lines := make(chan api.LogLine, 16)
	done := make(chan error, 1)
	go func() {
		done <- c.FollowLogs(fctx, "hello", api.LogQuery{}, func(l api.LogLine) error { lines <- l; return nil })
	}()
	waitFor(t, 10*time.Second, "restart that a follower sees", func() bool {
		if err := c.Restart(ctx, "hello", "web"); err != nil {
			t.Fatal(err)
		}
		select {
		case l := <-lines:
			return strings.Contains(l.Text, "rel=v2")
		case <-time.After(500 * time.Millisecond):
			return false
		}
	})
	cancel()
	<-done

	_, err = c.Releases(ctx, "nope")
	if !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("unknown app over the wire: %v", err)
	}
	_, err = c.Deploy(ctx, api.DeployRequest{App: "hello", Body: strings.NewReader("garbage garbage garbage")}, nil)
	if !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("corrupt upload over the wire: %v", err)
	}
	evs, err := c.Events(ctx, "hello", 0, 0)
	if err != nil || len(evs) < 3 {
		t.Fatalf("events = %+v, %v", evs, err)
	}
}

// TestAgent_SecondAgentRefused ensures a second agent on the same data
// dir fails at once with a message that says so, and disturbs nothing:
// the first one keeps serving and its processes keep running.
func TestAgent_SecondAgentRefused(t *testing.T) {
	cfg := testConfig(dataDir(t))
	cfg.NoSocket = false
	ta := startAgent(t, cfg)
	ta.mustDeploy(t, "hello", webApp(t, ""))
	pid := ta.procs(t, "hello")["web.1"].PID

	second, err := New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	err = second.Run(context.Background())
	if !errors.Is(err, state.ErrLocked) || !strings.Contains(err.Error(), "another berth agent") {
		t.Fatalf("second agent: %v", err)
	}
	c := api.NewClient(cfg.SocketPath)
	defer c.Close()
	ps, err := c.Processes(context.Background(), "hello")
	if err != nil || len(ps) != 1 || ps[0].PID != pid {
		t.Fatalf("first agent after the second was refused: %+v, %v", ps, err)
	}
}

// TestAgent_OneSupervisorPerProcess ensures a second agent in the same
// process (another data dir) fails instead of running processes nothing
// would reap, and leaves the first one alone.
func TestAgent_OneSupervisorPerProcess(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ta.mustDeploy(t, "hello", webApp(t, ""))
	other, err := New(testConfig(dataDir(t)), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	err = other.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "supervisor") {
		t.Fatalf("second agent in one process: %v", err)
	}
	if p := ta.procs(t, "hello")["web.1"]; p.State != "running" {
		t.Fatalf("first agent disturbed: %+v", p)
	}
}
