package agent

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/supervisor"
)

// limitedApp is the web app with limits in its berth.json.
func limitedApp(t *testing.T, limits string) []byte {
	return tarball(t, map[string]string{"Procfile": webProcfile,
		"berth.json": `{"processes": {"web": {"limits": ` + limits + `}}}`})
}

// eventsOf returns the app's events of one kind.
func eventsOf(t *testing.T, ta *testAgent, app, kind string) []api.Event {
	t.Helper()
	evs, err := ta.Events(context.Background(), app, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []api.Event
	for _, e := range evs {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// TestLimits_NotEnforcedWithoutCgroups deploys a type with limits on an
// agent without a delegated cgroup (as `make run` and the tests run):
// the instance runs, ps shows the limits as not enforced, and one
// "limits" event says so for the release, not one per restart.
func TestLimits_NotEnforcedWithoutCgroups(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	if ta.sup.Enforces() {
		t.Fatal("this test host gave the agent a delegated cgroup; the test expects none")
	}
	ta.mustDeploy(t, "hello", limitedApp(t, `{"memory_max": "64M", "cpus": 0.5}`))
	web := ta.procs(t, "hello")["web.1"]
	want := "memory_max 64 MiB, cpus 0.5 (not enforced: " + supervisor.NoLimiter + ")"
	if web.State != "running" || web.Limits != want {
		t.Fatalf("web.1: %s, limits %q; want running with %q", web.State, web.Limits, want)
	}
	if err := syscall.Kill(web.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "web.1 restarted", func() bool {
		p := ta.procs(t, "hello")["web.1"]
		return p.Restarts == 1 && p.State == "running"
	})
	evs := eventsOf(t, ta, "hello", "limits")
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "limits of web in v1 (memory_max 64 MiB, cpus 0.5) are not enforced: "+supervisor.NoLimiter) {
		t.Errorf("limits events: %+v, want one saying they are not enforced", evs)
	}
	// A type without limits says nothing.
	ta.mustDeploy(t, "plain", webBuild(t, "plain"))
	if p := ta.procs(t, "plain")["web.1"]; p.Limits != "" || len(eventsOf(t, ta, "plain", "limits")) != 0 {
		t.Errorf("an app without limits: ps limits %q, events %v", p.Limits, eventsOf(t, ta, "plain", "limits"))
	}
}

// TestLimits_BadValuesChangeNothing deploys manifests with bad limits
// over a running release: each is refused with an error that names the
// field, and the running release and its process are untouched.
func TestLimits_BadValuesChangeNothing(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ta.mustDeploy(t, "hello", webBuild(t, "one"))
	before := ta.procs(t, "hello")["web.1"]
	for _, tc := range []struct{ limits, want string }{
		{`{"memory_max": "1.5G"}`, "limits memory_max"},
		{`{"memory_max": "64M", "memory_high": "1G"}`, "memory_high"},
		{`{"cpus": 0}`, "sets none of"},
		{`{"cpus": 100000}`, "cpus 100000 must be between"},
		{`{"tasks_max": -1}`, "tasks_max -1"},
		{`{"swap": "1G"}`, `unknown field "swap"`},
	} {
		_, _, err := ta.deploy(t, "hello", limitedApp(t, tc.limits))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("deploy with limits %s: %v, want an error saying %q", tc.limits, err, tc.want)
			continue
		}
		wantKind(t, err, api.ErrInvalid)
	}
	after := ta.procs(t, "hello")["web.1"]
	if after.PID != before.PID || after.Release != 1 || after.Restarts != 0 {
		t.Errorf("web.1 after the refused deploys: %+v, was %+v", after, before)
	}
	app, err := ta.store.App("hello")
	if err != nil || app.ActiveRelease != 1 {
		t.Errorf("active release %d, %v; want still v1", app.ActiveRelease, err)
	}
}

// TestExitEvent ensures an OOM kill is recorded as such, anything else
// as a crash.
func TestExitEvent(t *testing.T) {
	in := &instance{App: "hello", Instance: "web.1", Type: "web"}
	kind, msg := exitEvent(in, &supervisor.Exit{Code: -1, Signal: syscall.SIGKILL, OOMKill: true, MemoryMax: 256 << 20})
	if kind != "oom" || msg != "web.1 killed by the OOM killer at 256 MiB; restarted with backoff like a crash" {
		t.Errorf("OOM kill: %s %q", kind, msg)
	}
	kind, msg = exitEvent(in, &supervisor.Exit{Code: 2})
	if kind != "crash" || msg != "crash web.1 exit 2" {
		t.Errorf("crash: %s %q", kind, msg)
	}
}
