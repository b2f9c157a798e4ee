//go:build e2e_load

package load

import (
	"bytes"
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
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/e2e/e2eutil"
)

// harness is a real agent (bin/berth agent) on a temp data dir and socket.
type harness struct {
	t       *testing.T
	berth   string // absolute path of bin/berth
	socket  string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd.Wait returned
	pids    map[int]bool  // app pids seen in ps, killed at cleanup if still alive
}

// binaries returns bin/berth and bin/hello.tar.gz, which `make e2e-load`
// builds first.
func binaries(t *testing.T) (berth, hello string) {
	t.Helper()
	return artifact(t, "berth"), artifact(t, "hello.tar.gz")
}

// artifact returns bin/<name>, failing the test when it was not built.
func artifact(t *testing.T, name string) string {
	t.Helper()
	f := filepath.Join(e2eutil.RepoRoot(t), "bin", name)
	if _, err := os.Stat(f); err != nil {
		t.Fatalf("%v: run `make e2e-load`, which builds bin/berth and bin/hello.tar.gz first", err)
	}
	return f
}

// basePort returns the first of a run of free ports below the ephemeral
// range, so that no client connection can take an app's port while a
// stop-then-start switch leaves it unbound. LOAD_BASE_PORT overrides it.
func basePort(t *testing.T) int {
	t.Helper()
	if v := os.Getenv("LOAD_BASE_PORT"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p <= 0 || p > 65000 {
			t.Fatalf("invalid LOAD_BASE_PORT %q", v)
		}
		return p
	}
	for range 100 {
		base := 20000 + rand.IntN(10000)
		free := true
		for p := base; p < base+8 && free; p++ {
			ln, err := net.Listen("tcp", ":"+strconv.Itoa(p))
			if err != nil {
				free = false
				continue
			}
			ln.Close()
		}
		if free {
			return base
		}
	}
	t.Fatal("no run of 8 free ports found between 20000 and 30000")
	return 0
}

// startAgent runs `berth agent` with extra flags and waits (bounded) until
// its socket answers.
func startAgent(t *testing.T, berth string, flags ...string) *harness {
	t.Helper()
	dir, err := os.MkdirTemp("", "berth-load-") // short: sun_path is 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Apps run as an unprivileged user when the agent is root: they must
	// reach their build dir below the data dir.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h := &harness{
		t:       t,
		berth:   berth,
		socket:  filepath.Join(dir, "berth.sock"),
		logPath: filepath.Join(dir, "agent.log"),
		exited:  make(chan struct{}),
		pids:    map[int]bool{},
	}
	logf, err := os.Create(h.logPath)
	if err != nil {
		t.Fatal(err)
	}
	port := basePort(t)
	args := append([]string{"agent", "--data-dir", filepath.Join(dir, "data"), "--socket", h.socket, "--base-port", strconv.Itoa(port)}, flags...)
	h.cmd = exec.Command(berth, args...)
	h.cmd.Env = e2eutil.CleanEnv()
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	logf.Close()
	go func() {
		h.cmd.Wait()
		close(h.exited)
	}()
	t.Cleanup(h.stop)
	t.Logf("agent pid %d, data %s, base port %d", h.cmd.Process.Pid, dir, port)

	deadline := time.After(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := h.cli(ctx, "version")
		cancel()
		if err == nil {
			return h
		}
		select {
		case <-h.exited:
			t.Fatalf("agent exited before serving its socket (%v):\n%s", h.cmd.ProcessState, h.logTail(40))
		case <-deadline:
			t.Fatalf("agent did not answer on %s within 30s: %v\n%s", h.socket, err, h.logTail(40))
		case <-time.After(50 * time.Millisecond): // next poll of a bounded condition
		}
	}
}

// cli runs bin/berth against the harness's socket and returns its stdout;
// the error carries stderr.
func (h *harness) cli(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, h.berth, args...)
	cmd.Env = append(e2eutil.CleanEnv(), "BERTH_SOCKET="+h.socket)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("berth %s: %v: %s%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.String(), nil
}

// processes returns `berth ps --json -a app`.
func (h *harness) processes(app string) ([]api.Process, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := h.cli(ctx, "ps", "--json", "-a", app)
	if err != nil {
		return nil, err
	}
	var procs []api.Process
	if err := json.Unmarshal([]byte(out), &procs); err != nil {
		var wrapped struct{ Processes []api.Process }
		if err2 := json.Unmarshal([]byte(out), &wrapped); err2 != nil {
			return nil, fmt.Errorf("ps --json: %v: %q", err, out)
		}
		procs = wrapped.Processes
	}
	for _, p := range procs {
		if p.PID > 0 {
			h.pids[p.PID] = true
		}
	}
	return procs, nil
}

// web returns the app's running web.1 (bounded wait until it runs).
func (h *harness) web(app string) (api.Process, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		procs, err := h.processes(app)
		if err != nil {
			return api.Process{}, err
		}
		for _, p := range procs {
			if p.Instance == "web.1" && p.State == "running" && p.Port > 0 {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			return api.Process{}, fmt.Errorf("%s has no running web.1 after 60s: %+v", app, procs)
		}
		select {
		case <-h.exited:
			return api.Process{}, errors.New("agent exited")
		case <-time.After(100 * time.Millisecond): // next poll of a bounded condition
		}
	}
}

// logText returns the agent's whole log.
func (h *harness) logText() string {
	b, _ := os.ReadFile(h.logPath)
	return string(b)
}

// grepLines returns the lines of text that contain s.
func grepLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// logTail returns the last n lines of the agent's log.
func (h *harness) logTail(n int) string {
	b, _ := os.ReadFile(h.logPath)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stop sends the agent SIGTERM (it stops its apps), waits up to 60s, then
// kills its process group; app processes seen in ps that are still alive
// after that are killed by pid and reported.
func (h *harness) stop() {
	select {
	case <-h.exited:
	default:
		h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-h.exited:
		case <-time.After(60 * time.Second):
			h.t.Errorf("agent did not stop within 60s of SIGTERM:\n%s", h.logTail(30))
			syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
			<-h.exited
		}
	}
	if st := h.cmd.ProcessState; st != nil && !st.Success() && !h.t.Failed() {
		h.t.Errorf("agent exit after SIGTERM: %v\n%s", st, h.logTail(30))
	}
	for pid := range h.pids {
		if syscall.Kill(pid, 0) == nil && !isZombie(pid) && ownedByAgentRun(pid) {
			h.t.Errorf("app process %d outlived the agent", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// isZombie reports whether pid is a zombie (reaped later by init).
func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// ownedByAgentRun reports whether pid still runs the hello binary, so that
// a pid reused by an unrelated process is never killed.
func ownedByAgentRun(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && strings.HasSuffix(strings.TrimSuffix(exe, " (deleted)"), "/hello")
}
