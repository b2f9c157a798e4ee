package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with the current output")

// now is the fixed "current time" of the golden tests.
var now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// goldenBackend is a fixed, in-memory Backend: the test double at the
// socket boundary, so the golden files show what the CLI makes of known
// API answers.
type goldenBackend struct{}

var digest = strings.Repeat("ab12", 16)

func (goldenBackend) Info(context.Context) (api.AgentInfo, error) {
	return api.AgentInfo{Version: "1.4.0", PID: 4242, DataDir: "/var/lib/berth", StartedAt: now.Add(-(2*time.Hour + 5*time.Minute)), Apps: 2, Processes: 3}, nil
}

func (goldenBackend) Apps(context.Context) ([]api.App, error) {
	return []api.App{
		{Name: "shop", User: "shop", CreatedAt: now.Add(-72 * time.Hour), ActiveRelease: 7, Formation: map[string]int{"web": 2, "worker": 1}},
		{Name: "blog", CreatedAt: now.Add(-3 * time.Minute), Formation: map[string]int{}},
	}, nil
}

func checkApp(app string) error {
	if app != "shop" {
		return fmt.Errorf("%w: app %q (see `berth apps`)", api.ErrNotFound, app)
	}
	return nil
}

func (goldenBackend) CreateApp(_ context.Context, name string) (api.App, error) {
	if name == "shop" {
		return api.App{}, fmt.Errorf("%w: app %q exists already", api.ErrConflict, name)
	}
	return api.App{Name: name, CreatedAt: now, Formation: map[string]int{}}, nil
}

func (goldenBackend) DestroyApp(_ context.Context, name string) error { return checkApp(name) }

func (goldenBackend) SetAppUser(_ context.Context, name, user string) (api.App, error) {
	return api.App{Name: name, User: user, CreatedAt: now, Formation: map[string]int{}}, checkApp(name)
}

func release(v int, status, desc string) api.Release {
	return api.Release{App: "shop", Version: v, Build: digest, Description: desc, Status: status,
		CreatedAt: now.Add(-time.Duration(8-v) * time.Hour), ConfigKeys: []string{"DATABASE_URL", "FOO"}, Formation: map[string]int{"web": 2, "worker": 1}}
}

func progress(fn api.ProgressFunc, steps ...string) {
	for i := 0; i < len(steps); i += 2 {
		fn(api.Progress{Time: now, Step: steps[i], Message: steps[i+1], Elapsed: time.Duration(i+1) * 37 * time.Millisecond})
	}
}

func (goldenBackend) Deploy(_ context.Context, req api.DeployRequest, fn api.ProgressFunc) (api.Release, error) {
	b, err := io.ReadAll(req.Body)
	if err != nil {
		return api.Release{}, err
	}
	if string(b) != "tarball bytes\n" {
		return api.Release{}, fmt.Errorf("%w: not a tarball: %q", api.ErrInvalid, b)
	}
	progress(fn, "upload", "received 14 B", "unpack", "unpacked build ab12ab12ab12: 3 files", "release-phase", "release phase of v8 succeeded",
		"stop", "stopped 3 old instance(s)", "start", "3 instance(s) of v8 running")
	return release(8, "active", "Deploy ab12ab1"), nil
}

func (goldenBackend) Releases(_ context.Context, app string) ([]api.Release, error) {
	if err := checkApp(app); err != nil {
		return nil, err
	}
	failed := release(6, "failed", "Deploy 99ffee0")
	failed.Reason = "release phase exited with status 1"
	return []api.Release{release(7, "active", "Set FOO"), failed, release(5, "superseded", "Deploy ab12ab1")}, nil
}

func (goldenBackend) Release(_ context.Context, app string, v int) (api.Release, error) {
	if err := checkApp(app); err != nil {
		return api.Release{}, err
	}
	if v != 6 {
		return api.Release{}, fmt.Errorf("%w: release v%d of %s", api.ErrNotFound, v, app)
	}
	r := release(6, "failed", "Deploy 99ffee0")
	r.Reason = "release phase exited with status 1"
	r.Config = map[string]string{"FOO": "bar baz", "DATABASE_URL": "postgres://db/shop"}
	r.Output = "migrating...\nerror: table exists\n"
	return r, nil
}

func (goldenBackend) Rollback(_ context.Context, app string, v int, fn api.ProgressFunc) (api.Release, error) {
	if err := checkApp(app); err != nil {
		return api.Release{}, err
	}
	progress(fn, "record", "created v8 from v5", "stop", "stopped 3 old instance(s)", "start", "3 instance(s) of v8 running")
	return release(8, "active", "Rollback to v5"), nil
}

func (goldenBackend) Config(_ context.Context, app string) (map[string]string, error) {
	return map[string]string{"FOO": "bar baz", "DATABASE_URL": "postgres://db/shop", "QUOTE": "it's"}, checkApp(app)
}

func (goldenBackend) SetConfig(ctx context.Context, app string, c api.ConfigChange, fn api.ProgressFunc) (api.Release, error) {
	if err := checkApp(app); err != nil {
		return api.Release{}, err
	}
	rel := release(8, "active", "Set "+strings.Join(sortedKeys(c.Set), ", "))
	if api.WaitsForProbation(ctx) {
		progress(fn, "record", "created v8", "start", "started 3 instance(s) of v8", "health", "3 instance(s) healthy",
			"drain", "the public ports reach the new instances; the old ones drained", "stop", "stopped 3 old instance(s)",
			"probation", "3 instance(s) stayed up for 30s")
		rel.Probation = api.ProbationPassed
		return rel, nil
	}
	progress(fn, "record", "created v8", "start", "started 3 instance(s) of v8", "health", "3 instance(s) healthy",
		"drain", "the public ports reach the new instances; the old ones drained", "stop", "stopped 3 old instance(s)",
		"probation", "the agent watches v8 for 30s more: if it exits or turns unhealthy, it is rolled back (v7 comes back; `berth events` says so)")
	rel.Probation = api.ProbationWatching
	return rel, nil
}

func procs() []api.Process {
	return []api.Process{
		{App: "shop", Instance: "web.1", Type: "web", State: "running", PID: 3101, Release: 7, Port: 5000, StartedAt: now.Add(-(2*time.Hour + 5*time.Minute)), Restarts: 0, Health: "healthy", Mode: "socket", Command: "bin/shop serve", Steering: "on: listens on port 40001"},
		{App: "shop", Instance: "web.2", Type: "web", State: "running", PID: 3102, Release: 7, Port: 5001, StartedAt: now.Add(-45 * time.Second), Restarts: 2, LastExit: "exit 1", Health: "starting", Mode: "socket", Command: "bin/shop serve", Steering: "on: listens on port 40002"},
		{App: "shop", Instance: "worker.1", Type: "worker", State: "backoff", Release: 7, Port: 5002, Restarts: 5, LastExit: "exit 2", NextAttempt: now.Add(3 * time.Second), Mode: "bind", Command: "bin/shop work"},
	}
}

func (goldenBackend) Scale(_ context.Context, app string, f map[string]int) ([]api.Process, error) {
	if err := checkApp(app); err != nil {
		return nil, err
	}
	if _, ok := f["cron"]; ok {
		return nil, fmt.Errorf("%w: shop has no process type cron (its Procfile has web, worker)", api.ErrNotFound)
	}
	return procs(), nil
}

func (goldenBackend) Processes(_ context.Context, app string) ([]api.Process, error) {
	if app == "" {
		p := procs()
		return append(p, api.Process{App: "blog", Instance: "web.1", Type: "web", State: "crashed", Release: 2, Port: 5003, Restarts: 40, LastExit: "signal SIGSEGV", Mode: "bind", Command: "./blog"}), nil
	}
	return procs(), checkApp(app)
}

func (goldenBackend) Restart(_ context.Context, app, target string) error { return checkApp(app) }

func (goldenBackend) Logs(_ context.Context, app string, q api.LogQuery) ([]api.LogLine, error) {
	if err := checkApp(app); err != nil {
		return nil, err
	}
	return []api.LogLine{
		{Time: now.Add(-time.Minute), App: app, Instance: "web.1", Release: 7, Stream: "stdout", Text: "listening on :5000"},
		{Time: now.Add(-30 * time.Second), App: app, Instance: "web.1", Release: 7, Stream: "stderr", Text: "warning: slow query"},
		{Time: now.Add(-20 * time.Second), App: app, Instance: "worker.1", Release: 7, Stream: "stderr", Split: true, Text: "a long line's first piece"},
		{Time: now.Add(-20 * time.Second), App: app, Instance: "worker.1", Release: 7, Stream: "stderr", Text: " and its end"},
		{Time: now.Add(-10 * time.Second), App: app, Instance: "web.1", Release: 8, Stream: "stdout", Text: "after a skip", Missed: 12},
		{Time: now.Add(-5 * time.Second), App: app, Instance: "web.1", Release: 8, Stream: "stdout", Partial: true, Text: "bye"},
	}, nil
}

func (goldenBackend) FollowLogs(ctx context.Context, app string, q api.LogQuery, send func(api.LogLine) error) error {
	return fmt.Errorf("%w: the golden backend does not follow", api.ErrUnavailable)
}

func (goldenBackend) Events(_ context.Context, app string, since uint64, limit int) ([]api.Event, error) {
	return []api.Event{
		{Seq: 1, Time: now.Add(-3 * time.Hour), App: "shop", Kind: "deploy", Message: "v7 Deploy ab12ab1"},
		{Seq: 2, Time: now.Add(-time.Hour), App: "shop", Kind: "crash", Message: "worker.1 exited with status 2"},
		{Seq: 3, Time: now.Add(-time.Minute), Kind: "agent", Message: "agent started (version 1.4.0)"},
	}, nil
}

func (goldenBackend) FollowEvents(ctx context.Context, app string, since uint64, send func(api.Event) error) error {
	return fmt.Errorf("%w: the golden backend does not follow", api.ErrUnavailable)
}

// startGoldenServer serves the golden backend on a real unix socket.
func startGoldenServer(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	ln, err := api.Listen(sock, -1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.NewServer(api.ServerConfig{Backend: goldenBackend{}, GID: -1}, nil).Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock
}

// runCLI runs the command line in-process against sock and returns the
// transcript: the command, stdout, stderr and exit code.
func runCLI(t *testing.T, sock string, stdin string, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	clock := now
	env := &cliEnv{
		stdin:  strings.NewReader(stdin),
		stdout: &stdout,
		stderr: &stderr,
		getenv: func(k string) string {
			if k == "BERTH_SOCKET" {
				return sock
			}
			return ""
		},
		// Each reading of the clock is 250ms later, so durations show.
		now: func() time.Time {
			t := clock
			clock = clock.Add(250 * time.Millisecond)
			return t
		},
		isTTY: func(io.Writer) bool { return false },
	}
	code := run(context.Background(), env, args)
	var b strings.Builder
	fmt.Fprintf(&b, "$ berth %s\n%s", strings.Join(args, " "), stdout.String())
	if stderr.Len() > 0 {
		fmt.Fprintf(&b, "--- stderr\n%s", stderr.String())
	}
	fmt.Fprintf(&b, "--- exit %d\n", code)
	return b.String()
}

// TestCLI_Golden checks the human (and --json) output of every verb
// against testdata/<name>.golden; go test -run TestCLI_Golden -update
// rewrites them.
func TestCLI_Golden(t *testing.T) {
	sock := startGoldenServer(t)
	cases := []struct {
		name  string
		stdin string
		args  []string
	}{
		{"apps", "", []string{"apps"}},
		{"apps_json", "", []string{"apps", "--json"}},
		{"apps_create", "", []string{"apps", "create", "blog"}},
		{"apps_create_conflict", "", []string{"apps", "create", "shop"}},
		{"apps_destroy", "", []string{"apps", "destroy", "shop", "--confirm", "shop"}},
		{"apps_set_user", "", []string{"apps", "set-user", "shop", "www-data"}},
		{"deploy", "tarball bytes\n", []string{"deploy", "-a", "shop", "-"}},
		{"deploy_json", "tarball bytes\n", []string{"deploy", "-a", "shop", "--json", "-"}},
		{"deploy_corrupt", "garbage", []string{"deploy", "-a", "shop", "-"}},
		{"releases", "", []string{"releases", "-a", "shop"}},
		{"releases_info", "", []string{"releases", "info", "v6", "-a", "shop"}},
		{"releases_info_missing", "", []string{"releases", "info", "9", "-a", "shop"}},
		{"rollback", "", []string{"rollback", "-a", "shop", "v5"}},
		{"config", "", []string{"config", "-a", "shop"}},
		{"config_json", "", []string{"config", "-a", "shop", "--json"}},
		{"config_get", "", []string{"config", "get", "FOO", "-a", "shop"}},
		{"config_get_missing", "", []string{"config", "get", "NOPE", "-a", "shop"}},
		{"config_set", "", []string{"config", "set", "-a", "shop", "FOO=1", "BAR=two words"}},
		{"config_set_wait", "", []string{"config", "set", "-a", "shop", "--wait", "FOO=1"}},
		{"scale", "", []string{"scale", "-a", "shop", "web=2", "worker=1"}},
		{"scale_unknown_type", "", []string{"scale", "-a", "shop", "cron=1"}},
		{"ps", "", []string{"ps", "-a", "shop"}},
		{"ps_all", "", []string{"ps"}},
		{"ps_json", "", []string{"ps", "-a", "shop", "--json"}},
		{"ps_unknown_app", "", []string{"ps", "-a", "nope"}},
		{"restart", "", []string{"restart", "-a", "shop", "web.1"}},
		{"logs", "", []string{"logs", "-a", "shop"}},
		{"logs_json", "", []string{"logs", "-a", "shop", "--json"}},
		{"events", "", []string{"events"}},
		{"events_last", "", []string{"events", "-n", "1"}},
		{"version", "", []string{"version"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := runCLI(t, sock, tc.stdin, tc.args...)
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("output differs from %s (run with -update after checking it):\n--- got\n%s--- want\n%s", path, got, want)
			}
		})
	}
}
