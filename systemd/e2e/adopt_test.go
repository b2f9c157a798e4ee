//go:build e2e_systemd

package e2e

// The cases of issue 14: apps outlive the agent. A socket-activated app
// that prints "tick N" every 10 ms serves a client sending 200 requests
// a second while the agent is killed with SIGKILL, upgraded in place
// (`systemctl reload berth` with a new binary), and while an app crashes
// with no agent running. The client runs inside the container: this test
// binary in client mode.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/agent/e2e/e2eutil"
	"github.com/berth-dev/berth/supervisor"
)

// Client mode: clientEnv holds the port, clientDirEnv the dir of its
// progress file ("served", the count of answered requests, rewritten as
// it grows) and of the stop file ("stop": finish and print the result).
const (
	clientEnv    = "BERTH_E2E_CLIENT_PORT"
	clientDirEnv = "BERTH_E2E_CLIENT_DIR"
	clientRate   = 200 // requests per second
)

// clientResult is what the client prints as JSON when it stops.
type clientResult struct {
	Sent     int      `json:"sent"`
	Failed   int      `json:"failed"`
	MaxGapMS float64  `json:"max_gap_ms"` // longest time between two answered requests
	MaxGapAt string   `json:"max_gap_at"` // when it ended (UTC, container clock = host clock)
	Errors   []string `json:"errors,omitempty"`
}

// runClient sends GET / on a new connection every 1/clientRate s, each
// in its own goroutine (a slow answer does not slow the rate), until the
// stop file appears; then it prints a clientResult.
func runClient() int {
	url := "http://127.0.0.1:" + os.Getenv(clientEnv) + "/"
	dir := os.Getenv(clientDirEnv)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var (
		mu     sync.Mutex
		res    clientResult
		served []time.Time
		wg     sync.WaitGroup
	)
	progress := func(n int) {
		tmp := filepath.Join(dir, "served.tmp")
		os.WriteFile(tmp, []byte(strconv.Itoa(n)), 0o644)
		os.Rename(tmp, filepath.Join(dir, "served"))
	}
	t := time.NewTicker(time.Second / clientRate)
	defer t.Stop()
	for range t.C {
		if _, err := os.Stat(filepath.Join(dir, "stop")); err == nil {
			break
		}
		wg.Go(func() {
			resp, err := hc.Get(url)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %s", resp.Status)
				}
			}
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			res.Sent++
			if err != nil {
				res.Failed++
				if len(res.Errors) < 10 {
					res.Errors = append(res.Errors, now.Format("15:04:05.000")+" "+err.Error())
				}
				return
			}
			served = append(served, now)
			if len(served)%50 == 0 {
				progress(len(served))
			}
		})
	}
	wg.Wait()
	slices.SortFunc(served, func(a, b time.Time) int { return a.Compare(b) })
	for i := 1; i < len(served); i++ {
		if gap := served[i].Sub(served[i-1]); float64(gap)/1e6 > res.MaxGapMS {
			res.MaxGapMS = float64(gap) / 1e6
			res.MaxGapAt = served[i].UTC().Format("15:04:05.000")
		}
	}
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// loadClient is a client running in the container.
type loadClient struct {
	t   *testing.T
	m   *Machine
	dir string // in the container
	cmd *exec.Cmd
	out bytes.Buffer
}

// startClient starts the load client on port in the container and waits
// until it has been answered n times.
func (b berthEnv) startClient(port, n int) *loadClient {
	b.t.Helper()
	c := &loadClient{t: b.t, m: b.m, dir: fmt.Sprintf("/root/client-%d", time.Now().UnixNano())}
	b.m.MustExec("mkdir", "-p", c.dir)
	c.cmd = exec.Command("nsenter", "-t", strconv.Itoa(b.m.PID1), "-a", "--", "/root/e2e-client", "-test.run=^$")
	c.cmd.Env = []string{"PATH=" + containerPath, clientEnv + "=" + strconv.Itoa(port), clientDirEnv + "=" + c.dir}
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	if err := c.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	c.waitServed(n)
	return c
}

// served returns how many requests were answered so far.
func (c *loadClient) served() int {
	data, _ := os.ReadFile(filepath.Join(c.m.Root, c.dir, "served"))
	n, _ := strconv.Atoi(string(data))
	return n
}

// waitServed waits until n requests were answered.
func (c *loadClient) waitServed(n int) {
	c.t.Helper()
	e2eutil.WaitFor(c.t, fmt.Sprintf("the client to be answered %d times", n), 2*time.Minute, func() (bool, string) {
		if c.cmd.ProcessState != nil {
			c.t.Fatalf("client exited: %s", c.out.String())
		}
		got := c.served()
		return got >= n, strconv.Itoa(got)
	})
}

// stop stops the client and returns its result.
func (c *loadClient) stop() clientResult {
	c.t.Helper()
	c.m.WriteFile(filepath.Join(c.dir, "stop"), nil, 0o644)
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			c.t.Fatalf("client: %v\n%s", err, c.out.String())
		}
	case <-time.After(time.Minute):
		c.t.Fatalf("client did not stop\n%s", c.out.String())
	}
	var res clientResult
	if err := json.Unmarshal(c.out.Bytes(), &res); err != nil {
		c.t.Fatalf("client output: %v\n%s", err, c.out.String())
	}
	return res
}

var tickLine = regexp.MustCompile(`tick (\d+)\s*$`)

// checkTicks checks that web.1's log files hold tick 0, 1, 2, ... of
// each process that ran it, each once, and that `berth logs` shows the
// most recent of them in the same order (it reads those files, the lines
// stored by the previous agent and by a process that died included); it
// returns the highest tick of the last process and how many processes
// wrote ticks.
func (b berthEnv) checkTicks(app string) (last, runs int) {
	b.t.Helper()
	// berth logs first: the app goes on writing, so the files read after
	// it hold every line it showed.
	out := b.mustBerth("logs", "-a", app, "-n", "1000", "web.1")
	var shown []int
	for _, line := range strings.Split(out, "\n") {
		if m := tickLine.FindStringSubmatch(line); m != nil {
			shown = append(shown, atoi(m[1]))
		}
	}
	lines, err := supervisor.ReadLogFile(filepath.Join(b.m.Root, "var/lib/berth/apps", app, "logs", "web.1.log"), 0)
	if err != nil {
		b.t.Fatal(err)
	}
	var ticks []int
	for _, l := range lines {
		if m := tickLine.FindStringSubmatch(l.Text); m != nil {
			ticks = append(ticks, atoi(m[1]))
		}
	}
	if len(ticks) == 0 {
		b.t.Fatalf("no tick in the log files of %s web.1", app)
	}
	runs = 1
	// Each process counts from 0: a run per process, each complete.
	next := 0
	for i, n := range ticks {
		if n == 0 && i > 0 {
			runs++
			next = 0
		}
		if n != next {
			b.t.Fatalf("log files: tick %d where tick %d was expected: a line is missing or twice (%d ticks)", n, next, len(ticks))
		}
		next++
	}
	if len(shown) == 0 {
		b.t.Fatalf("berth logs shows no tick:\n%s", e2eutil.Tail(out, 20))
	}
	// berth logs reads the same files: its ticks are a run of theirs, in
	// order, across the processes that wrote them.
	found := false
	for i := 0; i+len(shown) <= len(ticks) && !found; i++ {
		found = slices.Equal(shown, ticks[i:i+len(shown)])
	}
	if !found {
		b.t.Fatalf("berth logs shows %d ticks that are not a run of the %d in the files:\n%s", len(shown), len(ticks), e2eutil.Tail(out, 20))
	}
	return next - 1, runs
}

// webPID returns the one process of app's web.1.
func (b berthEnv) webPID(app string) int {
	b.t.Helper()
	pids := b.m.Procs("BERTH_APP="+app, "BERTH_PROCESS=web.1")
	if len(pids) != 1 {
		b.t.Fatalf("%s web.1 processes: %v, want exactly 1", app, pids)
	}
	return pids[0]
}

var adoptionLine = regexp.MustCompile(`adoption done: adopted=(\d+) records=(\d+) took=(\S+)`)

// adoptionTime returns what the last agent start logged of its adoption.
func (b berthEnv) adoptionTime(since string) string {
	b.t.Helper()
	logs := b.m.MustExec("journalctl", "-u", "berth", "--since", since, "--no-pager", "-o", "cat")
	ms := adoptionLine.FindAllStringSubmatch(logs, -1)
	if len(ms) == 0 {
		b.t.Errorf("the agent logged no adoption since %s:\n%s", since, e2eutil.Tail(logs, 30))
		return "?"
	}
	m := ms[len(ms)-1]
	if m[1] != m[2] {
		b.t.Errorf("adopted %s of %s recorded processes", m[1], m[2])
	}
	return m[3]
}

// upgradeVersion is the version of the binary the upgrade case installs.
const upgradeVersion = "e2e-upgraded"

// buildUpgrade builds berth with another version, as `make build` does.
func buildUpgrade(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "berth")
	cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+upgradeVersion, "-o", out, "./cmd/berth")
	cmd.Dir = e2eutil.RepoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the upgrade: %v\n%s", err, b)
	}
	return out
}

// TestAdopt runs the cases of issue 14 in order on one container.
func TestAdopt(t *testing.T) {
	root := e2eutil.RepoRoot(t)
	bin := filepath.Join(root, "bin", "berth")
	if b := os.Getenv("BERTH_E2E_BINARY"); b != "" {
		bin = b
	}
	tarball := filepath.Join(root, "bin", "hello.tar.gz")
	for _, f := range []string{bin, tarball} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%v (run `make build example`, or `make e2e-systemd`)", err)
		}
	}
	upgrade := buildUpgrade(t)
	m := NewMachine(t, fmt.Sprintf("berth-adopt-%d", os.Getpid()))
	m.CopyIn(bin, "/usr/local/bin/berth", 0o755)
	m.CopyIn(upgrade, "/root/berth-upgraded", 0o755)
	m.CopyIn(os.Args[0], "/root/e2e-client", 0o755)
	// A simple-enough command for socket activation: the shell sets the
	// variable and execs hello, which keeps LISTEN_PID's pid.
	m.WriteFile("/root/ticker.tar.gz", e2eutil.RewriteTarball(t, tarball, "Procfile", func(name string, body []byte) []byte {
		if name == "Procfile" {
			return []byte("web: HELLO_TICK=10ms exec ./hello\n")
		}
		return body
	}), 0o644)
	t.Logf("boot: %s", m.Boot().Round(time.Millisecond))
	b := berthEnv{t: t, m: m}
	const app = "ticker"
	var port int

	// kill9 runs the load while the agent is killed with SIGKILL and
	// systemd restarts it.
	type figures struct {
		failed   int
		maxGap   float64
		adoption string
	}
	report := map[string]figures{}

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"1_install_deploy", func(t *testing.T) {
			b.m.MustExec("/usr/local/bin/berth", "systemd", "install", "--watchdog", watchdog.String(), "--env", agentJournal)
			b.waitAgentRunning("")
			b.mustBerth("deploy", "-a", app, "/root/ticker.tar.gz")
			port = b.webPort(app)
			e2eutil.WaitFor(t, "ticker serves", time.Minute, func() (bool, string) {
				out, err := b.m.Exec("curl", "-sS", "--max-time", "5", "http://127.0.0.1:"+strconv.Itoa(port)+"/")
				return err == nil && strings.HasPrefix(out, "hello from ticker v1"), out
			})
		}},
		{"2_kill9_agent_under_load", func(t *testing.T) {
			pid := b.webPID(app)
			c := b.startClient(port, 200)
			before := b.agentProps()
			since := strings.TrimSpace(b.m.MustExec("date", "+%Y-%m-%d %H:%M:%S"))
			served := c.served()
			killed := time.Now()
			t.Logf("kill -9 of the agent at %s", killed.UTC().Format("15:04:05.000"))
			b.m.MustExec("kill", "-9", before["MainPID"])
			b.waitAgentRunning(before["MainPID"])
			t.Logf("the next agent answered %s after the kill (RestartSec=1s)", time.Since(killed).Round(time.Millisecond))
			c.waitServed(served + 600) // 3 s of load after the agent is back
			res := c.stop()
			f := figures{failed: res.Failed, maxGap: res.MaxGapMS, adoption: b.adoptionTime(since)}
			report["kill -9"] = f
			t.Logf("kill -9 of the agent: %d requests, %d failed, longest gap %.1f ms (ending %s), adoption took %s", res.Sent, res.Failed, res.MaxGapMS, res.MaxGapAt, f.adoption)
			if res.Failed != 0 {
				t.Errorf("%d requests failed: %v", res.Failed, res.Errors)
			}
			if now := b.webPID(app); now != pid {
				t.Errorf("web.1 pid %d -> %d: the app was restarted", pid, now)
			}
			if n, runs := b.checkTicks(app); runs != 1 {
				t.Errorf("ticks of %d processes in the log, want 1", runs)
			} else {
				t.Logf("the log holds tick 0 to %d, each once", n)
			}
		}},
		{"3_upgrade_under_load", func(t *testing.T) {
			pid := b.webPID(app)
			c := b.startClient(port, 200)
			before := b.agentProps()
			since := strings.TrimSpace(b.m.MustExec("date", "+%Y-%m-%d %H:%M:%S"))
			served := c.served()
			// Replace the binary as a package manager would (rename over it).
			b.m.MustExec("cp", "/root/berth-upgraded", "/usr/local/bin/.berth.new")
			b.m.MustExec("mv", "/usr/local/bin/.berth.new", "/usr/local/bin/berth")
			reload := time.Now()
			t.Logf("systemctl reload berth at %s", reload.UTC().Format("15:04:05.000"))
			b.m.MustExec("systemctl", "reload", "berth")
			e2eutil.WaitFor(t, "the upgraded agent answers", time.Minute, func() (bool, string) {
				out, err := b.berth("version")
				return err == nil && strings.Contains(out, "berth agent:  "+upgradeVersion), out
			})
			t.Logf("berth version reports %s %s after systemctl reload", upgradeVersion, time.Since(reload).Round(time.Millisecond))
			c.waitServed(served + 600)
			res := c.stop()
			f := figures{failed: res.Failed, maxGap: res.MaxGapMS, adoption: b.adoptionTime(since)}
			report["upgrade"] = f
			t.Logf("upgrade in place: %d requests, %d failed, longest gap %.1f ms (ending %s), adoption took %s", res.Sent, res.Failed, res.MaxGapMS, res.MaxGapAt, f.adoption)
			if res.Failed != 0 {
				t.Errorf("%d requests failed: %v", res.Failed, res.Errors)
			}
			after := b.agentProps()
			if after["MainPID"] != before["MainPID"] || after["NRestarts"] != before["NRestarts"] {
				t.Errorf("after the reload: %v, want MainPID %s and no restart", after, before["MainPID"])
			}
			if now := b.webPID(app); now != pid {
				t.Errorf("web.1 pid %d -> %d: the app was restarted", pid, now)
			}
			if n, runs := b.checkTicks(app); runs != 1 {
				t.Errorf("ticks of %d processes in the log, want 1", runs)
			} else {
				t.Logf("the log holds tick 0 to %d, each once", n)
			}
		}},
		{"4_crash_while_no_agent", func(t *testing.T) {
			pid := b.webPID(app)
			before := b.agentProps()
			// The agent is killed, then its app, before systemd starts the
			// next agent (RestartSec=1s).
			agent := atoi(before["MainPID"])
			if err := unix.Kill(hostPID(b.m, agent), unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if err := unix.Kill(pid, unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			b.waitAgentRunning(before["MainPID"])
			var now int
			e2eutil.WaitFor(t, "web.1 restarted by the next agent", time.Minute, func() (bool, string) {
				pids := b.m.Procs("BERTH_APP="+app, "BERTH_PROCESS=web.1")
				if len(pids) == 1 && pids[0] != pid {
					now = pids[0]
					return true, ""
				}
				return false, fmt.Sprint(pids)
			})
			b.webPort(app)
			e2eutil.WaitFor(t, "ticker serves again", time.Minute, func() (bool, string) {
				out, err := b.m.Exec("curl", "-sS", "--max-time", "5", "http://127.0.0.1:"+strconv.Itoa(port)+"/")
				return err == nil && strings.HasPrefix(out, "hello from ticker"), out
			})
			t.Logf("web.1 crashed with no agent running (pid %d) and was restarted by the next agent (pid %d), serving %s after the kill",
				pid, now, time.Since(start).Round(time.Millisecond))
			// What the dead process wrote while no agent read was salvaged
			// from its pipes: its ticks are complete, then the new one's.
			if _, runs := b.checkTicks(app); runs != 2 {
				t.Errorf("ticks of %d processes in the log, want 2", runs)
			}
		}},
	}
	for _, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			b.t, m.t = t, t
			s.run(t)
		})
		b.t, m.t = t, t
		if !ok {
			t.Logf("agent journal:\n%s", e2eutil.Tail(must(m.Exec("journalctl", "-u", "berth", "--no-pager", "-n", "80")), 80))
			if !m.running() || !b.isActive() || port == 0 {
				t.FailNow()
			}
		}
	}
	for _, k := range []string{"kill -9", "upgrade"} {
		if f, ok := report[k]; ok {
			fmt.Printf("e2e-systemd adopt: %-8s failed requests %d, longest gap %.1f ms, adoption %s\n", k, f.failed, f.maxGap, f.adoption)
		}
	}
}

// hostPID returns the host pid of a pid in the container's namespace.
func hostPID(m *Machine, nspid int) int {
	for _, pid := range m.Procs() {
		if nsPID(pid) == nspid {
			return pid
		}
	}
	return 0
}
