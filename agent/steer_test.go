package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/internal/steer"
)

// steerConfig is safeConfig with connection steering on. A kernel
// without sk_lookup (older than 5.9, or no BPF) is the one reason to
// skip; as root it must work.
func steerConfig(t *testing.T) Config {
	t.Helper()
	s, err := steer.Open()
	if err != nil {
		if os.Geteuid() != 0 {
			t.Skipf("not root, steering is unavailable: %v", err)
		}
		t.Fatalf("steering must work as root on this kernel: %v", err)
	}
	s.Close()
	cfg := safeConfig(t)
	cfg.NoSteer = false
	return cfg
}

// exitProcfile runs hello dying at once on SIGTERM, with no draining of
// its own, as a plain Python http.server or a Node app does.
const exitProcfile = "web: export HELLO_EXIT_ON_TERM=1; exec ./hello\n"

// loadUntil sends GET requests to url on new connections until stop is
// closed and reports how many were sent, the failures, and which
// "release (instance)" answered how often.
func loadUntil(url string, stop <-chan struct{}) (sent int, failed []error, seen map[string]int) {
	client := newClient()
	seen = map[string]int{}
	for {
		select {
		case <-stop:
			return
		default:
		}
		body, err := get(client, url)
		sent++
		if err != nil {
			failed = append(failed, err)
			continue
		}
		// "hello from APP vN (web.K) GREETING=..."
		if f := strings.Fields(body); len(f) >= 5 {
			seen[f[3]+" "+f[4]]++
		}
	}
}

// slowExitProcfile is exitProcfile with every request taking 100 ms, so
// that requests are in flight when an old instance gets its SIGTERM.
const slowExitProcfile = "web: export HELLO_EXIT_ON_TERM=1 HELLO_REQUEST_DELAY=100ms; exec ./hello\n"

// TestSteer_SwitchesDropNothing ensures an app that binds $PORT itself
// and dies at once on SIGTERM is steered: its PORT is a private port,
// the public port reaches it, and eight clients sending 100 ms requests
// to the public port throughout three switches see no failure: each old
// instance gets its stop signal only once the new one serves and the
// old one's requests in flight are done (without the drain, those die
// with it).
func TestSteer_SwitchesDropNothing(t *testing.T) {
	ta := startAgent(t, steerConfig(t))
	ta.mustDeploy(t, "hello", helloTarFiles(t, slowExitProcfile, bindManifest, "one"))
	p1 := ta.procs(t, "hello")["web.1"]
	if !strings.HasPrefix(p1.Steering, "on: listens on port ") || p1.Mode != "bind" {
		t.Fatalf("web.1 = %+v, want steered in bind mode", p1)
	}
	env := procEnv(t, p1.PID)
	if env["PORT"] == strconv.Itoa(p1.Port) || "on: listens on port "+env["PORT"] != p1.Steering || env["LISTEN_FDS"] != "" {
		t.Errorf("env of web.1: PORT=%q LISTEN_FDS=%q, want its private port (%s), not the public %d", env["PORT"], env["LISTEN_FDS"], p1.Steering, p1.Port)
	}
	if !strings.Contains(env["GODEBUG"], "multipathtcp=0") {
		t.Errorf("GODEBUG=%q: a Go app would listen with MPTCP, which no sockmap takes", env["GODEBUG"])
	}

	url := fmt.Sprintf("http://127.0.0.1:%d/", p1.Port)
	stop := make(chan struct{})
	type result struct {
		sent   int
		failed []error
		seen   map[string]int
	}
	const clients = 8
	done := make(chan result, clients)
	for range clients {
		go func() {
			var r result
			r.sent, r.failed, r.seen = loadUntil(url, stop)
			done <- r
		}()
	}
	collect := func() result {
		all := result{seen: map[string]int{}}
		for range clients {
			r := <-done
			all.sent += r.sent
			all.failed = append(all.failed, r.failed...)
			for k, n := range r.seen {
				all.seen[k] += n
			}
		}
		return all
	}
	var steps []string
	for i := range 3 {
		_, err := ta.SetConfig(context.Background(), "hello", api.ConfigChange{Set: map[string]string{"GREETING": strconv.Itoa(i)}},
			func(p api.Progress) { steps = append(steps, p.Step) })
		if err != nil {
			close(stop)
			collect()
			t.Fatal(err)
		}
	}
	close(stop)
	r := collect()
	if len(r.failed) > 0 || r.sent == 0 || r.seen["v1 (web.1)"] == 0 || r.seen["v4 (web.1)"] == 0 {
		t.Fatalf("%d requests, %d failed (%v), answered by %v: want none failed, v1 to v4", r.sent, len(r.failed), r.failed, r.seen)
	}
	if !strings.Contains(strings.Join(steps, " "), "start health drain stop") {
		t.Errorf("steps = %v, want start, health, drain, then the stop of the old instance", steps)
	}
	ps := ta.procs(t, "hello")
	if p := ps["web.1"]; len(ps) != 1 || p.Release != 4 || p.Port != p1.Port {
		t.Fatalf("processes after the switches = %+v", ps)
	}
	t.Logf("%d requests during 3 switches, none failed: %v", r.sent, r.seen)
}

// TestSteer_ScaleSpreadsAndDrains ensures a socket-activated type scaled
// to three instances gets the connections of its public ports spread
// across all three, each with a socket of its own (passed as fd 3), and
// that scaling back to one drains the others: every connection then
// reaches web.1, and none fails meanwhile.
func TestSteer_ScaleSpreadsAndDrains(t *testing.T) {
	ta := startAgent(t, steerConfig(t))
	ctx := context.Background()
	ta.mustDeploy(t, "hello", helloTarFiles(t, exitProcfile, socketManifest, "one"))
	if _, err := ta.Scale(ctx, "hello", map[string]int{"web": 3}); err != nil {
		t.Fatal(err)
	}
	ps := ta.procs(t, "hello")
	private := map[string]bool{}
	for _, inst := range []string{"web.1", "web.2", "web.3"} {
		p := ps[inst]
		env := procEnv(t, p.PID)
		if p.Mode != "socket" || !strings.HasPrefix(p.Steering, "on") || env["LISTEN_FDS"] != "1" || private[env["PORT"]] {
			t.Fatalf("%s = %+v, PORT %q LISTEN_FDS %q: want steered, a socket and a port of its own", inst, p, env["PORT"], env["LISTEN_FDS"])
		}
		private[env["PORT"]] = true
	}
	client := newClient()
	seen := map[string]int{}
	for i := range 90 {
		port := []int{ps["web.1"].Port, ps["web.2"].Port}[i%2]
		body, err := get(client, fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err != nil {
			t.Fatalf("request %d to port %d: %v", i, port, err)
		}
		seen[strings.Fields(body)[4]]++
	}
	if seen["(web.1)"] == 0 || seen["(web.2)"] == 0 || seen["(web.3)"] == 0 {
		t.Fatalf("connections to the public ports reached %v, want all three instances", seen)
	}

	url := fmt.Sprintf("http://127.0.0.1:%d/", ps["web.1"].Port)
	stop := make(chan struct{})
	type result struct {
		sent   int
		failed []error
	}
	done := make(chan result)
	go func() {
		var r result
		r.sent, r.failed, _ = loadUntil(url, stop)
		done <- r
	}()
	_, err := ta.Scale(ctx, "hello", map[string]int{"web": 1})
	close(stop)
	r := <-done
	if err != nil {
		t.Fatal(err)
	}
	if len(r.failed) > 0 {
		t.Fatalf("%d of %d requests failed while scaling down: %v", len(r.failed), r.sent, r.failed)
	}
	for i := range 20 {
		body, err := get(client, url)
		if err != nil || !strings.Contains(body, "(web.1)") {
			t.Fatalf("request %d after scaling down: %q, %v", i, body, err)
		}
	}
}

// TestSteer_BadDrainTimeout ensures a drain_timeout that is not a
// duration, or too long, is refused with a clear error and changes
// nothing: the running release stays active and keeps its process.
func TestSteer_BadDrainTimeout(t *testing.T) {
	ta := startAgent(t, steerConfig(t))
	ta.mustDeploy(t, "hello", helloTarFiles(t, exitProcfile, bindManifest, "one"))
	before := ta.procs(t, "hello")["web.1"]
	for _, bad := range []string{`"soon"`, `"2h"`, `"-1s"`, `5`} {
		manifest := `{"processes":{"web":{"drain_timeout":` + bad + `}}}`
		_, _, err := ta.deploy(t, "hello", helloTarFiles(t, exitProcfile, manifest, "bad"+bad))
		if !errors.Is(err, api.ErrInvalid) || !strings.Contains(err.Error(), "drain_timeout") && !strings.Contains(err.Error(), "duration") {
			t.Errorf("drain_timeout %s: %v, want an invalid-input error about it", bad, err)
		}
	}
	if n := ta.activeRelease(t, "hello"); n != 1 {
		t.Fatalf("active release = v%d, want v1", n)
	}
	if p := ta.procs(t, "hello")["web.1"]; p.PID != before.PID || p.State != "running" {
		t.Fatalf("web.1 = %+v, was pid %d", p, before.PID)
	}
}

// TestSteer_OffSaysSo ensures that without steering (here --no-steer)
// the web type says so in ps and switches as before (its PORT is its
// public port).
func TestSteer_OffSaysSo(t *testing.T) {
	ta := startAgent(t, safeConfig(t))
	ta.mustDeploy(t, "hello", helloTarFiles(t, exitProcfile, bindManifest, "one"))
	p := ta.procs(t, "hello")["web.1"]
	if p.Steering != "off: turned off (--no-steer)" {
		t.Errorf("steering = %q", p.Steering)
	}
	if env := procEnv(t, p.PID); env["PORT"] != strconv.Itoa(p.Port) {
		t.Errorf("PORT=%q, want the stable port %d", env["PORT"], p.Port)
	}
}

// TestSteer_PortsReleased ensures a type's public ports stop being
// steered once its last instance goes: scaled to zero, and after the app
// is destroyed.
func TestSteer_PortsReleased(t *testing.T) {
	ta := startAgent(t, steerConfig(t))
	ctx := context.Background()
	ta.mustDeploy(t, "hello", helloTarFiles(t, exitProcfile, bindManifest, "one"))
	port := ta.procs(t, "hello")["web.1"].Port
	if got := ta.steerer.Ports("hello/web"); len(got) != 1 || int(got[0]) != port {
		t.Fatalf("steered ports of hello/web = %v, want [%d]", got, port)
	}
	if _, err := ta.Scale(ctx, "hello", map[string]int{"web": 0}); err != nil {
		t.Fatal(err)
	}
	if got := ta.steerer.Ports("hello/web"); got != nil {
		t.Fatalf("steered ports after scaling to 0 = %v", got)
	}
	if _, err := ta.Scale(ctx, "hello", map[string]int{"web": 1}); err != nil {
		t.Fatal(err)
	}
	if got := ta.steerer.Ports("hello/web"); len(got) != 1 {
		t.Fatalf("steered ports after scaling to 1 = %v", got)
	}
	if err := ta.DestroyApp(ctx, "hello"); err != nil {
		t.Fatal(err)
	}
	if got := ta.steerer.Ports("hello/web"); got != nil {
		t.Fatalf("steered ports after destroy = %v", got)
	}
}

// TestSteer_ListeningIsUp ensures a steered web type without a health
// check that binds $PORT itself counts as up once it listens there,
// without waiting for the settle time (an hour here: the deploy and the
// switch would not return otherwise), and serves on the public port.
func TestSteer_ListeningIsUp(t *testing.T) {
	cfg := steerConfig(t)
	cfg.Settle = time.Hour
	cfg.StartTimeout = time.Hour
	ta := startAgent(t, cfg)
	ta.mustDeploy(t, "hello", helloTarFiles(t, exitProcfile, "", "one"))
	if _, err := ta.SetConfig(context.Background(), "hello", api.ConfigChange{Set: map[string]string{"GREETING": "up"}}, nil); err != nil {
		t.Fatal(err)
	}
	p := ta.procs(t, "hello")["web.1"]
	if body, err := get(newClient(), fmt.Sprintf("http://127.0.0.1:%d/", p.Port)); err != nil || !strings.Contains(body, "v2 (web.1) GREETING=up") {
		t.Fatalf("GET on the public port = %q, %v", body, err)
	}
}

// TestSteer_RestartedSlowStarterRejoins ensures a steered web process
// that binds $PORT itself a while after it starts (a framework booting)
// is on the public port once it listens, after a deploy that was up
// before it listened and after a crash: the agent
// keeps looking for its socket, less often the longer it takes, and
// puts it back in its group when it shows up.
func TestSteer_RestartedSlowStarterRejoins(t *testing.T) {
	ta := startAgent(t, steerConfig(t))
	ta.mustDeploy(t, "hello", helloTarFiles(t, "web: export HELLO_START_DELAY=1500ms; exec ./hello\n", "", "one"))
	old := ta.procs(t, "hello")["web.1"]
	url := fmt.Sprintf("http://127.0.0.1:%d/", old.Port)
	client := newClient()
	answers := func() bool {
		body, err := get(client, url)
		return err == nil && strings.Contains(body, "(web.1)")
	}
	// The deploy is up after the settle time, before web.1 listens.
	waitFor(t, 10*time.Second, "web.1 answers on the public port after the deploy", answers)
	if err := syscall.Kill(old.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "web.1 restarted", func() bool {
		p := ta.procs(t, "hello")["web.1"]
		return p.PID != 0 && p.PID != old.PID && p.State == "running"
	})
	restarted := time.Now()
	waitFor(t, 10*time.Second, "the restarted web.1 answers on the public port", answers)
	t.Logf("answered %s after the restart was seen (it listens 1.5 s after its start)", time.Since(restarted).Round(10*time.Millisecond))
}
