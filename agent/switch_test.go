package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
)

// TestAgent_Config ensures config set makes a new release with the same
// build, restarts the processes with the new env, that unset works, that
// a change without effect makes no release, and that bad names and
// reserved names are refused without a release. Every answer names the
// config's keys and holds none of its values.
func TestAgent_Config(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	noValues := func(what string, rel api.Release, keys ...string) {
		t.Helper()
		if rel.Config != nil || !slices.Equal(rel.ConfigKeys, keys) {
			t.Errorf("%s returned config %v, keys %q; want no values, keys %q", what, rel.Config, rel.ConfigKeys, keys)
		}
	}

	// Before the first deploy the config is only stored.
	if _, err := ta.CreateApp(ctx, "hello"); err != nil {
		t.Fatal(err)
	}
	early, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"FOO": "early"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	noValues("config set before the first deploy", early, "FOO")
	same, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"FOO": "early"}}, nil)
	if err != nil || same.Version != 0 {
		t.Fatalf("no-op config change before the first deploy = %+v, %v", same, err)
	}
	noValues("a no-op config change before the first deploy", same, "FOO")
	v1 := ta.mustDeploy(t, "hello", webApp(t, ""))
	ta.waitLog(t, "hello", "web.1", "rel=v1 FOO=early")
	old := ta.procs(t, "hello")["web.1"]

	var steps []string
	v2, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"FOO": "bar", "BAZ": "1"}},
		func(p api.Progress) { steps = append(steps, p.Step) })
	if err != nil {
		t.Fatal(err)
	}
	if v2.Version != 2 || v2.Build != v1.Build || v2.Description != "Set BAZ, FOO" {
		t.Fatalf("config release = %+v", v2)
	}
	noValues("config set", v2, "BAZ", "FOO")
	if len(steps) == 0 || steps[len(steps)-1] != "done" {
		t.Errorf("steps = %v", steps)
	}
	ta.waitLog(t, "hello", "web.1", "rel=v2 FOO=bar")
	cur := ta.procs(t, "hello")["web.1"]
	if cur.PID == old.PID || cur.Release != 2 {
		t.Fatalf("web.1 not restarted on v2: %+v (old pid %d)", cur, old.PID)
	}
	if env := procEnv(t, cur.PID); env["FOO"] != "bar" || env["BAZ"] != "1" {
		t.Fatalf("env after config set: FOO=%q BAZ=%q", env["FOO"], env["BAZ"])
	}
	full, err := ta.Release(ctx, "hello", 2)
	if err != nil || full.Config["FOO"] != "bar" {
		t.Fatalf("releases info v2 = %+v, %v", full, err)
	}

	// Nothing new: no release, no restart.
	same, err = ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"FOO": "bar"}, Unset: []string{"NOPE"}}, nil)
	if err != nil || same.Version != 2 {
		t.Fatalf("no-op config change = %+v, %v", same, err)
	}
	noValues("a no-op config change", same, "BAZ", "FOO")
	if ta.procs(t, "hello")["web.1"].PID != cur.PID {
		t.Fatal("a no-op config change restarted the process")
	}

	v3, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Unset: []string{"FOO"}}, nil)
	if err != nil || v3.Version != 3 || v3.Description != "Unset FOO" {
		t.Fatalf("unset = %+v, %v", v3, err)
	}
	noValues("config unset", v3, "BAZ")
	ta.waitLog(t, "hello", "web.1", "rel=v3 FOO= port")

	for name, change := range map[string]api.ConfigChange{
		"bad name":  {Set: map[string]string{"1FOO": "x"}},
		"reserved":  {Set: map[string]string{"PORT": "80"}},
		"berth var": {Unset: []string{"BERTH_APP"}},
		"nul value": {Set: map[string]string{"A": "x\x00y"}},
		"set+unset": {Set: map[string]string{"A": "1"}, Unset: []string{"A"}},
		"empty":     {},
		"bad unset": {Unset: []string{"A-B"}},
	} {
		_, err := ta.SetConfig(ctx, "hello", change, nil)
		if !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
	if rels, _ := ta.Releases(ctx, "hello"); len(rels) != 3 {
		t.Fatalf("refused changes made releases: %d releases", len(rels))
	}
}

// TestAgent_Rollback ensures rollback makes a new release with the old
// build and config (so the config is restored), defaults to the release
// before the active one, and refuses failed releases and collected builds.
func TestAgent_Rollback(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	v1 := ta.mustDeploy(t, "hello", webBuild(t, "one"))
	if _, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"FOO": "two"}}, nil); err != nil {
		t.Fatal(err)
	}
	ta.mustDeploy(t, "hello", webBuild(t, "three"))
	ta.waitLog(t, "hello", "web.1", "rel=v3 FOO=two")

	// Default: the release before the active one (v2: v1's build, FOO=two).
	v4, err := ta.Rollback(ctx, "hello", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v4.Version != 4 || v4.Build != v1.Build || v4.Description != "Rollback to v2" {
		t.Fatalf("rollback = %+v", v4)
	}
	ta.waitLog(t, "hello", "web.1", "rel=v4 FOO=two")

	// To v1 explicitly: FOO was not set then.
	v5, err := ta.Rollback(ctx, "hello", 1, nil)
	if err != nil || v5.Build != v1.Build || v5.Description != "Rollback to v1" {
		t.Fatalf("rollback to v1 = %+v, %v", v5, err)
	}
	ta.waitLog(t, "hello", "web.1", "rel=v5 FOO= port")
	if cfg, _ := ta.Config(ctx, "hello"); len(cfg) != 0 {
		t.Fatalf("config after rollback to v1 = %v, want empty", cfg)
	}
	if ps := ta.procs(t, "hello"); ps["web.1"].Release != 5 {
		t.Fatalf("ps after rollback = %+v", ps)
	}

	// A failed release cannot be rolled back to.
	_, _, err = ta.deploy(t, "hello", webApp(t, "release: exit 1\n"))
	if !errors.Is(err, ErrReleasePhase) {
		t.Fatalf("deploy with failing release phase: %v", err)
	}
	_, err = ta.Rollback(ctx, "hello", 6, nil)
	wantKind(t, err, api.ErrConflict)
}

// TestAgent_RollbackCollectedBuild ensures retention removes old builds
// after a switch, and a rollback to a release whose build is gone says so.
func TestAgent_RollbackCollectedBuild(t *testing.T) {
	cfg := testConfig(dataDir(t))
	cfg.Retention = 1
	ta := startAgent(t, cfg)
	ctx := context.Background()
	v1 := ta.mustDeploy(t, "hello", webBuild(t, "one"))
	ta.mustDeploy(t, "hello", webBuild(t, "two"))
	ta.mustDeploy(t, "hello", webBuild(t, "three"))
	if ta.builds.Has(v1.Build) {
		t.Fatal("v1's build survived garbage collection with retention 1")
	}
	if _, err := ta.store.Build(v1.Build); err == nil {
		t.Fatal("v1's build record survived garbage collection")
	}
	_, err := ta.Rollback(ctx, "hello", 1, nil)
	wantKind(t, err, api.ErrConflict)
	if !strings.Contains(err.Error(), "garbage-collected") {
		t.Fatalf("rollback error does not say why: %v", err)
	}
}

// TestAgent_ReleasePhase ensures the release phase runs with the new
// release's env before activation, and that its failure marks the
// release failed with its output, keeps the old processes untouched and
// says so.
func TestAgent_ReleasePhase(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	v1 := ta.mustDeploy(t, "hello", webApp(t, `release: echo "migrating $BERTH_RELEASE"`+"\n"))
	if v1.Status != "active" {
		t.Fatalf("v1 = %+v", v1)
	}
	old := ta.procs(t, "hello")["web.1"]

	_, _, err := ta.deploy(t, "hello", webApp(t, `release: echo "migrating $BERTH_RELEASE"; echo boom >&2; exit 3`+"\n"))
	var rpe *ReleasePhaseError
	if !errors.As(err, &rpe) || rpe.Version != 2 || rpe.Reason != "exit 3" {
		t.Fatalf("deploy error = %v, want a release phase error for v2 with exit 3", err)
	}
	if !strings.Contains(err.Error(), "previous release keeps running") {
		t.Errorf("error does not say the old release runs: %v", err)
	}
	v2, err := ta.Release(ctx, "hello", 2)
	if err != nil {
		t.Fatal(err)
	}
	if v2.Status != "failed" || !strings.Contains(v2.Output, "migrating v2") || !strings.Contains(v2.Output, "boom") || !strings.Contains(v2.Reason, "exit 3") {
		t.Fatalf("v2 = %+v", v2)
	}
	now := ta.procs(t, "hello")["web.1"]
	if now.PID != old.PID || now.Release != 1 || now.State != "running" {
		t.Fatalf("web.1 touched by a failed release: before %+v, after %+v", old, now)
	}
	if app, _ := ta.Apps(ctx); app[0].ActiveRelease != 1 {
		t.Fatalf("active release = %d, want 1", app[0].ActiveRelease)
	}
}

// TestAgent_ScaleRestart ensures scale starts and stops only the changed
// instances, refuses unknown types, and restart replaces the processes
// of the app, a type or one instance.
func TestAgent_ScaleRestart(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	ta.mustDeploy(t, "hello", tarball(t, map[string]string{
		"Procfile": webProcfile + "worker: exec sleep 1001\n",
	}))
	first := ta.procs(t, "hello")
	if len(first) != 2 {
		t.Fatalf("processes = %+v, want web.1 and worker.1", first)
	}
	ps, err := ta.Scale(ctx, "hello", map[string]int{"web": 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 4 {
		t.Fatalf("after scale web=3: %+v", ps)
	}
	after := ta.procs(t, "hello")
	if after["web.1"].PID != first["web.1"].PID || after["worker.1"].PID != first["worker.1"].PID {
		t.Fatal("scale up restarted existing instances")
	}
	ports := map[int]bool{}
	for _, p := range after {
		if p.State != "running" || ports[p.Port] {
			t.Fatalf("instance %+v not running or port reused", p)
		}
		ports[p.Port] = true
	}
	if _, err := ta.Scale(ctx, "hello", map[string]int{"web": 1, "worker": 0}); err != nil {
		t.Fatal(err)
	}
	down := ta.procs(t, "hello")
	if len(down) != 1 || down["web.1"].PID != first["web.1"].PID {
		t.Fatalf("after scale down: %+v", down)
	}
	if got := appProcs(t, ta.cfg.DataDir, "hello"); len(got) != 1 {
		t.Fatalf("host processes after scale down: %v", got)
	}
	// A stopped instance's output is still there, from its log file.
	lines, err := ta.Logs(ctx, "hello", api.LogQuery{Instance: "web.3", N: 10})
	if err != nil || len(lines) != 1 || lines[0].Text != fmt.Sprintf("rel=v1 FOO= port=%d", after["web.3"].Port) || lines[0].Instance != "web.3" {
		t.Fatalf("logs of the stopped web.3 = %+v, %v", lines, err)
	}
	// Scaling back up gives web.2 its old port.
	if _, err := ta.Scale(ctx, "hello", map[string]int{"web": 2}); err != nil {
		t.Fatal(err)
	}
	if p := ta.procs(t, "hello")["web.2"].Port; p != after["web.2"].Port {
		t.Fatalf("web.2 port %d, was %d", p, after["web.2"].Port)
	}

	_, err = ta.Scale(ctx, "hello", map[string]int{"nope": 1})
	wantKind(t, err, api.ErrNotFound)
	_, err = ta.Scale(ctx, "hello", map[string]int{"web": -1})
	wantKind(t, err, api.ErrInvalid)
	_, err = ta.Scale(ctx, "hello", map[string]int{"release": 1})
	wantKind(t, err, api.ErrInvalid)

	before := ta.procs(t, "hello")
	if err := ta.Restart(ctx, "hello", "web.2"); err != nil {
		t.Fatal(err)
	}
	mid := ta.procs(t, "hello")
	if mid["web.2"].PID == before["web.2"].PID || mid["web.1"].PID != before["web.1"].PID {
		t.Fatalf("restart web.2: before %+v, after %+v", before, mid)
	}
	if err := ta.Restart(ctx, "hello", ""); err != nil {
		t.Fatal(err)
	}
	all := ta.procs(t, "hello")
	if all["web.1"].PID == mid["web.1"].PID || all["web.2"].PID == mid["web.2"].PID {
		t.Fatal("restart of all did not restart every instance")
	}
	evs, _ := ta.Events(ctx, "hello", 0, 0)
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	if !strings.Contains(strings.Join(kinds, " "), "scale") || !strings.Contains(strings.Join(kinds, " "), "restart") {
		t.Errorf("events = %v", kinds)
	}
}

// TestAgent_Crash ensures a crashing process is restarted and the crash
// recorded as an event that followers get without polling.
func TestAgent_Crash(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ta.mustDeploy(t, "hello", webApp(t, ""))
	evs, _ := ta.Events(ctx, "", 0, 0)
	since := evs[len(evs)-1].Seq
	got := make(chan api.Event, 16)
	done := make(chan error, 1)
	go func() {
		done <- ta.FollowEvents(ctx, "hello", since, func(e api.Event) error {
			got <- e
			return nil
		})
	}()
	pid := ta.procs(t, "hello")["web.1"].PID
	if err := syscallKill(pid); err != nil {
		t.Fatal(err)
	}
	e := <-got
	if e.Kind != "crash" || !strings.Contains(e.Message, "crash web.1 signal SIGKILL") {
		t.Fatalf("event = %+v", e)
	}
	waitFor(t, 10*time.Second, "web.1 restarted", func() bool {
		p := ta.procs(t, "hello")["web.1"]
		return p.State == "running" && p.PID != pid && p.PID != 0
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := len(appProcs(t, ta.cfg.DataDir, "hello")); n != 1 {
		t.Fatalf("%d processes after the restart, want 1", n)
	}
}

// TestAgent_CrashLoopEvents ensures a crash-looping process keeps being
// retried, but records its crashes as events only until it is known to
// crash-loop, so it cannot flood the bounded event log.
func TestAgent_CrashLoopEvents(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	// The worker starts crashing once the test says so: a release that
	// crash-loops from the start is rolled back (TestSafe_*).
	ta.mustDeploy(t, "hello", tarball(t, map[string]string{"Procfile": webProcfile +
		"worker: while [ ! -e \"$TMPDIR/die\" ]; do sleep 0.05; done; echo dying; exit 3\n"}))
	if err := os.WriteFile(ta.appDir("hello", "tmp", "die"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "10 restarts of worker.1", func() bool {
		return ta.procs(t, "hello")["worker.1"].Restarts >= 10
	})
	evs, err := ta.Events(ctx, "hello", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var crashes []string
	for _, e := range evs {
		if e.Kind == "crash" {
			crashes = append(crashes, e.Message)
		}
	}
	// The first exit follows a settled run (restarted at once), then
	// three quick ones: two in backoff and the crash-loop notice.
	if len(crashes) != 4 || !strings.Contains(crashes[3], "crash-looping") || !strings.HasPrefix(crashes[0], "crash worker.1 exit 3") {
		t.Fatalf("crash events = %q, want 3 crashes and a crash-loop notice", crashes)
	}
	if p := ta.procs(t, "hello")["worker.1"]; p.LastExit != "exit 3" || p.State == "stopped" {
		t.Fatalf("worker.1 = %+v", p)
	}
	if p := ta.procs(t, "hello")["web.1"]; p.State != "running" || p.Restarts != 0 {
		t.Fatalf("web.1 disturbed by its neighbour: %+v", p)
	}
}
