//go:build e2e_systemd

package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/e2e/e2eutil"
	"github.com/berth-dev/berth/supervisor"
	"golang.org/x/sys/unix"
)

// bootToServing is the measured time from starting the container after a
// reboot until the app answered; TestMain prints it in the summary.
var bootToServing time.Duration

// Settings of the installed unit.
const (
	watchdog       = 5 * time.Second
	agentJournal   = "BERTH_JOURNAL=1"
	forkerProcfile = "web: setsid sh -c 'sleep 1000' & exec sleep 1000\n"
)

// berthEnv is a test's view of a container running berth.
type berthEnv struct {
	t *testing.T
	m *Machine
}

// berth runs the berth CLI in the container.
func (b berthEnv) berth(args ...string) (string, error) {
	return b.m.Exec(append([]string{"/usr/local/bin/berth"}, args...)...)
}

func (b berthEnv) mustBerth(args ...string) string {
	b.t.Helper()
	out, err := b.berth(args...)
	if err != nil {
		b.t.Fatalf("berth %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// ps returns the app's processes as `berth ps --json` shows them.
func (b berthEnv) ps(app string) ([]api.Process, error) {
	out, err := b.berth("ps", "-a", app, "--json")
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, out)
	}
	var ps []api.Process
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		return nil, fmt.Errorf("decode berth ps --json: %w: %s", err, out)
	}
	return ps, nil
}

// releases returns the app's releases as `berth releases --json` shows them.
func (b berthEnv) releases(app string) []api.Release {
	b.t.Helper()
	out := b.mustBerth("releases", "-a", app, "--json")
	var rs []api.Release
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		b.t.Fatalf("decode berth releases --json: %v: %s", err, out)
	}
	return rs
}

// webPort returns the port of the app's web.1 instance.
func (b berthEnv) webPort(app string) int {
	b.t.Helper()
	var port int
	e2eutil.WaitFor(b.t, app+" web.1 has a port", time.Minute, func() (bool, string) {
		ps, err := b.ps(app)
		if err != nil {
			return false, err.Error()
		}
		for _, p := range ps {
			if p.Instance == "web.1" && p.Port > 0 {
				port = p.Port
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", ps)
	})
	return port
}

// waitServing waits until GET / on port answers with the app's release,
// and returns when it did.
func (b berthEnv) waitServing(port int, release int) time.Time {
	b.t.Helper()
	want := fmt.Sprintf("hello from hello v%d ", release)
	e2eutil.WaitFor(b.t, fmt.Sprintf("hello v%d serves on port %d", release, port), 2*time.Minute, func() (bool, string) {
		out, err := b.m.Exec("curl", "-sS", "--max-time", "5", "http://127.0.0.1:"+strconv.Itoa(port)+"/")
		return err == nil && strings.HasPrefix(out, want), fmt.Sprintf("%v %q", err, out)
	})
	return time.Now()
}

// isActive reports whether berth.service is active.
func (b berthEnv) isActive() bool {
	out, _ := b.m.Exec("systemctl", "is-active", "berth")
	return strings.TrimSpace(out) == "active"
}

// agentProps returns berth.service's state, main pid and restart count.
func (b berthEnv) agentProps() map[string]string {
	b.t.Helper()
	return b.m.Props("berth.service", "ActiveState", "SubState", "MainPID", "NRestarts", "Result")
}

// waitAgentRunning waits until berth.service is active (running) with a
// main pid other than old; it returns the new properties.
func (b berthEnv) waitAgentRunning(old string) map[string]string {
	b.t.Helper()
	var props map[string]string
	e2eutil.WaitFor(b.t, "berth.service active (running) with a new main pid", 2*time.Minute, func() (bool, string) {
		props = b.agentProps()
		return props["ActiveState"] == "active" && props["SubState"] == "running" &&
			props["MainPID"] != "0" && props["MainPID"] != old, fmt.Sprint(props)
	})
	if _, err := b.berth("apps"); err != nil {
		b.t.Fatalf("socket does not answer after the agent started: %v", err)
	}
	return props
}

// appProcs returns the host PIDs of the app's processes in the container,
// found by the environment berth gives them.
func (b berthEnv) appProcs(app string) []int {
	return b.m.Procs("BERTH_APP=" + app)
}

// checkOneSet checks that exactly one process runs web.1 of hello, of the
// given release, and that it sits in its own cgroup below the agent's.
func (b berthEnv) checkOneSet(release int) {
	b.t.Helper()
	pids := b.m.Procs("BERTH_APP=hello", "BERTH_PROCESS=web.1")
	if len(pids) != 1 {
		b.t.Fatalf("%d processes of hello web.1 (%v), want exactly 1", len(pids), pids)
	}
	if got := b.m.Procs("BERTH_APP=hello", "BERTH_PROCESS=web.1", "BERTH_RELEASE=v"+strconv.Itoa(release)); len(got) != 1 {
		b.t.Fatalf("hello web.1 does not run release v%d", release)
	}
	// Seen from the host, the path starts with nspawn's own cgroup.
	cg := CgroupOf(pids[0])
	if !strings.Contains(cg, "/system.slice/berth.service/apps/") {
		b.t.Errorf("hello web.1 (pid %d) is in cgroup %q, want one below berth.service/apps/", pids[0], cg)
	}
}

// TestBerth runs the cases of issue 6 in order on one container: each
// needs the state the one before left.
func TestBerth(t *testing.T) {
	root := e2eutil.RepoRoot(t)
	bin := filepath.Join(root, "bin", "berth")
	if b := os.Getenv("BERTH_E2E_BINARY"); b != "" {
		bin = b // a berth binary built elsewhere
	}
	tarball := filepath.Join(root, "bin", "hello.tar.gz")
	for _, f := range []string{bin, tarball} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%v (run `make build example`, or `make e2e-systemd`)", err)
		}
	}
	m := NewMachine(t, fmt.Sprintf("berth-e2e-%d", os.Getpid()))
	m.CopyIn(bin, "/usr/local/bin/berth", 0o755)
	m.CopyIn(tarball, "/root/hello.tar.gz", 0o644)
	m.WriteFile("/root/forker.tar.gz", makeTarball(t, map[string]string{"Procfile": forkerProcfile}), 0o644)
	m.WriteFile("/root/hello-slow.tar.gz", slowRelease(t, tarball), 0o644)
	t.Logf("boot: %s", m.Boot().Round(time.Millisecond))
	b := berthEnv{t: t, m: m}

	var port int
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"1_install", func(t *testing.T) {
			out := b.m.MustExec("/usr/local/bin/berth", "systemd", "install",
				"--watchdog", watchdog.String(), "--env", agentJournal)
			t.Logf("install: %s", strings.TrimSpace(out))
			b.waitAgentRunning("")
			status := b.m.MustExec("systemctl", "status", "--no-pager", "berth")
			if !strings.Contains(status, "Active: active (running)") {
				t.Fatalf("systemctl status:\n%s", status)
			}
			b.mustBerth("apps")
			// systemctl reload sends SIGHUP (ExecReload): the agent reloads
			// in place, it does not die of it.
			pid := b.agentProps()["MainPID"]
			b.m.MustExec("systemctl", "reload", "berth")
			e2eutil.WaitFor(t, "berth.service back to active (running) after reload", 30*time.Second, func() (bool, string) {
				p := b.agentProps()
				return p["SubState"] == "running", fmt.Sprint(p)
			})
			if p := b.agentProps(); p["MainPID"] != pid || p["NRestarts"] != "0" {
				t.Errorf("after systemctl reload: %v, want MainPID %s and no restart", p, pid)
			}
			if _, err := b.m.Exec("getent", "group", "berth"); err != nil {
				t.Errorf("socket group berth was not created: %v", err)
			}
			if st := b.m.MustExec("stat", "-c", "%a %U %G", "/run/berth/berth.sock"); strings.TrimSpace(st) != "660 root berth" {
				t.Errorf("socket: %s, want 660 root berth", st)
			}
			// Under journald the agent's lines carry no timestamp of their own.
			logs := b.m.MustExec("journalctl", "-u", "berth", "-o", "cat", "--no-pager")
			if regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d`).MatchString(logs) {
				t.Errorf("agent log lines under journald carry timestamps:\n%s", e2eutil.Tail(logs, 10))
			}
		}},
		{"2_deploy", func(t *testing.T) {
			out := b.mustBerth("deploy", "-a", "hello", "/root/hello.tar.gz")
			t.Logf("deploy:\n%s", e2eutil.Tail(out, 5))
			port = b.webPort("hello")
			b.waitServing(port, 1)
			b.checkOneSet(1)
			e2eutil.WaitFor(t, "app output in the journal with BERTH_APP", 30*time.Second, func() (bool, string) {
				out, _ := b.m.Exec("journalctl", "BERTH_APP=hello", "BERTH_PROCESS=web.1", "BERTH_RELEASE=v1", "-o", "cat", "--no-pager")
				return strings.Contains(out, "hello: release v1 of hello"), out
			})
		}},
		{"3_reboot", func(t *testing.T) {
			boot := b.m.Reboot()
			start := time.Now().Add(-boot)
			b.waitAgentRunning("")
			served := b.waitServing(port, 1)
			bootToServing = served.Sub(start)
			t.Logf("boot %s; boot to serving %s", boot.Round(time.Millisecond), bootToServing.Round(time.Millisecond))
			if p := b.webPort("hello"); p != port {
				t.Errorf("port after reboot %d, want the same %d", p, port)
			}
			b.checkOneSet(1)
			// The shutdown stopped the app with its stop signal (hello logs
			// its graceful stop), though apps outlive the agent otherwise.
			lines, err := supervisor.ReadLogFile(filepath.Join(b.m.Root, "var/lib/berth/apps/hello/logs/web.1.log"), 0)
			if err != nil {
				t.Fatal(err)
			}
			stopped := false
			for _, l := range lines {
				stopped = stopped || l.Text == "hello: stopped"
			}
			if !stopped {
				t.Errorf("hello was not stopped gracefully by the shutdown; its log:\n%v", lines[max(0, len(lines)-10):])
			}
		}},
		{"4_kill9_agent", func(t *testing.T) {
			// The app outlives the agent: the next agent adopts it (issue 14).
			app := b.webPID("hello")
			before := b.agentProps()
			b.m.MustExec("kill", "-9", before["MainPID"])
			after := b.waitAgentRunning(before["MainPID"])
			if n0, n1 := atoi(before["NRestarts"]), atoi(after["NRestarts"]); n1 != n0+1 {
				t.Errorf("NRestarts %d -> %d, want one more", n0, n1)
			}
			b.waitServing(port, 1)
			b.checkOneSet(1)
			if now := b.webPID("hello"); now != app {
				t.Errorf("hello web.1 pid %d -> %d after a kill -9 of the agent, want it adopted", app, now)
			}
		}},
		{"4b_kill9_app", func(t *testing.T) {
			// A crashed app process is restarted by the agent into a fresh
			// cgroup of its own, and serves again.
			pids := b.m.Procs("BERTH_APP=hello", "BERTH_PROCESS=web.1")
			if len(pids) != 1 {
				t.Fatalf("hello web.1 processes: %v", pids)
			}
			agentPID := b.agentProps()["MainPID"]
			if err := unix.Kill(pids[0], unix.SIGKILL); err != nil {
				t.Fatal(err)
			}
			e2eutil.WaitFor(t, "hello web.1 restarted", time.Minute, func() (bool, string) {
				now := b.m.Procs("BERTH_APP=hello", "BERTH_PROCESS=web.1")
				return len(now) == 1 && now[0] != pids[0], fmt.Sprint(now)
			})
			b.waitServing(port, 1)
			b.checkOneSet(1)
			if p := b.agentProps()["MainPID"]; p != agentPID {
				t.Errorf("agent main pid changed %s -> %s on an app crash", agentPID, p)
			}
		}},
		{"5_watchdog", func(t *testing.T) {
			app := b.webPID("hello")
			// 4b restarted web.1 moments ago: its process record and its
			// pipes in the fd store are written as it starts, by the
			// agent's event loop. A process the agent had no time to
			// record cannot be adopted (it is killed and started again, by
			// design), so the agent is frozen once web.1 has run a while.
			e2eutil.WaitFor(t, "web.1 running for 1s", time.Minute, func() (bool, string) {
				ps, err := b.ps("hello")
				if err != nil || len(ps) != 1 {
					return false, fmt.Sprint(ps, err)
				}
				// ps gives the container's pid, app is the host's: only
				// the start time is compared.
				return ps[0].State == "running" && time.Since(ps[0].StartedAt) > time.Second, fmt.Sprint(ps[0])
			})
			before := b.agentProps()
			frozen := time.Now()
			b.m.MustExec("kill", "-STOP", before["MainPID"])
			after := b.waitAgentRunning(before["MainPID"])
			t.Logf("frozen agent replaced after %s", time.Since(frozen).Round(time.Millisecond))
			if n0, n1 := atoi(before["NRestarts"]), atoi(after["NRestarts"]); n1 <= n0 {
				t.Errorf("NRestarts %d -> %d, want more", n0, n1)
			}
			logs := b.m.MustExec("journalctl", "-u", "berth", "--no-pager", "-o", "cat")
			if !strings.Contains(logs, "Watchdog timeout") {
				t.Errorf("journal has no watchdog timeout of berth.service:\n%s", e2eutil.Tail(logs, 20))
			}
			b.waitServing(port, 1)
			b.checkOneSet(1)
			if now := b.webPID("hello"); now != app {
				t.Errorf("hello web.1 pid %d -> %d after the watchdog replaced the agent, want it adopted; the agent on it:\n%s",
					app, now, grepLines(logs+b.m.MustExec("journalctl", "-u", "berth", "--no-pager", "-o", "cat"), "adopt", "left by the previous", "web.1"))
			}
		}},
		{"6_stop", func(t *testing.T) {
			b.mustBerth("deploy", "-a", "forker", "/root/forker.tar.gz")
			var escapee int
			e2eutil.WaitFor(t, "forker's setsid daemon runs", time.Minute, func() (bool, string) {
				pids := b.appProcs("forker")
				for _, pid := range pids {
					if sid := sessionOf(pid); sid == pid {
						escapee = pid
					}
				}
				return escapee != 0 && len(pids) >= 2, fmt.Sprint(pids)
			})
			if len(b.appProcs("hello")) == 0 {
				t.Fatal("hello is not running before the stop")
			}
			// A stop of the unit stops the apps (on purpose), unlike a
			// restart or a crash of the agent.
			since := strings.TrimSpace(b.m.MustExec("date", "+%Y-%m-%d %H:%M:%S"))
			stopStart := time.Now()
			b.m.MustExec("systemctl", "stop", "berth")
			t.Logf("systemctl stop berth took %s", time.Since(stopStart).Round(time.Millisecond))
			for _, app := range []string{"hello", "forker"} {
				if pids := b.appProcs(app); len(pids) != 0 {
					t.Errorf("%s processes left after systemctl stop berth: %v", app, pids)
				}
			}
			if alive(escapee) {
				t.Errorf("forker's setsid daemon %d survived", escapee)
			}
			// The agent stopped everything itself: systemd had nothing left
			// to SIGKILL.
			logs := b.m.MustExec("journalctl", "-u", "berth", "--since", since, "--no-pager", "-o", "cat")
			if strings.Contains(logs, "with signal SIGKILL") {
				t.Errorf("systemd had to SIGKILL leftovers of the agent:\n%s", logs)
			}
			if !strings.Contains(logs, "why=stop") {
				t.Errorf("the agent did not tell a stop of the unit:\n%s", e2eutil.Tail(logs, 20))
			}
			if st := strings.TrimSpace(b.m.Props("berth.service", "ActiveState")["ActiveState"]); st != "inactive" {
				t.Errorf("berth.service %s after stop", st)
			}
			b.m.MustExec("systemctl", "start", "berth")
			b.waitAgentRunning("")
			b.waitServing(port, 1)
		}},
		{"7_power_cut", func(t *testing.T) {
			active := activeOf(t, b.releases("hello"))
			next := active + 1
			// Deploy a release whose release phase takes a while, and cut
			// the power while it runs.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			deploy := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(b.m.PID1), "-a", "--",
				"/usr/local/bin/berth", "deploy", "-a", "hello", "/root/hello-slow.tar.gz")
			deploy.Env = []string{"PATH=" + containerPath}
			var out bytes.Buffer
			deploy.Stdout, deploy.Stderr = &out, &out
			if err := deploy.Start(); err != nil {
				t.Fatal(err)
			}
			e2eutil.WaitFor(t, fmt.Sprintf("release phase of v%d runs", next), time.Minute, func() (bool, string) {
				for _, pid := range b.m.Procs("BERTH_APP=hello", "BERTH_RELEASE=v"+strconv.Itoa(next)) {
					if comm(pid) == "sleep" {
						return true, ""
					}
				}
				return false, out.String()
			})
			b.m.PowerCut()
			err := deploy.Wait()
			t.Logf("deploy cut off: %v\n%s", err, e2eutil.Tail(out.String(), 5))

			start := time.Now()
			boot := b.m.Boot()
			b.waitAgentRunning("")
			rs := b.releases("hello")
			now := activeOf(t, rs)
			if now != active && now != next {
				t.Fatalf("active release v%d after the power cut, want v%d (undone) or v%d (finished)", now, active, next)
			}
			served := b.waitServing(port, now)
			b.checkOneSet(now)
			for _, r := range rs {
				if r.Version == next && r.Status == "active" {
					t.Logf("the agent finished the cut-off deploy: v%d active", next)
				} else if r.Version == next {
					t.Logf("the agent undid the cut-off deploy: v%d %s (%s)", next, r.Status, r.Reason)
				}
			}
			t.Logf("boot %s; boot to serving after the power cut %s", boot.Round(time.Millisecond), served.Sub(start).Round(time.Millisecond))
		}},
		{"8_socket_activation", func(t *testing.T) {
			b.m.MustExec("/usr/local/bin/berth", "systemd", "install", "--socket-activation",
				"--watchdog", watchdog.String(), "--env", agentJournal)
			if st := strings.TrimSpace(must(b.m.Exec("systemctl", "is-active", "berth.socket"))); st != "active" {
				t.Fatalf("berth.socket is %s", st)
			}
			since := strings.TrimSpace(b.m.MustExec("date", "+%Y-%m-%d %H:%M:%S"))
			// A restart of the unit leaves the apps to the next agent (the
			// install switched to socket activation, which stopped them).
			b.waitServing(port, activeOf(t, b.releases("hello")))
			app := b.webPID("hello")
			b.m.MustExec("systemctl", "restart", "berth")
			b.waitAgentRunning("")
			if now := b.webPID("hello"); now != app {
				t.Errorf("hello web.1 pid %d -> %d after systemctl restart berth, want it adopted", app, now)
			}
			logs := b.m.MustExec("journalctl", "-u", "berth", "--since", since, "--no-pager", "-o", "cat")
			if !strings.Contains(logs, "socket passed by systemd") {
				t.Errorf("the agent did not take the socket from systemd:\n%s", e2eutil.Tail(logs, 20))
			}
			// systemd holds the socket while the agent restarts: a client
			// that connects right after a kill -9 waits and is answered.
			before := b.agentProps()
			b.m.MustExec("kill", "-9", before["MainPID"])
			if out, err := b.berth("apps"); err != nil {
				t.Errorf("berth apps during the agent's restart: %v\n%s", err, out)
			}
			b.waitAgentRunning(before["MainPID"])
			b.waitServing(port, activeOf(t, b.releases("hello")))
		}},
	}
	for i, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			b.t, m.t = t, t
			s.run(t)
		})
		b.t, m.t = t, t
		if !ok {
			t.Logf("agent journal:\n%s", e2eutil.Tail(must(m.Exec("journalctl", "-u", "berth", "--no-pager", "-n", "60")), 60))
			if !m.running() || !b.isActive() || (i >= 1 && port == 0) {
				t.FailNow() // the later cases need an installed agent and the app deployed
			}
		}
	}
}

func must(s string, _ error) string { return s }

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// activeOf returns the version of the one active release; it fails the
// test unless exactly one is active.
func activeOf(t *testing.T, rs []api.Release) int {
	t.Helper()
	var active []int
	for _, r := range rs {
		if r.Status == "active" {
			active = append(active, r.Version)
		}
	}
	if len(active) != 1 {
		t.Fatalf("%d active releases %v, want exactly 1: %+v", len(active), active, rs)
	}
	return active[0]
}

// sessionOf returns a host process's session id (field 6 of stat; the
// host's /proc shows it as a host pid).
func sessionOf(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	// After the comm: state ppid pgrp session.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 4 {
		return 0
	}
	return atoi(f[3])
}

// comm returns a process's command name.
func comm(pid int) string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(data))
}

// alive reports whether a host pid exists and is not a zombie.
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// makeTarball returns a .tar.gz with the given files at its root.
func makeTarball(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, body); err != nil {
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

// slowRelease returns the example tarball with a release phase that takes
// a few seconds added to its Procfile, so a power cut can land in it.
func slowRelease(t *testing.T, path string) []byte {
	t.Helper()
	return e2eutil.RewriteTarball(t, path, "Procfile", func(name string, body []byte) []byte {
		if name == "Procfile" {
			return append(body, "release: sleep 8\n"...)
		}
		return body
	})
}

// grepLines returns the lines of text that contain any of words, the last
// 40 of them.
func grepLines(text string, words ...string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out[max(0, len(out)-40):], "\n")
}
