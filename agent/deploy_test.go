package agent

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/supervisor"
)

// TestAgent_Deploy ensures that a first deploy creates the app, records
// v1 as active, runs one web process with the documented environment in
// the build dir, points current at the build, and shows up in ps, logs,
// events and the progress steps.
func TestAgent_Deploy(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	body := webApp(t, "")
	rel, steps, err := ta.deploy(t, "hello", body)
	if err != nil {
		t.Fatal(err)
	}
	if rel.Version != 1 || rel.Status != "active" || !strings.HasPrefix(rel.Description, "Deploy ") {
		t.Fatalf("release = %+v", rel)
	}
	var names []string
	for _, s := range steps {
		names = append(names, s.Step)
	}
	for _, want := range []string{"upload", "unpack", "record", "start", "done"} {
		if !slices.Contains(names, want) {
			t.Errorf("progress steps %v lack %q", names, want)
		}
	}

	ps := ta.procs(t, "hello")
	web, ok := ps["web.1"]
	if len(ps) != 1 || !ok {
		t.Fatalf("processes = %+v, want web.1 only", ps)
	}
	if web.State != "running" || web.Release != 1 || web.Port < DefaultBasePort || web.PID == 0 || web.Mode != "bind" {
		t.Fatalf("web.1 = %+v", web)
	}
	ta.waitLog(t, "hello", "web.1", "rel=v1 FOO= port="+strconv.Itoa(web.Port))

	// The sleep the shell exec'd carries the environment.
	env := procEnv(t, web.PID)
	want := map[string]string{"BERTH_APP": "hello", "BERTH_RELEASE": "v1", "BERTH_PROCESS": "web.1",
		"BERTH_BUILD": rel.Build, "PORT": strconv.Itoa(web.Port),
		"TMPDIR": filepath.Join(ta.cfg.DataDir, "apps", "hello", "tmp")}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("env %s = %q, want %q", k, env[k], v)
		}
	}
	if env["HOME"] != env["TMPDIR"] {
		t.Errorf("HOME = %q, want the TMPDIR %q", env["HOME"], env["TMPDIR"])
	}
	if _, ok := env["BERTH_AGENT_TEST_HELPER"]; ok || len(env) > len(want)+4 {
		t.Errorf("agent env leaked into the app: %v", env)
	}
	buildDir := filepath.Join(ta.cfg.DataDir, "builds", rel.Build)
	if cwd, err := os.Readlink("/proc/" + strconv.Itoa(web.PID) + "/cwd"); err != nil || cwd != buildDir {
		t.Errorf("cwd = %q (%v), want %s", cwd, err, buildDir)
	}
	if cur, err := os.Readlink(filepath.Join(ta.cfg.DataDir, "apps", "hello", "current")); err != nil || cur != buildDir {
		t.Errorf("current -> %q (%v), want %s", cur, err, buildDir)
	}
	if os.Geteuid() == 0 {
		if st, err := readProcStatus(web.PID); err != nil || st != strconv.Itoa(DefaultAppUIDs.Min) {
			t.Errorf("uid of web.1 = %q (%v), want the app's own %d", st, err, DefaultAppUIDs.Min)
		}
	}

	apps, err := ta.Apps(ctx)
	if err != nil || len(apps) != 1 || apps[0].ActiveRelease != 1 || apps[0].Formation["web"] != 1 {
		t.Fatalf("apps = %+v, %v", apps, err)
	}
	evs, err := ta.Events(ctx, "hello", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	if !slices.Contains(kinds, "create") || !slices.Contains(kinds, "deploy") {
		t.Errorf("event kinds = %v, want create and deploy", kinds)
	}

	// The same tarball again reuses the build and makes v2.
	rel2, steps, err := ta.deploy(t, "hello", body)
	if err != nil {
		t.Fatal(err)
	}
	if rel2.Version != 2 || rel2.Build != rel.Build {
		t.Fatalf("second deploy = %+v", rel2)
	}
	if !slices.ContainsFunc(steps, func(p api.Progress) bool { return strings.Contains(p.Message, "already imported") }) {
		t.Errorf("second deploy did not reuse the build: %+v", steps)
	}
	ps = ta.procs(t, "hello")
	if ps["web.1"].Release != 2 || ps["web.1"].PID == web.PID {
		t.Fatalf("after redeploy web.1 = %+v (old pid %d)", ps["web.1"], web.PID)
	}
	if got := appProcs(t, ta.cfg.DataDir, "hello"); len(got) != 1 {
		t.Fatalf("processes of hello on the host = %v, want one", got)
	}

	// Stopping the agent stops the app processes.
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	if got := appProcs(t, ta.cfg.DataDir, "hello"); len(got) != 0 {
		t.Fatalf("processes left after the agent stopped: %v", got)
	}
}

// readProcStatus returns the real uid of a process.
func readProcStatus(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			return strings.Fields(rest)[0], nil
		}
	}
	return "", os.ErrNotExist
}

// TestAgent_BadDeploy ensures that a corrupt tarball, a tarball without a
// Procfile, a bad app name and a wrong digest are refused with the
// right kind and change nothing: no app is created, and a running
// release keeps its processes.
func TestAgent_BadDeploy(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()

	_, _, err := ta.deploy(t, "fresh", []byte("this is not a tarball at all, just text"))
	wantKind(t, err, api.ErrInvalid)
	if apps, _ := ta.Apps(ctx); len(apps) != 0 {
		t.Fatalf("a refused first deploy created an app: %+v", apps)
	}

	ta.mustDeploy(t, "hello", webApp(t, ""))
	before := ta.procs(t, "hello")["web.1"]

	cases := map[string]struct {
		app  string
		body []byte
		kind error
	}{
		"corrupt":     {"hello", []byte("\x1f\x8b\x08 truncated gzip"), api.ErrInvalid},
		"no procfile": {"hello", tarball(t, map[string]string{"app.sh": "#!/bin/sh\n"}), api.ErrInvalid},
		"bad name":    {"Hello_World", webApp(t, ""), api.ErrInvalid},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := ta.deploy(t, tc.app, tc.body)
			wantKind(t, err, tc.kind)
		})
	}
	_, err = ta.Deploy(ctx, api.DeployRequest{App: "hello", Body: strings.NewReader(string(webApp(t, "x"))),
		Digest: strings.Repeat("ab", 32)}, nil)
	wantKind(t, err, api.ErrConflict)
	_, err = ta.Deploy(ctx, api.DeployRequest{App: "hello"}, nil)
	wantKind(t, err, api.ErrInvalid)

	rels, err := ta.Releases(ctx, "hello")
	if err != nil || len(rels) != 1 || rels[0].Status != "active" {
		t.Fatalf("releases after refused deploys = %+v, %v", rels, err)
	}
	after := ta.procs(t, "hello")["web.1"]
	if after.PID != before.PID || after.State != "running" {
		t.Fatalf("web.1 changed: before %+v, after %+v", before, after)
	}
}

// TestAgent_RestartPolicyFromManifest ensures a type's restart settings
// in berth.json reach its Spec's Backoff over the agent's own (which a
// type without them keeps), and that a setting that clashes with the
// agent's default it is paired with fails the deploy as invalid before
// the running process is touched.
func TestAgent_RestartPolicyFromManifest(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	const manifest = `{"processes":{"web":{"restart":{"min_run":"200ms","settle":"2s","backoff_initial":"50ms","backoff_max":"1s"}},
		"worker":{"restart":{"backoff_max":"1s"}}}}`
	procfile := webProcfile + "worker: exec sleep 1000\nclock: exec sleep 1000\n"
	ta.mustDeploy(t, "pol", tarball(t, map[string]string{"Procfile": procfile, "berth.json": manifest}))
	want := map[string]supervisor.Backoff{
		"web.1":    {MinRun: 200 * time.Millisecond, Settle: 2 * time.Second, Initial: 50 * time.Millisecond, Max: time.Second},
		"worker.1": {Initial: 10 * time.Millisecond, Max: time.Second, Settle: 300 * time.Millisecond},
		"clock.1":  ta.cfg.Backoff,
	}
	insts := ta.appInstances("pol")
	if len(insts) != len(want) {
		t.Fatalf("instances = %v", insts)
	}
	for _, in := range insts {
		if got := in.spec.Backoff; got != want[in.Instance] {
			t.Errorf("%s: Backoff = %+v, want %+v", in.Instance, got, want[in.Instance])
		}
	}

	before := ta.procs(t, "pol")["web.1"]
	// backoff_initial 1m is valid alone, but above the agent's cap (200ms).
	_, _, err := ta.deploy(t, "pol", tarball(t, map[string]string{"Procfile": procfile,
		"berth.json": `{"processes":{"web":{"restart":{"backoff_initial":"1m"}}}}`}))
	wantKind(t, err, api.ErrInvalid)
	if err == nil || !strings.Contains(err.Error(), "Backoff.Initial") {
		t.Errorf("error %v does not name the clash", err)
	}
	if after := ta.procs(t, "pol")["web.1"]; after.PID != before.PID || after.State != "running" {
		t.Fatalf("web.1 changed: before %+v, after %+v", before, after)
	}
}

// TestAgent_UnknownApp ensures unknown apps, releases and instances are
// ErrNotFound and bad names ErrInvalid, for every operation.
func TestAgent_UnknownApp(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	_, err := ta.Releases(ctx, "nope")
	wantKind(t, err, api.ErrNotFound)
	_, err = ta.Config(ctx, "nope")
	wantKind(t, err, api.ErrNotFound)
	_, err = ta.SetConfig(ctx, "nope", api.ConfigChange{Set: map[string]string{"A": "1"}}, nil)
	wantKind(t, err, api.ErrNotFound)
	_, err = ta.Rollback(ctx, "nope", 0, nil)
	wantKind(t, err, api.ErrNotFound)
	_, err = ta.Scale(ctx, "nope", map[string]int{"web": 2})
	wantKind(t, err, api.ErrNotFound)
	_, err = ta.Processes(ctx, "nope")
	wantKind(t, err, api.ErrNotFound)
	_, err = ta.Logs(ctx, "nope", api.LogQuery{N: 10})
	wantKind(t, err, api.ErrNotFound)
	wantKind(t, ta.Restart(ctx, "nope", ""), api.ErrNotFound)
	wantKind(t, ta.DestroyApp(ctx, "nope"), api.ErrNotFound)
	_, err = ta.Releases(ctx, "Bad Name")
	wantKind(t, err, api.ErrInvalid)
	_, err = ta.CreateApp(ctx, "../etc")
	wantKind(t, err, api.ErrInvalid)

	ta.mustDeploy(t, "hello", webApp(t, ""))
	_, err = ta.Release(ctx, "hello", 9)
	wantKind(t, err, api.ErrNotFound)
	_, err = ta.Rollback(ctx, "hello", 9, nil)
	wantKind(t, err, api.ErrNotFound)
	_, err = ta.Rollback(ctx, "hello", 0, nil)
	wantKind(t, err, api.ErrNotFound) // nothing before v1
	_, err = ta.Logs(ctx, "hello", api.LogQuery{Instance: "worker.1", N: 10})
	wantKind(t, err, api.ErrNotFound)
	wantKind(t, ta.Restart(ctx, "hello", "worker"), api.ErrNotFound)
	_, err = ta.CreateApp(ctx, "hello")
	wantKind(t, err, api.ErrConflict)
	if _, err := ta.store.Release("hello", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := ta.store.Release("hello", 2); !errorsIs(err, state.ErrReleaseNotFound) {
		t.Fatalf("a refused operation created a release: %v", err)
	}
}
