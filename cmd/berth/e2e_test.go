package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
)

// The end-to-end tests run the real berth binary: an agent as a child
// process with a temp data dir and socket, and the CLI against it. The
// app is a shell one-liner that prints its release and $FOO, then sleeps.

const webCmd = `exec sh -c 'echo "release=$BERTH_RELEASE FOO=$FOO"; exec sleep 1000'`

// appTarball returns a .tar.gz with the given files at its root.
func appTarball(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, name := range sortedKeys(files) {
		body := files[name]
		hdr := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(1700000000, 0), Typeflag: tar.TypeReg}
		if strings.HasSuffix(name, ".sh") {
			hdr.Mode = 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// writeFile writes b to dir/name and returns the path.
func writeFile(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// lockedBuffer collects a child's output safely.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// e2e is one test's world: a data dir, a socket, and the agent running on
// them (restartable).
type e2e struct {
	t     testing.TB
	bin   string
	dir   string // 0755 temp dir holding data/, the socket and tarballs
	data  string
	sock  string
	port  int
	agent *agentProc
	// env is added to the environment of the agent and the CLI.
	env []string
}

type agentProc struct {
	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan error
}

func newE2E(t testing.TB) *e2e {
	t.Helper()
	bin := berthBinary(t)
	dir, err := os.MkdirTemp("", "be")
	if err != nil {
		t.Fatal(err)
	}
	// Apps run as their own uids: they must reach their builds under the data dir.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e := &e2e{t: t, bin: bin, dir: dir, data: filepath.Join(dir, "data"), sock: filepath.Join(dir, "s.sock"), port: freePortRange(t)}
	t.Cleanup(func() {
		if e.agent != nil {
			e.agent.cmd.Process.Kill()
			<-e.agent.done
		}
		e.killApps()
		os.RemoveAll(dir)
	})
	return e
}

// freePortRange returns a base port with some free ports above it. The
// bases are drawn below the kernel's ephemeral range (32768 and up), where
// other suites' client connections would take ports at random.
func freePortRange(t testing.TB) int {
	t.Helper()
	for range 100 {
		base := 15000 + rand.IntN(15000)
		ok := true
		for p := base; ok && p < base+40; p++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free port range")
	return 0
}

// startAgent starts `berth agent` and waits until it answers on the socket.
func (e *e2e) startAgent(extra ...string) {
	e.t.Helper()
	p := e.spawnAgent(extra...)
	deadline := time.Now().Add(30 * time.Second)
	c := api.NewClient(e.sock)
	defer c.Close()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Info(ctx)
		cancel()
		if err == nil {
			break
		}
		select {
		case werr := <-p.done:
			e.t.Fatalf("agent exited before serving: %v\n%s", werr, p.log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("agent does not answer on %s: %v\n%s", e.sock, err, p.log)
		}
	}
	e.agent = p
}

func (e *e2e) spawnAgent(extra ...string) *agentProc {
	e.t.Helper()
	args := append([]string{"agent", "--data-dir", e.data, "--socket", e.sock, "--base-port", strconv.Itoa(e.port),
		"--stop-timeout", "2s", "--lock-timeout", "300ms", "--inbox-quiet", "200ms", "--log-level", "debug",
		"--settle", "300ms", "--probation", "300ms"}, extra...)
	cmd := exec.Command(e.bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, e.env...)
	log := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, log: log, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	return p
}

// stopAgent sends SIGTERM and checks that the agent exits 0.
func (e *e2e) stopAgent() {
	e.t.Helper()
	p := e.agent
	e.agent = nil
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			e.t.Fatalf("agent exited with %v after SIGTERM\n%s", err, p.log)
		}
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		e.t.Fatalf("agent did not exit within 30s of SIGTERM\n%s", p.log)
	}
}

// killAgent kills the agent with SIGKILL, leaving its apps behind.
func (e *e2e) killAgent() {
	e.t.Helper()
	p := e.agent
	e.agent = nil
	p.cmd.Process.Kill()
	<-p.done
}

// berth runs the CLI against the agent and returns stdout, stderr and the
// exit code.
func (e *e2e) berth(args ...string) (string, string, int) {
	e.t.Helper()
	return e.berthAs(nil, args...)
}

func (e *e2e) berthAs(cred *syscall.Credential, args ...string) (string, string, int) {
	e.t.Helper()
	cmd := exec.Command(e.bin, args...)
	cmd.Env = append([]string{"BERTH_SOCKET=" + e.sock, "PATH=" + os.Getenv("PATH")}, e.env...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		e.t.Fatalf("berth %s: %v", strings.Join(args, " "), err)
	}
	return stdout.String(), stderr.String(), code
}

// follower is a `berth logs -f` or `berth events -f` running in the
// background.
type follower struct {
	t    testing.TB
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

// follow starts a following command; it must be ended with interrupt.
func (e *e2e) follow(args ...string) *follower {
	e.t.Helper()
	cmd := exec.Command(e.bin, args...)
	cmd.Env = append([]string{"BERTH_SOCKET=" + e.sock, "PATH=" + os.Getenv("PATH")}, e.env...)
	f := &follower{t: e.t, cmd: cmd, out: &lockedBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = f.out, f.out
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { f.done <- cmd.Wait() }()
	e.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-f.done
		}
	})
	return f
}

// interrupt sends SIGINT, as Ctrl-C would, and checks that the command
// ends with exit code 0.
func (f *follower) interrupt() {
	f.t.Helper()
	f.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-f.done:
		if err != nil {
			f.t.Errorf("berth %s after SIGINT: %v\n%s", strings.Join(f.cmd.Args[1:], " "), err, f.out)
		}
	case <-time.After(10 * time.Second):
		f.t.Errorf("berth %s ignored SIGINT", strings.Join(f.cmd.Args[1:], " "))
		f.cmd.Process.Kill()
		<-f.done
	}
}

// ok runs the CLI and fails the test unless it exits 0.
func (e *e2e) ok(args ...string) string {
	e.t.Helper()
	out, errOut, code := e.berth(args...)
	if code != 0 {
		e.t.Fatalf("berth %s: exit %d\n%s%s\nagent log:\n%s", strings.Join(args, " "), code, out, errOut, e.agentLog())
	}
	return out
}

func (e *e2e) agentLog() string {
	if e.agent == nil {
		return "(agent not running)"
	}
	return e.agent.log.String()
}

// ps returns the app's processes as the CLI's --json shows them.
func (e *e2e) ps(app string) []api.Process {
	e.t.Helper()
	var procs []api.Process
	if err := json.Unmarshal([]byte(e.ok("ps", "-a", app, "--json")), &procs); err != nil {
		e.t.Fatal(err)
	}
	return procs
}

// waitFor polls cond (bounded) until it holds.
func (e *e2e) waitFor(what string, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s; last state:\n%s\nagent log:\n%s", what, state, e.agentLog())
		}
		time.Sleep(50 * time.Millisecond) // bounded poll of a condition
	}
}

// running waits until the app has exactly n running instances of type
// web on release v, and returns them.
func (e *e2e) running(app string, n, v int) []api.Process {
	e.t.Helper()
	var procs []api.Process
	e.waitFor(fmt.Sprintf("%d web instances of %s running v%d", n, app, v), func() (bool, string) {
		procs = e.ps(app)
		count := 0
		for _, p := range procs {
			if p.State == "running" && p.Release == v && p.PID > 0 {
				count++
			}
		}
		return count == n && len(procs) == n, fmt.Sprintf("%+v", procs)
	})
	return procs
}

// appProcs returns the live processes (not zombies) whose environment has
// BERTH_APP=app, mapped to their BERTH_RELEASE.
func appProcs(app string) map[int]string {
	out := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil || !bytes.Contains(env, []byte("BERTH_APP="+app+"\x00")) {
			continue
		}
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if i := bytes.LastIndexByte(stat, ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
				continue
			}
		}
		rel := ""
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte("BERTH_RELEASE=")); ok {
				rel = string(v)
			}
		}
		out[pid] = rel
	}
	return out
}

// killApps kills what is left of this test's apps (after a failure).
func (e *e2e) killApps() {
	for _, app := range []string{e2eApp, e2eApp + "-inbox"} {
		for pid := range appProcs(app) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// e2eApp is the app name of this test run, unique on the host so /proc
// scans do not see other tests' apps.
var e2eApp = fmt.Sprintf("e2e-%d", os.Getpid())

func grepLogs(e *e2e, app, text string) func() (bool, string) {
	return func() (bool, string) {
		out, errOut, _ := e.berth("logs", "-a", app, "-n", "50")
		return strings.Contains(out, text), out + errOut
	}
}

// TestE2E drives the real binary through an app's life: deploy, config,
// rollback, scale, restart, logs, events, the failure cases, an inbox
// deploy, and a kill -9 of the agent.
func TestE2E(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatalf("the end-to-end test runs apps as nobody and must run as root; euid %d", os.Geteuid())
	}
	e := newE2E(t)
	app := e2eApp
	good := writeFile(t, e.dir, "good.tar.gz", appTarball(t, map[string]string{
		"Procfile": "web: " + webCmd + "\nrelease: echo migrating $BERTH_RELEASE\n",
	}))
	e.startAgent()

	step := time.Now()
	logStep := func(name string) {
		t.Logf("%-28s %s", name, time.Since(step).Round(time.Millisecond))
		step = time.Now()
	}

	// Deploy: creates the app, prints the release, and its process runs.
	out := e.ok("deploy", "-a", app, good)
	if !strings.Contains(out, "Released "+app+" v1") || !strings.Contains(out, "release-phase") {
		t.Fatalf("deploy output:\n%s", out)
	}
	v1 := e.running(app, 1, 1)
	e.waitFor("v1's output in the logs", grepLogs(e, app, "release=v1 FOO="))

	logStep("deploy")

	// Config set: a new release, processes restarted, new env visible.
	e.ok("config", "set", "-a", app, "FOO=bar")
	v2 := e.running(app, 1, 2)
	if v2[0].PID == v1[0].PID {
		t.Errorf("config set did not restart web.1 (pid %d)", v1[0].PID)
	}
	e.waitFor("the new config in the logs", grepLogs(e, app, "release=v2 FOO=bar"))
	if got := strings.TrimSpace(e.ok("config", "get", "-a", app, "FOO")); got != "bar" {
		t.Errorf("config get FOO = %q", got)
	}

	logStep("config set")

	// Rollback (to the release before the active one): v1's config again.
	out = e.ok("rollback", "-a", app)
	if !strings.Contains(out, "Released "+app+" v3") {
		t.Errorf("rollback output:\n%s", out)
	}
	e.running(app, 1, 3)
	if cfg := strings.TrimSpace(e.ok("config", "-a", app, "--json")); cfg != "{}" {
		t.Errorf("config after rollback = %s, want {}", cfg)
	}
	e.waitFor("the rolled-back config in the logs", grepLogs(e, app, "release=v3 FOO=\n"))

	logStep("rollback")

	// Scale up and down without touching the instance that stays.
	procs := e.ps(app)
	e.ok("scale", "-a", app, "web=3")
	up := e.running(app, 3, 3)
	if up[0].PID != procs[0].PID {
		t.Errorf("scale up restarted web.1: pid %d -> %d", procs[0].PID, up[0].PID)
	}
	e.ok("scale", "-a", app, "web=1")
	down := e.running(app, 1, 3)
	if down[0].PID != procs[0].PID {
		t.Errorf("scale down restarted web.1: pid %d -> %d", procs[0].PID, down[0].PID)
	}
	e.waitFor("exactly one process left after scaling down", func() (bool, string) {
		live := appProcs(app)
		return len(live) == 1, fmt.Sprint(live)
	})

	logStep("scale")

	// Follow the logs and the events while web.1 restarts.
	// Each prints its last line first, which shows it is connected.
	logsF := e.follow("logs", "-f", "-n", "1", "-a", app)
	eventsF := e.follow("events", "-f", "-n", "1", "-a", app)
	for _, f := range []*follower{logsF, eventsF} {
		e.waitFor("the follower's first line", func() (bool, string) {
			out := f.out.String()
			return strings.Count(out, "\n") >= 1, out
		})
	}
	logsBefore := logsF.out.String()

	// Restart one instance: a new pid on the same release.
	e.ok("restart", "-a", app, "web.1")
	e.waitFor("web.1 restarted", func() (bool, string) {
		p := e.ps(app)
		return len(p) == 1 && p[0].State == "running" && p[0].PID != down[0].PID && p[0].PID > 0, fmt.Sprintf("%+v", p)
	})
	current := e.running(app, 1, 3)
	e.waitFor("the restarted instance's line in logs -f", func() (bool, string) {
		out := strings.TrimPrefix(logsF.out.String(), logsBefore)
		return strings.Contains(out, "web.1@v3: release=v3 FOO="), out
	})
	e.waitFor("the restart in events -f", func() (bool, string) {
		out := eventsF.out.String()
		return strings.Contains(out, "restart"), out
	})
	logsF.interrupt()
	eventsF.interrupt()

	logStep("restart")

	// A failing release phase: refused, marked failed, old release runs on.
	bad := writeFile(t, e.dir, "bad.tar.gz", appTarball(t, map[string]string{
		"Procfile": "web: " + webCmd + "\nrelease: echo cannot migrate; exit 3\n",
	}))
	out, errOut, code := e.berth("deploy", "-a", app, bad)
	if code != 1 || !strings.Contains(errOut, "release phase") {
		t.Errorf("deploy with a failing release phase: exit %d\n%s%s", code, out, errOut)
	}
	var rels []api.Release
	json.Unmarshal([]byte(e.ok("releases", "-a", app, "--json")), &rels)
	if len(rels) != 4 || rels[0].Version != 4 || rels[0].Status != "failed" || rels[1].Status != "active" {
		t.Errorf("releases after the failed deploy: %+v", rels)
	}
	if info := e.ok("releases", "info", "v4", "-a", app); !strings.Contains(info, "cannot migrate") {
		t.Errorf("releases info v4 lacks the release phase's output:\n%s", info)
	}
	if p := e.running(app, 1, 3); p[0].PID != current[0].PID {
		t.Errorf("a failed release restarted web.1: pid %d -> %d", current[0].PID, p[0].PID)
	}

	logStep("failing release phase")

	// A corrupt tarball: refused, nothing changes.
	corrupt := writeFile(t, e.dir, "corrupt.tar.gz", append([]byte{0x1f, 0x8b, 8, 0}, bytes.Repeat([]byte("junk"), 100)...))
	if out, errOut, code := e.berth("deploy", "-a", app, corrupt); code != 1 || errOut == "" {
		t.Errorf("corrupt tarball: exit %d\n%s%s", code, out, errOut)
	}
	if p := e.running(app, 1, 3); p[0].PID != current[0].PID {
		t.Errorf("a corrupt tarball restarted web.1")
	}

	logStep("corrupt tarball")

	// An unknown app: 404 from the agent, exit 1.
	if _, errOut, code := e.berth("ps", "-a", "no-such-app"); code != 1 || !strings.Contains(errOut, "not found") || !strings.Contains(errOut, "no-such-app") {
		t.Errorf("unknown app: exit %d, %s", code, errOut)
	}

	logStep("unknown app")

	// Events: the history of all of the above.
	events := e.ok("events", "-a", app, "-n", "100")
	for _, kind := range []string{"deploy", "config", "rollback", "scale"} {
		if !strings.Contains(events, kind) {
			t.Errorf("events lack %q:\n%s", kind, events)
		}
	}

	logStep("events")

	// A second agent on the same data dir is refused with a clear message.
	second := e.spawnAgent("--socket", filepath.Join(e.dir, "s2.sock"))
	select {
	case err := <-second.done:
		if err == nil || !strings.Contains(second.log.String(), "in use by another berth agent") {
			t.Errorf("second agent: %v\n%s", err, second.log)
		}
	case <-time.After(30 * time.Second):
		second.cmd.Process.Kill()
		<-second.done
		t.Errorf("a second agent on the same data dir kept running")
	}

	logStep("second agent")

	// A peer that is neither root nor in the socket's group is refused:
	// by the socket's mode, and by SO_PEERCRED when the mode would let it in.
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	if _, errOut, code := e.berthAs(nobody, "apps"); code != 1 || !strings.Contains(errOut, "permission denied") {
		t.Errorf("berth apps as nobody: exit %d, %s", code, errOut)
	}
	if err := os.Chmod(e.sock, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := e.berthAs(nobody, "apps"); code != 1 || !strings.Contains(errOut, "uid 65534 is not root") {
		t.Errorf("berth apps as nobody on a 0666 socket: exit %d, %s", code, errOut)
	}
	if err := os.Chmod(e.sock, 0o660); err != nil {
		t.Fatal(err)
	}

	logStep("unauthorized peer")

	// The inbox: a tarball renamed into it is deployed and moved to .done.
	inboxApp := app + "-inbox"
	tmp := writeFile(t, e.data, "inbox-upload.tmp", appTarball(t, map[string]string{"Procfile": "web: " + webCmd + "\n"}))
	if err := os.Rename(tmp, filepath.Join(e.data, "inbox", inboxApp+".tar.gz")); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the inbox deploy", func() (bool, string) {
		p, errOut, code := e.berth("ps", "-a", inboxApp)
		return code == 0 && strings.Contains(p, "running"), p + errOut
	})
	e.waitFor("the inbox file moved to .done", func() (bool, string) {
		_, err := os.Stat(filepath.Join(e.data, "inbox", ".done", inboxApp+".tar.gz"))
		return err == nil, fmt.Sprint(err)
	})

	logStep("inbox")

	// kill -9 of the agent, then a restart: exactly one set of processes,
	// on the active release.
	e.killAgent()
	if live := appProcs(app); len(live) != 1 {
		t.Logf("after kill -9, %d processes of %s are left (the new agent must clean up)", len(live), app)
	}
	e.startAgent()
	e.running(app, 1, 3)
	e.waitFor("one set of processes on v3 after the restart", func() (bool, string) {
		live := appProcs(app)
		if len(live) != 1 {
			return false, fmt.Sprint(live)
		}
		for _, rel := range live {
			return rel == "v3", fmt.Sprint(live)
		}
		return false, ""
	})
	e.running(inboxApp, 1, 1)

	logStep("kill -9 and restart")

	// SIGTERM: the agent stops every app process and exits 0.
	e.stopAgent()
	if live := appProcs(app); len(live) != 0 {
		t.Errorf("processes of %s left after the agent stopped: %v", app, live)
	}
	if live := appProcs(inboxApp); len(live) != 0 {
		t.Errorf("processes of %s left after the agent stopped: %v", inboxApp, live)
	}
	logStep("SIGTERM")
}

// TestE2E_Hangup ensures SIGHUP reloads `berth agent` and ends any other
// command: `berth events -f` whose terminal closes must not follow on.
func TestE2E_Hangup(t *testing.T) {
	e := newE2E(t)
	e.startAgent()

	// The table's header shows the follower is past the start of
	// realMain, where SIGHUP used to be subscribed for every command.
	f := e.follow("events", "-f", "-n", "1")
	e.waitFor("the follower's header", func() (bool, string) {
		out := f.out.String()
		return strings.Contains(out, "SEQ"), out
	})
	f.cmd.Process.Signal(syscall.SIGHUP)
	select {
	case err := <-f.done:
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGHUP {
			t.Errorf("berth events -f after SIGHUP: %v, want killed by SIGHUP\n%s", err, f.out)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("berth events -f survived SIGHUP\n%s", f.out)
		f.cmd.Process.Kill()
		<-f.done
	}

	// The agent reloads and keeps serving.
	e.agent.cmd.Process.Signal(syscall.SIGHUP)
	e.waitFor("the agent's reload", func() (bool, string) {
		log := e.agent.log.String()
		return strings.Contains(log, "reloading settings (SIGHUP)"), log
	})
	e.ok("apps")
	e.stopAgent()
}
