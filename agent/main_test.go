package agent

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/internal/procfs"
	"github.com/berth-dev/berth/supervisor"
)

// helperEnv makes the test binary run an agent instead of the tests (see
// runHelperAgent): the recovery test kills such an agent with SIGKILL.
const helperEnv = "BERTH_AGENT_TEST_HELPER"

// helperSteerEnv, set, turns steering on in the helper agent, with its
// value as the pin directory ("-": not pinned).
const helperSteerEnv = "BERTH_AGENT_TEST_STEER"

// helperPortEnv is the helper agent's base port.
const helperPortEnv = "BERTH_AGENT_TEST_BASE_PORT"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		os.Exit(runHelperAgent(dir, os.Getenv("BERTH_AGENT_TEST_SOCKET")))
	}
	goleak.VerifyTestMain(withCleanup{m})
}

// withCleanup removes what the tests built once for the whole binary
// (the hello example) after they ran.
type withCleanup struct{ m *testing.M }

func (w withCleanup) Run() int {
	code := w.m.Run()
	if helloDir != "" {
		os.RemoveAll(helloDir)
	}
	return code
}

// runHelperAgent runs an agent on dir until SIGTERM/SIGINT.
func runHelperAgent(dir, socket string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cfg := testConfig(dir)
	if p, err := strconv.Atoi(os.Getenv(helperPortEnv)); err == nil {
		cfg.BasePort = p
	}
	if socket != "" {
		cfg.SocketPath = socket
		cfg.NoSocket = false
	}
	if pin := os.Getenv(helperSteerEnv); pin != "" {
		cfg.NoSteer, cfg.SteerPin = false, pin
	}
	a, err := New(cfg, hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Info}))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// SIGUSR2 upgrades in place, as `berth agent` does: the agent hands
	// its apps over and re-executes this binary, which runs the helper
	// agent again (its environment is kept).
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	upgradeDone := make(chan struct{})
	go func() {
		defer close(upgradeDone)
		select {
		case <-usr2:
			if err := a.Upgrade(); err != nil {
				fmt.Fprintln(os.Stderr, err)
			}
		case <-ctx.Done():
		}
	}()
	err = a.Run(ctx)
	stop()
	<-upgradeDone
	if err == nil {
		err = a.Exec() // returns only on failure, or without an upgrade
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// testConfig is an agent configuration with small timings.
func testConfig(dir string) Config {
	return Config{
		DataDir:      dir,
		SocketPath:   filepath.Join(dir, "s.sock"),
		StopTimeout:  2 * time.Second,
		LockTimeout:  100 * time.Millisecond,
		Backoff:      supervisor.Backoff{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond, Settle: 300 * time.Millisecond},
		StartTimeout: 15 * time.Second,
		Probation:    200 * time.Millisecond,
		InboxQuiet:   150 * time.Millisecond,
		NoSocket:     true,
		Version:      "test",
		// Today's switching, as where steering is unavailable; the tests
		// of steering (steer_test.go) turn it on.
		NoSteer: true,
	}
}

func testLogger() hclog.Logger {
	if os.Getenv("BERTH_TEST_LOG") != "" {
		return hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Debug})
	}
	return hclog.NewNullLogger()
}

// dataDir returns a data dir that app users (nobody) can traverse: the
// temp dirs the testing package makes are 0700.
func dataDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "data")
}

// testAgent is an agent running in this process.
type testAgent struct {
	*Agent
	cfg  Config
	stop func() error
}

// startAgent runs an agent until the test ends.
func startAgent(t *testing.T, cfg Config) *testAgent {
	t.Helper()
	a, err := New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case <-a.up:
	case err := <-done:
		cancel()
		t.Fatalf("agent stopped at start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("agent not ready after 30s")
	}
	stopped := false
	var runErr error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = <-done
		}
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("agent Run: %v", err)
		}
	})
	return &testAgent{Agent: a, cfg: a.config(), stop: stop}
}

// tarball builds a release tarball (tar.gz) from name -> content; names
// ending in .sh are executable.
func tarball(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, content := range files {
		mode := int64(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(content)), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// webProcfile is the app most tests deploy: it prints its env and waits.
const webProcfile = `web: echo "rel=$BERTH_RELEASE FOO=$FOO port=$PORT"; exec sleep 1000` + "\n"

// webApp is the web app with extra Procfile lines.
func webApp(t testing.TB, extra string) []byte {
	return tarball(t, map[string]string{"Procfile": webProcfile + extra, "README": extra})
}

// webBuild is the web app with a distinct README, so each marker makes a
// distinct build.
func webBuild(t testing.TB, marker string) []byte {
	return tarball(t, map[string]string{"Procfile": webProcfile, "README": marker})
}

// deploy deploys a tarball body and returns the release and the steps.
func (ta *testAgent) deploy(t *testing.T, app string, body []byte) (api.Release, []api.Progress, error) {
	t.Helper()
	var steps []api.Progress
	// Through probation: a deploy of the tests is over once it returns.
	rel, err := ta.Deploy(api.WithProbationWait(context.Background()), api.DeployRequest{App: app, Body: bytes.NewReader(body), Source: "cli"},
		func(p api.Progress) { steps = append(steps, p) })
	return rel, steps, err
}

func (ta *testAgent) mustDeploy(t *testing.T, app string, body []byte) api.Release {
	t.Helper()
	rel, _, err := ta.deploy(t, app, body)
	if err != nil {
		t.Fatalf("deploy %s: %v", app, err)
	}
	return rel
}

// procs returns the app's processes by instance.
func (ta *testAgent) procs(t *testing.T, app string) map[string]api.Process {
	t.Helper()
	ps, err := ta.Processes(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]api.Process{}
	for _, p := range ps {
		out[p.Instance] = p
	}
	return out
}

// waitFor polls cond (a bounded poll of a condition) until it holds.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitLog waits until the app's logs hold a line containing text.
func (ta *testAgent) waitLog(t *testing.T, app, instance, text string) {
	t.Helper()
	var last []api.LogLine
	deadline := time.Now().Add(10 * time.Second)
	for {
		lines, err := ta.Logs(context.Background(), app, api.LogQuery{Instance: instance})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range lines {
			if strings.Contains(l.Text, text) {
				return
			}
		}
		last = lines
		if time.Now().After(deadline) {
			t.Fatalf("no log line of %s %s contains %q; lines: %+v", app, instance, text, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// appProcs finds the live processes on this host whose environment says
// they belong to app and that run in a build under dataDir (other agents
// may run on this machine), by pid, with their BERTH_RELEASE.
func appProcs(t *testing.T, dataDir, app string) map[int]string {
	t.Helper()
	out := map[int]string{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := procfs.ReadStat(pid)
		if err != nil || st.State == 'Z' {
			continue
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err != nil || !strings.HasPrefix(cwd, dataDir+"/") {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			continue
		}
		vars := strings.Split(string(env), "\x00")
		isApp, rel := false, ""
		for _, v := range vars {
			if v == "BERTH_APP="+app {
				isApp = true
			}
			if r, ok := strings.CutPrefix(v, "BERTH_RELEASE="); ok {
				rel = r
			}
		}
		if isApp {
			out[pid] = rel
		}
	}
	return out
}

// procEnv reads a process's environment.
func procEnv(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

func wantKind(t *testing.T, err, kind error) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", kind)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("got %v, want an error of kind %v", err, kind)
	}
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

func syscallKill(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
