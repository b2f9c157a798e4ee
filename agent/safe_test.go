package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/supervisor"
)

// helloDir holds the examples/hello binary, built once per test binary
// (TestMain removes it).
var (
	helloDir  string
	helloOnce sync.Once
	helloErr  error
)

// helloBinary builds examples/hello with the go tool running the tests.
func helloBinary(t *testing.T) string {
	t.Helper()
	helloOnce.Do(func() {
		helloDir, helloErr = os.MkdirTemp("", "berth-agent-hello-")
		if helloErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(helloDir, "hello"), "github.com/berth-dev/berth/examples/hello")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			helloErr = fmt.Errorf("go build examples/hello: %v\n%s", err, out)
		}
	})
	if helloErr != nil {
		t.Fatal(helloErr)
	}
	return filepath.Join(helloDir, "hello")
}

// helloTar packs the hello app with a manifest (none when "") as a plain
// tar; marker makes each build distinct.
func helloTar(t *testing.T, manifest, marker string) []byte {
	t.Helper()
	return helloTarFiles(t, "web: ./hello\n", manifest, marker)
}

// helloTarFiles is helloTar with a Procfile of its own.
func helloTarFiles(t *testing.T, procfile, manifest, marker string) []byte {
	t.Helper()
	bin, err := os.ReadFile(helloBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	files := []struct {
		name string
		mode int64
		data []byte
	}{
		{"Procfile", 0o644, []byte(procfile)},
		{"VERSION", 0o644, []byte(marker + "\n")},
		{"hello", 0o755, bin},
	}
	if manifest != "" {
		files = append(files, struct {
			name string
			mode int64
			data []byte
		}{"berth.json", 0o644, []byte(manifest)})
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.data)), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Manifests of the hello app: an HTTP check on /up with short timings,
// with and without the agent-owned socket.
const (
	socketManifest = `{"processes":{"web":{"healthcheck":{"http":"/up","interval":"100ms","timeout":"500ms","retries":3},"socket_activation":true,"stop_timeout":"5s"}}}`
	bindManifest   = `{"processes":{"web":{"healthcheck":{"http":"/up","interval":"100ms","timeout":"500ms","retries":3},"stop_timeout":"5s"}}}`
)

// freeBasePort returns a base port whose first 4 ports are free now, so
// tests that run real servers do not collide with each other or with
// other suites on this host.
func freeBasePort(t *testing.T) int {
	t.Helper()
	for range 100 {
		base := 20000 + rand.IntN(20000)
		free := true
		for p := base; p < base+4 && free; p++ {
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
	t.Fatal("no free ports")
	return 0
}

// safeConfig is testConfig with real ports.
func safeConfig(t *testing.T) Config {
	cfg := testConfig(dataDir(t))
	cfg.BasePort = freeBasePort(t)
	return cfg
}

// get sends one GET on a new connection and returns the body.
func get(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, body)
	}
	return string(body), nil
}

func newClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

// lastEvent returns the app's newest event.
func (ta *testAgent) lastEvent(t *testing.T, app string) api.Event {
	t.Helper()
	evs, err := ta.Events(context.Background(), app, 0, 0)
	if err != nil || len(evs) == 0 {
		t.Fatalf("events of %s: %v, %v", app, evs, err)
	}
	return evs[len(evs)-1]
}

// activeRelease returns the app's active release number.
func (ta *testAgent) activeRelease(t *testing.T, app string) int {
	t.Helper()
	apps, err := ta.Apps(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range apps {
		if a.Name == app {
			return a.ActiveRelease
		}
	}
	t.Fatalf("no app %s", app)
	return 0
}

// TestSafe_UnhealthyReleaseRolledBack ensures a release whose web process
// never passes its health check is rolled back to the previous release,
// in both modes: it is marked failed with the check's output and the
// instance's last log lines, the config and processes of the previous
// release are back (in socket mode the old process was never stopped),
// an event says so and the error names all of it.
func TestSafe_UnhealthyReleaseRolledBack(t *testing.T) {
	for _, tc := range []struct{ mode, manifest string }{{"socket", socketManifest}, {"bind", bindManifest}} {
		t.Run(tc.mode, func(t *testing.T) {
			ta := startAgent(t, safeConfig(t))
			ctx := context.Background()
			ta.mustDeploy(t, "hello", helloTar(t, tc.manifest, "one"))
			p1 := ta.procs(t, "hello")["web.1"]
			if p1.Mode != tc.mode || p1.Health != "healthy" || p1.State != "running" {
				t.Fatalf("web.1 after deploy = %+v, want a healthy %s-mode instance", p1, tc.mode)
			}

			var steps []string
			failedStep := ""
			_, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"HELLO_FAIL_HEALTH": "1"}},
				func(p api.Progress) {
					steps = append(steps, p.Step)
					if strings.HasPrefix(p.Message, "v2 failed") {
						failedStep = p.Step
					}
				})
			if !errors.Is(err, ErrRolledBack) || !errors.Is(err, ErrUnhealthy) {
				t.Fatalf("unhealthy switch: %v, want ErrRolledBack and ErrUnhealthy", err)
			}
			for _, want := range []string{"hello v2 failed", "web.1 failed its health check (http GET /up)", "503", "rolled back to v1, v2 marked failed"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			t.Logf("switch error: %v", err)
			if failedStep != "health" || !slices.Contains(steps, "rollback") {
				t.Errorf("steps = %v (failed step %q), want the failed health step and a rollback step", steps, failedStep)
			}

			v2, err := ta.Release(ctx, "hello", 2)
			if err != nil {
				t.Fatal(err)
			}
			if v2.Status != "failed" || !strings.Contains(v2.Reason, "503") {
				t.Errorf("v2 = %s (%s), want failed with the check's output", v2.Status, v2.Reason)
			}
			if !strings.Contains(v2.Output, "last log lines of web.1") || !strings.Contains(v2.Output, "release v2 of hello") ||
				!strings.Contains(v2.Output, "unhealthy (HELLO_FAIL_HEALTH)") {
				t.Errorf("v2 output lacks the log lines and the check's output:\n%s", v2.Output)
			}
			if n := ta.activeRelease(t, "hello"); n != 1 {
				t.Fatalf("active release = v%d, want v1", n)
			}
			if cfg, _ := ta.Config(ctx, "hello"); cfg["HELLO_FAIL_HEALTH"] != "" {
				t.Errorf("config after rollback = %v, want v1's", cfg)
			}
			if e := ta.lastEvent(t, "hello"); e.Kind != "rollback" || !strings.Contains(e.Message, "rolled back to v1") {
				t.Errorf("last event = %+v, want the rollback", e)
			}

			ps := ta.procs(t, "hello")
			p := ps["web.1"]
			if len(ps) != 1 || p.Release != 1 || p.State != "running" {
				t.Fatalf("processes after rollback = %+v, want web.1 of v1", ps)
			}
			waitFor(t, 10*time.Second, "web.1 of v1 healthy", func() bool { return ta.procs(t, "hello")["web.1"].Health == "healthy" })
			if body, err := get(newClient(), fmt.Sprintf("http://127.0.0.1:%d/", p.Port)); err != nil || !strings.Contains(body, "hello from hello v1") {
				t.Errorf("GET / after rollback = %q, %v", body, err)
			}
			if n := len(appProcs(t, ta.cfg.DataDir, "hello")); n != 1 {
				t.Errorf("%d processes of hello run, want 1", n)
			}
		})
	}
}

// TestSafe_CrashDuringProbationRolledBack ensures a release that passes
// its health check but crashes 3 s after start is rolled back within the
// probation window, by the switch that made it when its caller waits
// through probation (--wait).
func TestSafe_CrashDuringProbationRolledBack(t *testing.T) {
	cfg := safeConfig(t)
	ta := startAgent(t, cfg)
	ctx := api.WithProbationWait(context.Background())
	ta.mustDeploy(t, "hello", helloTar(t, socketManifest, "one"))
	cfg.Probation = 5 * time.Second
	if err := ta.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	_, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"HELLO_CRASH_AFTER": "3s"}}, nil)
	if !errors.Is(err, ErrRolledBack) || !errors.Is(err, ErrCrashed) {
		t.Fatalf("switch to a crashing release: %v, want ErrRolledBack and ErrCrashed", err)
	}
	if !strings.Contains(err.Error(), "web.1 exited (exit 1) during the 5s probation") || !strings.Contains(err.Error(), "rolled back to v1") {
		t.Errorf("error = %q", err)
	}
	v2, _ := ta.Release(ctx, "hello", 2)
	if v2.Status != "failed" || !strings.Contains(v2.Output, "crashing on purpose after 3s") {
		t.Errorf("v2 = %s, output:\n%s", v2.Status, v2.Output)
	}
	if n := ta.activeRelease(t, "hello"); n != 1 {
		t.Fatalf("active release = v%d, want v1", n)
	}
	ps := ta.procs(t, "hello")
	if p := ps["web.1"]; len(ps) != 1 || p.Release != 1 || p.State != "running" {
		t.Fatalf("processes after rollback = %+v, want web.1 of v1", ps)
	}
	if body, err := get(newClient(), fmt.Sprintf("http://127.0.0.1:%d/", ps["web.1"].Port)); err != nil || !strings.Contains(body, "hello from hello v1") {
		t.Errorf("GET / after rollback = %q, %v", body, err)
	}
}

// TestSafe_CrashAfterReturnRolledBack ensures a switch returns once
// its new instance is healthy, saying that probation goes on in the
// agent, and that a crash of that instance 10 s later, inside the
// default probation, still rolls the release back: the release is marked
// failed, a "rollback" event says why, and the previous release serves
// again.
func TestSafe_CrashAfterReturnRolledBack(t *testing.T) {
	cfg := safeConfig(t)
	ta := startAgent(t, cfg)
	ctx := context.Background()
	ta.mustDeploy(t, "hello", helloTar(t, socketManifest, "one"))
	cfg.Probation = DefaultProbation
	if err := ta.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	var steps []string
	rel, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"HELLO_CRASH_AFTER": "10s"}},
		func(p api.Progress) { steps = append(steps, p.Step+": "+p.Message) })
	if err != nil {
		t.Fatalf("switch to a release that crashes later: %v", err)
	}
	if rel.Version != 2 || rel.Status != "active" || rel.Probation != api.ProbationWatching {
		t.Fatalf("switch returned %+v, want v2 active with probation %q", rel, api.ProbationWatching)
	}
	if !slices.ContainsFunc(steps, func(s string) bool {
		return strings.HasPrefix(s, "probation: the agent watches v2 for 30s more") && strings.Contains(s, "v1 comes back")
	}) {
		t.Errorf("steps do not say probation goes on in the agent:\n%s", strings.Join(steps, "\n"))
	}
	if p := ta.procs(t, "hello")["web.1"]; p.Release != 2 {
		t.Fatalf("web.1 runs v%d once the switch returned, want v2", p.Release)
	}
	var last api.Event
	waitFor(t, 40*time.Second, "the rollback event", func() bool {
		evs, err := ta.Events(ctx, "hello", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		last = evs[len(evs)-1]
		return last.Kind == "rollback"
	})
	if !strings.Contains(last.Message, "rolled back to v1") {
		t.Errorf("rollback event = %+v, want the rollback to v1", last)
	}
	if n := ta.activeRelease(t, "hello"); n != 1 {
		t.Fatalf("active release after the rollback = v%d, want v1", n)
	}
	v2, _ := ta.Release(ctx, "hello", 2)
	if v2.Status != "failed" || !strings.Contains(v2.Reason, "during the 30s probation") || !strings.Contains(v2.Output, "crashing on purpose after 10s") {
		t.Errorf("v2 = %s (%s), output:\n%s", v2.Status, v2.Reason, v2.Output)
	}
	waitFor(t, 10*time.Second, "web.1 of v1 healthy", func() bool {
		p := ta.procs(t, "hello")["web.1"]
		return p.Release == 1 && p.Health == "healthy"
	})
	ps := ta.procs(t, "hello")
	if body, err := get(newClient(), fmt.Sprintf("http://127.0.0.1:%d/", ps["web.1"].Port)); err != nil || !strings.Contains(body, "hello from hello v1") {
		t.Errorf("GET / after rollback = %q, %v", body, err)
	}
}

// TestSafe_NewerChangeEndsProbation ensures a change to the app during
// the probation of its last switch ends that probation: the instance
// the newer change replaced is not the previous release's to roll back.
func TestSafe_NewerChangeEndsProbation(t *testing.T) {
	cfg := safeConfig(t)
	ta := startAgent(t, cfg)
	ctx := context.Background()
	ta.mustDeploy(t, "hello", helloTar(t, socketManifest, "one"))
	cfg.Probation = time.Minute
	if err := ta.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"A": "1"}}, nil); err != nil {
		t.Fatal(err)
	}
	// The next switch supersedes v2's probation; v3's stop of v2's
	// instance is no failure of v2.
	rel, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"A": "2"}}, nil)
	if err != nil || rel.Version != 3 {
		t.Fatalf("second switch = v%d, %v", rel.Version, err)
	}
	for _, v := range []int{2, 3} {
		r, err := ta.Release(ctx, "hello", v)
		if err != nil || r.Status == "failed" {
			t.Fatalf("v%d = %+v, %v", v, r, err)
		}
	}
	if n := ta.activeRelease(t, "hello"); n != 3 {
		t.Fatalf("active release = v%d, want v3", n)
	}
	ta.probMu.Lock()
	run := ta.probations["hello"]
	ta.probMu.Unlock()
	if run == nil || run.version != 3 {
		t.Fatalf("running probation = %+v, want v3's alone", run)
	}
}

// TestSafe_LivenessRestart ensures a running instance that fails its
// check is restarted by the supervisor, each time with an "unhealthy"
// event and recorded as "restarted: unhealthy", never as a crash (no
// crash event, no crash backoff), and that it is healthy again once its
// check passes.
func TestSafe_LivenessRestart(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	ta.mustDeploy(t, "hello", tarball(t, map[string]string{
		"Procfile":   "web: exec sleep 1000\n",
		"berth.json": `{"processes":{"web":{"healthcheck":{"exec":"test ! -e \"$TMPDIR/sick\"","interval":"50ms","timeout":"2s","retries":2}}}}`,
	}))
	p1 := ta.procs(t, "hello")["web.1"]
	if p1.Health != "healthy" || p1.Mode != "bind" {
		t.Fatalf("web.1 = %+v, want healthy in bind mode", p1)
	}
	sick := ta.appDir("hello", "tmp", "sick")
	if err := os.WriteFile(sick, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	events := func(kind, text string) int {
		evs, err := ta.Events(ctx, "hello", 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range evs {
			if e.Kind == kind && strings.Contains(e.Message, text) {
				n++
			}
		}
		return n
	}
	waitFor(t, 20*time.Second, "three liveness restarts", func() bool {
		return events("unhealthy", "web.1 failed its health check (exec test ! -e \"$TMPDIR/sick\")") >= 3
	})
	waitFor(t, 20*time.Second, "web.1 restarted", func() bool {
		p := ta.procs(t, "hello")["web.1"]
		return p.Restarts >= 2 && p.PID != p1.PID && p.PID != 0
	})
	p := ta.procs(t, "hello")["web.1"]
	if !strings.HasPrefix(p.LastExit, "restarted: unhealthy") || p.State == "crashed" || p.State == "backoff" {
		t.Fatalf("web.1 after liveness failures = %+v, want its last exit recorded as restarted: unhealthy", p)
	}
	if n := events("crash", ""); n != 0 {
		t.Fatalf("%d crash events for liveness restarts", n)
	}
	if err := os.Remove(sick); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "web.1 healthy again", func() bool {
		p := ta.procs(t, "hello")["web.1"]
		return p.State == "running" && p.Health == "healthy"
	})
	if n := ta.activeRelease(t, "hello"); n != 1 {
		t.Fatalf("a liveness failure changed the active release to v%d", n)
	}
}

// TestSafe_NoChecksSwitchesAsBefore ensures a release without health
// checks switches stop-then-start once its processes run for the settle
// time, with each step reported, and shows no health.
func TestSafe_NoChecksSwitchesAsBefore(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	ta.mustDeploy(t, "hello", webApp(t, ""))
	old := ta.procs(t, "hello")["web.1"]
	var steps []string
	v2, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"FOO": "x"}},
		func(p api.Progress) { steps = append(steps, p.Step) })
	if err != nil || v2.Status != "active" {
		t.Fatalf("switch = %+v, %v", v2, err)
	}
	if want := []string{"record", "record", "stop", "start", "health", "probation", "done"}; !slices.Equal(steps, want) {
		t.Errorf("steps = %v, want %v", steps, want)
	}
	cur := ta.procs(t, "hello")["web.1"]
	if cur.Release != 2 || cur.PID == old.PID || cur.Mode != "bind" || cur.Health != "" || cur.State != "running" {
		t.Fatalf("web.1 = %+v (old pid %d)", cur, old.PID)
	}
	if n := len(appProcs(t, ta.cfg.DataDir, "hello")); n != 1 {
		t.Fatalf("%d processes, want 1", n)
	}
}

// TestSafe_SocketKeepsAnswering ensures a socket-activated type gets its
// stable port as fd 3 (LISTEN_FDS, LISTEN_PID) with PORT set, and that a
// client sending requests throughout a deploy sees no failure: the new
// instance starts on the same socket and the old one stops only after it
// is healthy.
func TestSafe_SocketKeepsAnswering(t *testing.T) {
	ta := startAgent(t, safeConfig(t))
	ta.mustDeploy(t, "hello", helloTar(t, socketManifest, "one"))
	p1 := ta.procs(t, "hello")["web.1"]
	env := procEnv(t, p1.PID)
	if env["LISTEN_FDS"] != "1" || env["LISTEN_PID"] != strconv.Itoa(p1.PID) || env["PORT"] != strconv.Itoa(p1.Port) {
		t.Errorf("env of web.1 (pid %d, port %d): LISTEN_FDS=%q LISTEN_PID=%q PORT=%q",
			p1.PID, p1.Port, env["LISTEN_FDS"], env["LISTEN_PID"], env["PORT"])
	}
	lines, _ := ta.Logs(context.Background(), "hello", api.LogQuery{Instance: "web.1"})
	if !slices.ContainsFunc(lines, func(l api.LogLine) bool { return strings.Contains(l.Text, "socket") }) {
		t.Errorf("hello did not log that it serves the passed socket: %+v", lines)
	}

	url := fmt.Sprintf("http://127.0.0.1:%d/", p1.Port)
	stop := make(chan struct{})
	type result struct {
		sent   int
		failed []error
		seen   map[string]bool
	}
	done := make(chan result)
	go func() {
		client := newClient()
		r := result{seen: map[string]bool{}}
		for {
			select {
			case <-stop:
				done <- r
				return
			default:
			}
			body, err := get(client, url)
			r.sent++
			if err != nil {
				r.failed = append(r.failed, err)
				continue
			}
			if i := strings.Index(body, " v"); i >= 0 {
				r.seen[strings.Fields(body[i:])[0]] = true
			}
		}
	}()
	var steps []string
	_, err := ta.Deploy(context.Background(), api.DeployRequest{App: "hello", Body: bytes.NewReader(helloTar(t, socketManifest, "two"))},
		func(p api.Progress) { steps = append(steps, p.Step) })
	close(stop)
	r := <-done
	if err != nil {
		t.Fatal(err)
	}
	if len(r.failed) > 0 || r.sent == 0 || !r.seen["v1"] || !r.seen["v2"] {
		t.Fatalf("%d requests, %d failed (%v), releases answering %v: want none failed and both releases", r.sent, len(r.failed), r.failed, r.seen)
	}
	if want := []string{"record", "start", "health", "stop", "probation", "done"}; !slices.Equal(steps[2:], want) {
		t.Errorf("steps = %v, want upload, unpack, then %v: the old instance stopped once the new one was healthy", steps, want)
	}
	ps := ta.procs(t, "hello")
	if p := ps["web.1"]; len(ps) != 1 || p.Release != 2 || p.Mode != "socket" || p.Port != p1.Port || p.PID == p1.PID {
		t.Fatalf("processes after the switch = %+v", ps)
	}
	if n := len(appProcs(t, ta.cfg.DataDir, "hello")); n != 1 {
		t.Fatalf("%d processes of hello, want 1", n)
	}
	t.Logf("%d requests during the switch, none failed", r.sent)
}

// TestSafe_FirstDeployFails ensures a first release that never becomes
// healthy is marked failed and its processes stopped, since there is
// nothing to roll back to.
func TestSafe_FirstDeployFails(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	_, _, err := ta.deploy(t, "hello", tarball(t, map[string]string{
		"Procfile":   "web: exec sleep 1000\n",
		"berth.json": `{"processes":{"web":{"healthcheck":{"exec":"echo not ready; exit 1","interval":"50ms","retries":2}}}}`,
	}))
	if !errors.Is(err, ErrRolledBack) || !strings.Contains(err.Error(), "no earlier release to roll back to") || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("deploy = %v", err)
	}
	if n := ta.activeRelease(t, "hello"); n != 0 {
		t.Fatalf("active release = v%d, want none", n)
	}
	if ps := ta.procs(t, "hello"); len(ps) != 0 {
		t.Fatalf("processes = %+v, want none", ps)
	}
	if n := len(appProcs(t, ta.cfg.DataDir, "hello")); n != 0 {
		t.Fatalf("%d processes of hello, want 0", n)
	}
}

// TestSafe_BadCheckRefused ensures a health check the build store lets
// through but the agent cannot probe fails the release before anything
// is activated: the running release and its process are untouched.
// A tcp check is refused with socket activation, where it could not
// fail.
func TestSafe_BadCheckRefused(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ta.mustDeploy(t, "hello", webApp(t, ""))
	old := ta.procs(t, "hello")["web.1"]
	for i, tc := range []struct{ manifest, want string }{
		{`{"processes":{"web":{"healthcheck":{"http":"/up#frag"}}}}`, `"/up#frag"`},
		{`{"processes":{"web":{"healthcheck":{"tcp":true},"socket_activation":true}}}`, "tcp health check cannot fail with socket_activation"},
	} {
		_, _, err := ta.deploy(t, "hello", tarball(t, map[string]string{"Procfile": webProcfile, "berth.json": tc.manifest}))
		wantKind(t, err, api.ErrInvalid)
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %q does not say %q", err, tc.want)
		}
		rel, err := ta.Release(context.Background(), "hello", 2+i)
		if err != nil || rel.Status != "failed" {
			t.Errorf("v%d = %+v, %v, want failed", 2+i, rel, err)
		}
		if n := ta.activeRelease(t, "hello"); n != 1 {
			t.Fatalf("active release = v%d, want v1", n)
		}
		if p := ta.procs(t, "hello")["web.1"]; p.PID != old.PID || p.Release != 1 {
			t.Fatalf("web.1 = %+v, want v1's untouched process %d", p, old.PID)
		}
	}
}

// TestSafe_ModeChanges ensures a type can move between bind and socket
// mode across deploys (the bind-mode process gives the port back before
// the agent listens on it, and the agent's socket is closed before a
// bind-mode process needs the port), and that scaling a socket-mode type
// down closes the socket of the slot that went away.
func TestSafe_ModeChanges(t *testing.T) {
	ta := startAgent(t, safeConfig(t))
	ctx := context.Background()
	client := newClient()
	for i, tc := range []struct{ manifest, mode string }{{bindManifest, "bind"}, {socketManifest, "socket"}, {bindManifest, "bind"}, {socketManifest, "socket"}} {
		v := ta.mustDeploy(t, "hello", helloTar(t, tc.manifest, strconv.Itoa(i)))
		p := ta.procs(t, "hello")["web.1"]
		if p.Mode != tc.mode || p.Release != v.Version || p.Health != "healthy" {
			t.Fatalf("deploy %d: web.1 = %+v, want healthy v%d in %s mode", i, p, v.Version, tc.mode)
		}
		if body, err := get(client, fmt.Sprintf("http://127.0.0.1:%d/", p.Port)); err != nil || !strings.Contains(body, fmt.Sprintf("v%d", v.Version)) {
			t.Fatalf("deploy %d: GET / = %q, %v", i, body, err)
		}
	}
	if _, err := ta.Scale(ctx, "hello", map[string]int{"web": 2}); err != nil {
		t.Fatal(err)
	}
	web2 := ta.procs(t, "hello")["web.2"]
	if web2.Mode != "socket" || web2.Health != "healthy" {
		t.Fatalf("web.2 = %+v", web2)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(web2.Port))
	if _, err := get(client, "http://"+addr+"/"); err != nil {
		t.Fatalf("web.2 does not answer: %v", err)
	}
	if _, err := ta.Scale(ctx, "hello", map[string]int{"web": 1}); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("web.2's port %d still listens after scaling down", web2.Port)
	}
}

// clientLoop sends GET / to url until stop is closed and tells which
// releases answered and what failed.
type clientLoop struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	sent int
	fail []error
	seen []string // the release of each answer, in order
}

func startClientLoop(url string) *clientLoop {
	c := &clientLoop{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		client := newClient()
		for {
			select {
			case <-c.stop:
				return
			default:
			}
			body, err := get(client, url)
			c.mu.Lock()
			c.sent++
			if err != nil {
				c.fail = append(c.fail, fmt.Errorf("%s: %w", time.Now().Format("15:04:05.000"), err))
			} else if i := strings.Index(body, " v"); i >= 0 {
				c.seen = append(c.seen, strings.Fields(body[i:])[0])
			}
			c.mu.Unlock()
		}
	}()
	return c
}

// answers returns how many answers the loop has had so far.
func (c *clientLoop) answers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

func (c *clientLoop) finish() {
	close(c.stop)
	<-c.done
}

// TestSafe_SocketRollbackKeepsOld ensures a socket-mode release that
// never becomes healthy is rolled back while the old instance keeps
// serving: its health is probed on the shared socket (probes the old one
// answers do not count), the old process is never sent its stop signal
// (same pid, no restart, only the new one's shutdown in the log), a
// client sending requests throughout sees no failure, and only v1
// answers after the rollback.
func TestSafe_SocketRollbackKeepsOld(t *testing.T) {
	ta := startAgent(t, safeConfig(t))
	ctx := context.Background()
	ta.mustDeploy(t, "hello", helloTar(t, socketManifest, "one"))
	p1 := ta.procs(t, "hello")["web.1"]
	loop := startClientLoop(fmt.Sprintf("http://127.0.0.1:%d/", p1.Port))
	defer func() {
		select {
		case <-loop.stop:
		default:
			loop.finish()
		}
	}()
	waitFor(t, 10*time.Second, "the client's first answers", func() bool { return loop.answers() > 10 })

	var steps []string
	_, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"HELLO_FAIL_HEALTH": "1"}},
		func(p api.Progress) { steps = append(steps, p.Step) })
	if !errors.Is(err, ErrRolledBack) || !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("switch to a release that never becomes healthy: %v, want a rollback for its 503s", err)
	}
	if i := slices.Index(steps, "rollback"); i < 0 || slices.Contains(steps[:slices.Index(steps, "health")+1], "stop") {
		t.Errorf("steps = %v: want the failed health step and the rollback with no stop before it", steps)
	}
	after := loop.answers()
	waitFor(t, 10*time.Second, "answers after the rollback", func() bool { return loop.answers() > after+50 })
	loop.finish()

	if len(loop.fail) > 0 {
		t.Fatalf("%d of %d requests failed: %v", len(loop.fail), loop.sent, loop.fail)
	}
	for _, v := range loop.seen[after:] {
		if v != "v1" {
			t.Fatalf("%s answered after the rollback; want only v1 (answers after it: %v)", v, loop.seen[after:])
		}
	}
	ps := ta.procs(t, "hello")
	p := ps["web.1"]
	if len(ps) != 1 || p.Release != 1 || p.PID != p1.PID || p.Restarts != 0 || !p.StartedAt.Equal(p1.StartedAt) || p.State != "running" {
		t.Fatalf("web.1 after the rollback = %+v, want v1's untouched process %d", p, p1.PID)
	}
	if n := len(appProcs(t, ta.cfg.DataDir, "hello")); n != 1 {
		t.Fatalf("%d processes of hello, want 1", n)
	}
	// The slot's log file holds both releases' lines.
	lines, err := supervisor.ReadLogFile(ta.appDir("hello", "logs", "web.1.log"), 0)
	if err != nil {
		t.Fatal(err)
	}
	shutdowns, started := 0, 0
	for _, l := range lines {
		if strings.Contains(l.Text, "hello: shutting down") {
			shutdowns++
		}
		if strings.Contains(l.Text, "hello: release v2 of hello") {
			started++
		}
	}
	if shutdowns != 1 || started != 1 {
		t.Errorf("web.1's log: %d shutdowns and %d starts of v2, want 1 of each (v2's; v1 never got a stop signal)", shutdowns, started)
	}
	// Its checks, paused while v2 shared the socket, go on.
	waitFor(t, 10*time.Second, "web.1 of v1 healthy", func() bool { return ta.procs(t, "hello")["web.1"].Health == "healthy" })
	t.Logf("%d requests, none failed; %d answered after the rollback, all by v1", loop.sent, len(loop.seen)-after)
}

// TestSafe_SocketFallback ensures a switch whose probes never reach the
// new instance while the old one shares its socket (here it accepts
// nothing for its first 2 s) falls back to stopping the old one first and
// probing through the port: the connections queue in the kernel, none
// fails, and the new release becomes active.
func TestSafe_SocketFallback(t *testing.T) {
	const manifest = `{"processes":{"web":{"healthcheck":{"http":"/up","interval":"100ms","timeout":"4s","retries":3},"socket_activation":true,"stop_timeout":"5s"}}}`
	ta := startAgent(t, safeConfig(t))
	ctx := context.Background()
	ta.mustDeploy(t, "hello", helloTar(t, manifest, "one"))
	p1 := ta.procs(t, "hello")["web.1"]
	loop := startClientLoop(fmt.Sprintf("http://127.0.0.1:%d/", p1.Port))
	waitFor(t, 10*time.Second, "the client's first answers", func() bool { return loop.answers() > 10 })
	var steps []string
	v2, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"HELLO_START_DELAY": "2s"}},
		func(p api.Progress) {
			steps = append(steps, p.Step)
			t.Logf("%s step %s: %s", time.Now().Format("15:04:05.000"), p.Step, p.Message)
		})
	after := loop.answers()
	if err == nil {
		waitFor(t, 10*time.Second, "answers after the switch", func() bool { return loop.answers() > after+20 })
	}
	loop.finish()
	if err != nil || v2.Status != "active" {
		t.Fatalf("switch = %+v, %v", v2, err)
	}
	if want := []string{"record", "start", "stop", "health", "probation", "done"}; !slices.Equal(steps[1:], want) {
		t.Errorf("steps = %v, want record, then %v: the old instance stopped before the new one's check", steps, want)
	}
	if len(loop.fail) > 0 {
		t.Fatalf("%d of %d requests failed: %v", len(loop.fail), loop.sent, loop.fail)
	}
	if p := ta.procs(t, "hello")["web.1"]; p.Release != 2 || p.Health != "healthy" || p.PID == p1.PID {
		t.Fatalf("web.1 after the switch = %+v", p)
	}
	for _, v := range loop.seen[after:] {
		if v != "v2" {
			t.Fatalf("%s answered after the switch, want v2", v)
		}
	}
}

// TestSafe_ScaleDuringProbationKeepsLiveness ensures instances whose
// probation a scale cut short (the scale keeps them) get liveness
// restarts all the same, as they would once their probation passed.
func TestSafe_ScaleDuringProbationKeepsLiveness(t *testing.T) {
	cfg := safeConfig(t)
	ta := startAgent(t, cfg)
	ctx := context.Background()
	ta.mustDeploy(t, "hello", helloTar(t, socketManifest, "one"))
	cfg.Probation = time.Hour
	if err := ta.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"A": "1"}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ta.Scale(ctx, "hello", map[string]int{"web": 1}); err != nil {
		t.Fatal(err)
	}
	var web *instance
	for _, in := range ta.appInstances("hello") {
		web = in
	}
	if web == nil || web.Release != 2 {
		t.Fatalf("instance after the scale = %+v, want web.1 of v2", web)
	}
	waitFor(t, 10*time.Second, "liveness restarts of web.1 enabled", func() bool { return web.prober.live.Load() })
}
