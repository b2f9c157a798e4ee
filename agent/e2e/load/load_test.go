//go:build e2e_load

package load

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// settings are the load test's knobs (see doc.go).
type settings struct {
	duration  time.Duration
	rate      float64
	workers   int
	switches  int
	max       int
	probation time.Duration
}

func loadSettings(t *testing.T) settings {
	t.Helper()
	s := settings{duration: 30 * time.Second, rate: 300, workers: 4, switches: 10, max: 200000, probation: time.Second}
	for _, d := range []struct {
		name string
		dst  *time.Duration
	}{{"LOAD_DURATION", &s.duration}, {"LOAD_PROBATION", &s.probation}} {
		if v := os.Getenv(d.name); v != "" {
			parsed, err := time.ParseDuration(v)
			if err != nil || parsed <= 0 {
				t.Fatalf("invalid %s %q", d.name, v)
			}
			*d.dst = parsed
		}
	}
	ints := []struct {
		name string
		dst  *int
		min  int
	}{{"LOAD_WORKERS", &s.workers, 1}, {"LOAD_SWITCHES", &s.switches, 1}, {"LOAD_MAX", &s.max, 1}}
	for _, i := range ints {
		if v := os.Getenv(i.name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < i.min {
				t.Fatalf("invalid %s %q", i.name, v)
			}
			*i.dst = n
		}
	}
	if v := os.Getenv("LOAD_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r < 0 {
			t.Fatalf("invalid LOAD_RATE %q", v)
		}
		s.rate = r
	}
	return s
}

// switchRecord is one deploy or config change during a run.
type switchRecord struct {
	kind     string // deploy or config
	from, to time.Duration
	err      error
	output   string
}

// runReport is the outcome of one mode's run.
type runReport struct {
	app, mode   string // mode as `berth ps` shows it
	steering    string // web.1's steering as `berth ps --json` shows it
	scale       int    // instances of web
	stats       stats
	length      time.Duration // how long the load ran
	skipped     int64
	switches    []switchRecord
	deploys     int // succeeded
	configs     int // succeeded
	switchTimes []time.Duration
}

// switchGrace extends each switch window past the CLI's return, to catch
// the old instance's stop.
const switchGrace = 500 * time.Millisecond

// TestLoad_SafeSwitching sends requests continuously to six apps while
// each is deployed and reconfigured repeatedly (cfg.switches of each):
// examples/hello (socket-activated, drains on SIGTERM), the same app
// dying at once on SIGTERM (HELLO_EXIT_ON_TERM=1, as a Python
// http.server or a Node app does), that app binding $PORT itself (no
// socket activation, no draining code), and each of the three scaled to
// web=3, and reports them side by side. With connection steering (root,
// Linux 5.9+) no request of any may fail; without it, only those of the
// socket-activated apps must not.
func TestLoad_SafeSwitching(t *testing.T) {
	cfg := loadSettings(t)
	berth, helloTar := binaries(t)
	b, err := readBundle(helloTar)
	if err != nil {
		t.Fatal(err)
	}
	manifest, ok := b.file("berth.json")
	if !ok {
		t.Fatalf("%s has no berth.json", helloTar)
	}
	bindJSON, err := bindManifest(manifest)
	if err != nil {
		t.Fatal(err)
	}

	// One tarball per deploy (initial + switches), each with its own
	// VERSION file so that every deploy is a new build.
	tarDir := t.TempDir()
	tarballs := func(variant string, replace map[string][]byte) []string {
		var files []string
		for i := 0; i <= cfg.switches; i++ {
			r := map[string][]byte{"VERSION": fmt.Appendf(nil, "%s build %d\n", variant, i)}
			for k, v := range replace {
				r[k] = v
			}
			f := filepath.Join(tarDir, fmt.Sprintf("%s-%d.tar.gz", variant, i))
			if err := b.write(f, r); err != nil {
				t.Fatal(err)
			}
			files = append(files, f)
		}
		return files
	}
	// Each request takes 100 ms, so that requests are in flight when an
	// old instance gets its SIGTERM and dies: only a drain saves them.
	exitProcfile := []byte("web: export HELLO_EXIT_ON_TERM=1 HELLO_REQUEST_DELAY=100ms; exec ./hello\n")
	socketTars := tarballs("socket", nil)
	exitTars := tarballs("exit", map[string][]byte{"Procfile": exitProcfile})
	bindExitTars := tarballs("bind-exit", map[string][]byte{"Procfile": exitProcfile, "berth.json": bindJSON})

	h := startAgent(t, berth, "--probation", cfg.probation.String())
	var reports []runReport
	slow := 10 * cfg.workers // 100 ms requests: ten times the clients for the same rate
	for _, run := range []struct {
		app      string
		tarballs []string
		wantMode string
		scale    int
		workers  int
	}{
		{"hello", socketTars, "socket", 1, cfg.workers},
		{"exit", exitTars, "socket", 1, slow},
		{"bind-exit", bindExitTars, "bind", 1, slow},
		{"hello-x3", socketTars, "socket", 3, cfg.workers},
		{"exit-x3", exitTars, "socket", 3, slow},
		{"bind-exit-x3", bindExitTars, "bind", 3, slow},
	} {
		ok := t.Run(run.app, func(t *testing.T) {
			rep := runMode(t, h, cfg, run.app, run.tarballs, run.scale, run.workers)
			reports = append(reports, rep)
			if rep.mode != run.wantMode {
				t.Errorf("%s's web runs in mode %q, want %q", run.app, rep.mode, run.wantMode)
			}
			if rep.steering == "" {
				t.Errorf("%s's web.1 does not say whether it is steered", run.app)
			}
			steered := strings.HasPrefix(rep.steering, "on")
			if !steered {
				t.Logf("connection steering: %s", rep.steering)
			}
			if (steered || run.wantMode == "socket") && rep.stats.failed > 0 {
				t.Errorf("%d of %d requests failed while switching (goal: 0; steering %s): %v",
					rep.stats.failed, rep.stats.sent, rep.steering, rep.stats.errors)
			}
		})
		if !ok && len(reports) == 0 {
			break
		}
	}
	table := reportTable(cfg, reports)
	t.Log("\n" + table)
	fmt.Println(table)
	if log := h.logText(); strings.Contains(log, "needed SIGKILL") {
		t.Errorf("an old instance needed SIGKILL:\n%s", grepLines(log, "needed SIGKILL"))
	}
}

// runMode deploys app and scales its web type to scale instances, then
// runs the load while cfg.switches deploys and cfg.switches config
// changes happen, alternating, evenly spaced.
//
// workers overrides cfg.workers (slow requests need more to keep the
// rate).
func runMode(t *testing.T, h *harness, cfg settings, app string, tarballs []string, scale, workers int) runReport {
	rep := runReport{app: app, scale: scale}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := h.cli(ctx, "deploy", "-a", app, tarballs[0]); err != nil {
		t.Fatalf("initial deploy: %v\nagent log:\n%s", err, h.logTail(30))
	} else {
		t.Logf("initial deploy of %s:\n%s", app, strings.TrimSpace(out))
	}
	if scale > 1 {
		if _, err := h.cli(ctx, "scale", "-a", app, fmt.Sprintf("web=%d", scale)); err != nil {
			t.Fatalf("scale: %v\nagent log:\n%s", err, h.logTail(30))
		}
	}
	web, err := h.web(app)
	if err != nil {
		t.Fatalf("%v\nagent log:\n%s", err, h.logTail(30))
	}
	rep.mode, rep.steering = web.Mode, web.Steering
	url := fmt.Sprintf("http://127.0.0.1:%d/", web.Port)
	t.Logf("%s web.1: pid %d, port %d, mode %q, health %q", app, web.PID, web.Port, web.Mode, web.Health)
	if err := waitAnswer(url, "hello from "+app); err != nil {
		t.Fatalf("%v\nagent log:\n%s", err, h.logTail(30))
	}

	// The load runs for cfg.duration and, should the switches take longer,
	// until the last one is over (at most three times cfg.duration).
	done := make(chan loadResult, 1)
	stopLoad := make(chan struct{})
	go func() {
		done <- runLoad(loadConfig{
			url: url, expect: "hello from " + app, stop: stopLoad,
			duration: 3 * cfg.duration, rate: cfg.rate, workers: workers, max: cfg.max,
		})
	}()
	began := time.Now()
	total := 2 * cfg.switches
	step := cfg.duration / time.Duration(total+1)
	for i := range total {
		at := began.Add(step * time.Duration(i+1))
		timer := time.NewTimer(time.Until(at)) // the schedule, not a wait for an event
		<-timer.C
		rec := switchRecord{from: time.Since(began)}
		var args []string
		if i%2 == 0 {
			rec.kind = "deploy"
			args = []string{"deploy", "-a", app, tarballs[i/2+1]}
		} else {
			rec.kind = "config"
			args = []string{"config", "set", "-a", app, fmt.Sprintf("GREETING=g%d", i/2+1)}
		}
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Minute)
		rec.output, rec.err = h.cli(sctx, args...)
		scancel()
		rec.to = time.Since(began)
		rep.switches = append(rep.switches, rec)
		if rec.err != nil {
			t.Errorf("switch %d (%s): %v", i+1, rec.kind, rec.err)
			continue
		}
		rep.switchTimes = append(rep.switchTimes, rec.to-rec.from)
		if rec.kind == "deploy" {
			rep.deploys++
		} else {
			rep.configs++
		}
	}
	if rest := time.Until(began.Add(cfg.duration)); rest > switchGrace {
		<-time.After(rest) // the rest of the load's nominal duration
	} else {
		<-time.After(switchGrace) // the last switch's window
	}
	close(stopLoad)
	res := <-done
	rep.length = res.length

	var windows []window
	for _, s := range rep.switches {
		windows = append(windows, window{s.from, s.to + switchGrace})
	}
	rep.stats = summarize(res.samples, windows)
	rep.skipped = res.skipped
	for i, s := range rep.switches {
		st := summarize(res.samples, []window{{s.from, s.to + switchGrace}})
		late := s.from - step*time.Duration(i+1)
		t.Logf("switch %2d %-6s at %6.2fs (%.2fs late) took %5.2fs: %d requests started in its window, %d failed, p99 %s, max %s",
			i+1, s.kind, s.from.Seconds(), late.Seconds(), (s.to - s.from).Seconds(),
			st.switchSent, st.switchFailed, ms(st.switchP99), ms(st.switchMax))
	}

	// Not vacuous: requests went out, every switch happened, and the app
	// now answers from the last release with the last config.
	if rep.stats.sent == 0 {
		t.Fatalf("no request was sent")
	}
	if rep.deploys != cfg.switches || rep.configs != cfg.switches {
		t.Fatalf("%d of %d deploys and %d of %d config changes succeeded", rep.deploys, cfg.switches, rep.configs, cfg.switches)
	}
	last, err := h.web(app)
	if err != nil {
		t.Fatal(err)
	}
	wantRelease := 1 + total
	if last.Release != wantRelease {
		t.Errorf("web.1 runs release %d after %d switches, want %d", last.Release, total, wantRelease)
	}
	want := fmt.Sprintf("hello from %s v%d (web.1) GREETING=g%d", app, wantRelease, cfg.switches)
	if scale > 1 {
		// Any of the instances answers.
		want = fmt.Sprintf("hello from %s v%d (web.", app, wantRelease)
		procs, err := h.processes(app)
		if err != nil {
			t.Fatal(err)
		}
		running := 0
		for _, p := range procs {
			if p.State == "running" && p.Release == wantRelease {
				running++
			}
		}
		if running != scale {
			t.Errorf("%d instances of v%d run after the switches, want %d: %+v", running, wantRelease, scale, procs)
		}
	}
	if err := waitAnswer(url, want); err != nil {
		t.Error(err)
	}
	return rep
}

// waitAnswer polls url (bounded, 30s) until a 200 body starts with want.
func waitAnswer(url, want string) error {
	cfg := loadConfig{url: url, expect: want}
	client := newClient()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := request(client, cfg, time.Now())
		if s.err == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("GET %s: no answer starting %q within 30s (last: %s)", url, want, s.err)
		}
		<-time.After(100 * time.Millisecond) // next poll of a bounded condition
	}
}

// reportTable renders the runs side by side.
func reportTable(cfg settings, reports []runReport) string {
	var b strings.Builder
	fmt.Fprintf(&b, "load: %s per run (longer if the switches take longer), %d workers, %s, new connection per request, %d deploys + %d config changes per run, agent --probation %s\n",
		cfg.duration, cfg.workers, rateString(cfg.rate), cfg.switches, cfg.switches, cfg.probation)
	fmt.Fprintf(&b, "%-13s %-12s %3s %7s %8s %7s %9s %9s %9s %9s %9s %10s %11s\n",
		"app", "mode", "web", "ran", "sent", "failed", "p50", "p99", "max", "p99-sw", "sw-sent", "sw-failed", "switch-med")
	for _, r := range reports {
		mode := orDash(r.mode)
		if strings.HasPrefix(r.steering, "on") {
			mode += "+steer"
		}
		fmt.Fprintf(&b, "%-13s %-12s %3d %6.1fs %8d %7d %9s %9s %9s %9s %9d %10d %11s\n",
			r.app, mode, r.scale, r.length.Seconds(), r.stats.sent, r.stats.failed, ms(r.stats.p50), ms(r.stats.p99), ms(r.stats.max),
			ms(r.stats.switchP99), r.stats.switchSent, r.stats.switchFailed, ms(median(r.switchTimes)))
	}
	for _, r := range reports {
		if len(r.stats.errors) == 0 && r.skipped == 0 {
			continue
		}
		var kinds []string
		for k, n := range r.stats.errors {
			kinds = append(kinds, fmt.Sprintf("%s: %d", k, n))
		}
		sort.Strings(kinds)
		fmt.Fprintf(&b, "%s: failures {%s}; paced slots skipped while all workers were busy: %d\n",
			r.app, strings.Join(kinds, ", "), r.skipped)
	}
	b.WriteString("apps: hello = examples/hello (socket-activated, drains on SIGTERM); exit = the same dying at once on SIGTERM,\n" +
		"each request taking 100 ms (ten times the workers); bind-exit = that one binding $PORT itself (no LISTEN_FDS);\n" +
		"-x3 = scaled to web=3\n")
	for _, r := range reports {
		if s, ok := strings.CutPrefix(r.steering, "off: "); ok {
			fmt.Fprintf(&b, "connection steering was off: %s\n", s)
			break
		}
	}
	b.WriteString("p99-sw: p99 of requests that started during a switch (CLI call + 500ms); switch-med: median CLI time of a switch\n")
	return b.String()
}

func rateString(r float64) string {
	if r == 0 {
		return "unpaced"
	}
	return fmt.Sprintf("%.0f req/s", r)
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}

func median(ds []time.Duration) time.Duration { return percentile(ds, 50) }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
