package agent

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/internal/procfs"
	"github.com/berth-dev/berth/state"
)

// TestAgent_RecoveryAfterKill9 ensures that after a kill -9 of the agent
// (run in a child process: this test binary in helper mode), a new agent
// on the same data dir kills the processes the dead one left and ends
// with exactly one set of processes, on the active release.
//
// In socket mode the agent owns web.1's socket: the new agent listens on
// it again once the orphans are gone.
func TestAgent_RecoveryAfterKill9(t *testing.T) {
	t.Run("bind", func(t *testing.T) { recoveryAfterKill9(t, "", "bind") })
	t.Run("socket", func(t *testing.T) {
		recoveryAfterKill9(t, `{"processes":{"web":{"socket_activation":true}}}`, "socket")
	})
}

func recoveryAfterKill9(t *testing.T, manifest, mode string) {
	cfg := testConfig(dataDir(t))
	cfg.BasePort = freeBasePort(t)
	inbox := filepath.Join(cfg.DataDir, "inbox")
	if err := os.MkdirAll(inbox, 0o755); err != nil {
		t.Fatal(err)
	}
	// The child deploys this from its inbox at start.
	files := map[string]string{"Procfile": webProcfile + "worker: exec sleep 1002\n"}
	if manifest != "" {
		// With a socket the supervisor execs the command from a shell
		// that set LISTEN_PID: it must be one simple command.
		files["Procfile"] = "web: sleep 1000\nworker: exec sleep 1002\n"
		files["berth.json"] = manifest
	}
	body := tarball(t, files)
	if err := os.WriteFile(filepath.Join(inbox, "crashy.tar.gz"), body, 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), "child.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	child := startChildAgent(t, cfg, "", logf)
	childLog := func() string { b, _ := os.ReadFile(logf.Name()); return string(b) }
	waitFor(t, 30*time.Second, "the child agent to run 2 processes", func() bool {
		if child.ProcessState != nil {
			t.Fatalf("child agent exited: %s", childLog())
		}
		return len(appProcs(t, cfg.DataDir, "crashy")) == 2
	})
	// A deploy reports done once its process records are durable.
	waitFor(t, 30*time.Second, "the inbox deploy to finish", func() bool {
		_, err := os.Stat(filepath.Join(inbox, ".done", "crashy.tar.gz"))
		return err == nil
	})
	orphans := appProcs(t, cfg.DataDir, "crashy")
	t.Cleanup(func() {
		// Whatever the outcome, leave no process of this test behind.
		for pid := range appProcs(t, cfg.DataDir, "crashy") {
			if _, ok := orphans[pid]; ok {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	for pid := range orphans {
		if err := syscall.Kill(pid, 0); err != nil {
			t.Fatalf("orphan %d died with the agent; the test proves nothing: %v", pid, err)
		}
	}

	ta := startAgent(t, cfg)
	got := appProcs(t, cfg.DataDir, "crashy")
	if len(got) != 2 {
		t.Fatalf("after restart: processes %v, want exactly 2 (orphans were %v)\nchild log:\n%s", got, orphans, childLog())
	}
	for pid, rel := range got {
		if _, old := orphans[pid]; old {
			t.Fatalf("orphan %d of the killed agent still runs", pid)
		}
		if rel != "v1" {
			t.Fatalf("process %d runs %s, want v1", pid, rel)
		}
	}
	ps := ta.procs(t, "crashy")
	if ps["web.1"].State != "running" || ps["worker.1"].State != "running" || ps["web.1"].Mode != mode {
		t.Fatalf("ps after recovery = %+v", ps)
	}
	if mode == "socket" {
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ps["web.1"].Port)))
		if err != nil {
			t.Fatalf("web.1's socket is not listening after recovery: %v", err)
		}
		c.Close()
	}
	// The store records the new processes, not the old ones.
	waitFor(t, 5*time.Second, "process records of the new agent", func() bool {
		recs, err := ta.store.Procs()
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 2 {
			return false
		}
		for _, r := range recs {
			if _, ok := got[r.PID]; !ok {
				return false
			}
		}
		return true
	})
}

// startChildAgent runs an agent on cfg's data dir and base port in a
// child process (this test binary in helper mode), serving socket unless
// it is empty, with its output to out. The test may SIGKILL it; one
// still running at the end gets SIGTERM.
// childAgentLog returns the file child agents write their output to, and
// a function that returns its last 30 lines, for failure messages.
func childAgentLog(t *testing.T) (*os.File, func() string) {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), "children.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	return logf, func() string {
		b, _ := os.ReadFile(logf.Name())
		lines := strings.Split(string(b), "\n")
		return strings.Join(lines[max(0, len(lines)-30):], "\n")
	}
}

// startAnsweringChildAgent starts a child agent serving socket and
// returns it with a client once it answers; childLog shows its output
// if it exits first.
func startAnsweringChildAgent(t *testing.T, cfg Config, socket string, out *os.File, childLog func() string) (*exec.Cmd, *api.Client) {
	t.Helper()
	child := startChildAgent(t, cfg, socket, out)
	c := api.NewClient(socket)
	waitFor(t, 30*time.Second, "the child agent to answer", func() bool {
		if child.ProcessState != nil {
			t.Fatalf("child agent exited: %s", childLog())
		}
		_, err := c.Info(context.Background())
		return err == nil
	})
	return child, c
}

func startChildAgent(t *testing.T, cfg Config, socket string, out *os.File) *exec.Cmd {
	t.Helper()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), helperEnv+"="+cfg.DataDir, helperPortEnv+"="+strconv.Itoa(cfg.BasePort))
	if socket != "" {
		child.Env = append(child.Env, "BERTH_AGENT_TEST_SOCKET="+socket)
	}
	child.Stdout, child.Stderr = out, out
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if child.ProcessState == nil {
			child.Process.Signal(syscall.SIGTERM)
			child.Wait()
		}
	})
	return child
}

// TestAgent_PendingAtStart ensures a release left pending by an agent
// that died mid-switch is marked failed at start, while the active
// release is brought up.
func TestAgent_PendingAtStart(t *testing.T) {
	cfg := testConfig(dataDir(t))
	ta := startAgent(t, cfg)
	v1 := ta.mustDeploy(t, "hello", webApp(t, ""))
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	// What a crash between CreateRelease and Activate leaves behind.
	st, err := state.Open(state.Config{Path: filepath.Join(cfg.DataDir, "berth.db")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pending, err := st.CreateRelease("hello", state.NewRelease{Build: v1.Build, Config: map[string]string{"FOO": "x"}, Description: "Set FOO"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	ta = startAgent(t, cfg)
	rel, err := ta.Release(context.Background(), "hello", pending.Version)
	if err != nil {
		t.Fatal(err)
	}
	if rel.Status != "failed" || !strings.Contains(rel.Reason, "interrupted") {
		t.Fatalf("pending release at start became %+v", rel)
	}
	ps := ta.procs(t, "hello")
	if ps["web.1"].Release != 1 || ps["web.1"].State != "running" {
		t.Fatalf("active release not started: %+v", ps)
	}
	if n := len(appProcs(t, ta.cfg.DataDir, "hello")); n != 1 {
		t.Fatalf("%d processes of hello, want 1", n)
	}
}

// TestAgent_Kill9DuringSwitches ensures a kill -9 of the agent at a
// random moment while deploys, config changes and scaling switch the
// app's processes loses nothing. The agent runs in a child process (this
// test binary in helper mode) and is killed in 5 rounds while a client
// changes config, deploys new builds and scales web between 1 and 2, one
// after the other. After each kill a new agent on the same data dir must
// have versions without gaps, exactly one active release holding every
// config change that was acknowledged, the builds of the active and the
// newest releases whole (and no unpacking left half done), and as many
// processes as the app's formation says, all of the active release, with
// those vars: none left over from the killed agent. In socket mode the
// new instance of a switch starts beside the old one on the agent's
// socket, which must listen again after the kill.
func TestAgent_Kill9DuringSwitches(t *testing.T) {
	t.Run("bind", func(t *testing.T) { kill9DuringSwitches(t, "") })
	t.Run("socket", func(t *testing.T) { kill9DuringSwitches(t, `{"processes":{"web":{"socket_activation":true}}}`) })
}

func kill9DuringSwitches(t *testing.T, manifest string) {
	// Each build differs by its README; a socket-activated command must
	// be one simple command.
	build := func(marker string) []byte {
		if manifest == "" {
			return webBuild(t, marker)
		}
		return tarball(t, map[string]string{"Procfile": "web: sleep 1000\n", "berth.json": manifest, "README": marker})
	}
	cfg := testConfig(dataDir(t))
	cfg.BasePort = freeBasePort(t)
	socket := filepath.Join(filepath.Dir(cfg.DataDir), "k.sock")
	logf, childLog := childAgentLog(t)
	ctx := context.Background()
	var acked []string // config keys whose change was acknowledged
	deploys := 0       // deploys acknowledged

	// check verifies what survived, asking the new agent.
	check := func(round int, agent interface {
		Apps(context.Context) ([]api.App, error)
		Releases(context.Context, string) ([]api.Release, error)
		Processes(context.Context, string) ([]api.Process, error)
	}) {
		t.Helper()
		rels, err := agent.Releases(ctx, "hello")
		if err != nil {
			t.Fatalf("round %d: releases after the kill: %v\n%s", round, err, childLog())
		}
		apps, err := agent.Apps(ctx)
		if err != nil || len(apps) != 1 {
			t.Fatalf("round %d: apps %+v, %v", round, apps, err)
		}
		scale := apps[0].Formation["web"]
		active := 0
		for i, r := range rels {
			if r.Version != len(rels)-i && r.Version != i+1 {
				t.Fatalf("round %d: versions have a gap: %+v", round, rels)
			}
			if r.Status == "active" {
				if active != 0 {
					t.Fatalf("round %d: two active releases: v%d and v%d", round, active, r.Version)
				}
				active = r.Version
				for _, k := range acked {
					if !slices.Contains(r.ConfigKeys, k) {
						t.Fatalf("round %d: acknowledged change %s is not in the active release v%d %v", round, k, r.Version, r.ConfigKeys)
					}
				}
			}
		}
		if active == 0 {
			t.Fatalf("round %d: no active release: %+v", round, rels)
		}
		builds := filepath.Join(cfg.DataDir, "builds")
		entries, err := os.ReadDir(builds)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".tmp-") {
				t.Fatalf("round %d: a half-unpacked build is left: %s", round, e.Name())
			}
		}
		newest := 0
		for _, r := range rels {
			newest = max(newest, r.Version)
		}
		for _, r := range rels {
			if r.Version <= newest-DefaultRetention && r.Status != "active" {
				continue // its build may be gone: only the newest releases keep theirs
			}
			if _, err := os.Stat(filepath.Join(builds, r.Build, "Procfile")); err != nil {
				t.Fatalf("round %d: the build %.12s of v%d (%s) is not whole: %v", round, r.Build, r.Version, r.Status, err)
			}
		}
		want := "v" + strconv.Itoa(active)
		var procs map[int]string
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			procs = appProcs(t, cfg.DataDir, "hello")
			if len(procs) == scale && !slices.ContainsFunc(slices.Collect(maps.Values(procs)), func(rel string) bool { return rel != want }) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: processes %v after 30s, want %d of %s; releases %+v\nagent log:\n%s", round, procs, scale, want, rels, childLog())
			}
		}
		if manifest != "" {
			// The agent listens on the instances' sockets again.
			list, err := agent.Processes(ctx, "hello")
			if err != nil || len(list) != scale {
				t.Fatalf("round %d: processes %+v, %v; want %d", round, list, err, scale)
			}
			for _, p := range list {
				conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port)))
				if err != nil || p.Mode != "socket" {
					t.Fatalf("round %d: %s (%s mode): socket not listening: %v", round, p.Instance, p.Mode, err)
				}
				conn.Close()
			}
		}
		for pid := range procs {
			env := procEnv(t, pid)
			for _, k := range acked {
				if env[k] != "1" {
					t.Fatalf("round %d: process %d of %s lacks acknowledged %s", round, pid, want, k)
				}
			}
		}
	}

	for round := 0; round < 5; round++ {
		child, c := startAnsweringChildAgent(t, cfg, socket, logf, childLog)
		if round == 0 {
			if _, err := c.Deploy(ctx, api.DeployRequest{App: "hello", Body: bytes.NewReader(build("first")), Source: "cli"}, nil); err != nil {
				t.Fatalf("deploy: %v\n%s", err, childLog())
			}
		} else {
			check(round, c)
		}

		// Config changes, deploys and scaling, one after the other until
		// the kill.
		done := make(chan struct{})
		var keys, deployed []string
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				if i%3 == 2 {
					if _, err := c.Scale(ctx, "hello", map[string]int{"web": 1 + i%2}); err != nil {
						return
					}
					continue
				}
				if i%3 == 1 {
					body := build(fmt.Sprintf("build %d of round %d", i, round))
					rel, err := c.Deploy(ctx, api.DeployRequest{App: "hello", Body: bytes.NewReader(body), Source: "cli"}, nil)
					if err != nil {
						return // the agent is gone
					}
					deployed = append(deployed, rel.Build)
					continue
				}
				key := fmt.Sprintf("K%d_%d", round, i)
				if _, err := c.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{key: "1"}}, nil); err != nil {
					return
				}
				keys = append(keys, key)
			}
		}()
		time.Sleep(time.Duration(100+rand.IntN(1400)) * time.Millisecond)
		if err := child.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		child.Wait()
		<-done
		acked = append(acked, keys...)
		deploys += len(deployed)
		c.Close()
	}
	if len(acked) == 0 {
		t.Fatalf("no config change was acknowledged in 5 rounds; the test proves nothing\n%s", childLog())
	}

	// The last word goes to an agent in this process.
	ta := startAgent(t, cfg)
	check(5, ta)
	rels, err := ta.Releases(ctx, "hello")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d acknowledged config changes and %d deploys over 5 kills; %d releases", len(acked), deploys, len(rels))
}

// TestAgent_KillsStrays ensures an agent at start kills an app process of
// its data dir that no record names (a previous agent died between
// starting and recording it), with the rest of its process group, and
// leaves alone a look-alike of another data dir.
func TestAgent_KillsStrays(t *testing.T) {
	cfg := testConfig(dataDir(t))
	start := func(tmp string) *exec.Cmd {
		// A shell with a child in its group, as a Procfile command has.
		cmd := exec.Command("/bin/sh", "-c", "sleep 1000 & wait")
		cmd.Env = []string{"PATH=/usr/bin:/bin", "BERTH_APP=hello", "BERTH_RELEASE=v3", "TMPDIR=" + tmp}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			cmd.Wait()
		})
		return cmd
	}
	stray := start(filepath.Join(cfg.DataDir, "apps", "hello", "tmp"))
	other := start(filepath.Join(filepath.Dir(cfg.DataDir), "other-data", "apps", "hello", "tmp"))
	waitFor(t, 10*time.Second, "the sleeps to start", func() bool {
		return procfs.AnyInGroup(stray.Process.Pid, func(pid int, st procfs.Stat) bool { return pid != stray.Process.Pid }) &&
			procfs.AnyInGroup(other.Process.Pid, func(pid int, st procfs.Stat) bool { return pid != other.Process.Pid })
	})
	startAgent(t, cfg)
	// The stray is a child of this process in a group of its own, so the
	// agent's reaper (in this process) may collect it before stray.Wait
	// would: wait for its group to be gone instead of for its status.
	waitFor(t, 10*time.Second, "the stray of this data dir and its child to be killed", func() bool {
		return !procfs.GroupAlive(stray.Process.Pid)
	})
	if !procfs.GroupAlive(other.Process.Pid) {
		t.Error("the process of another data dir was killed")
	}
}
