//go:build e2e_systemd

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/e2e/e2eutil"
)

// The app of TestLimits: after a few seconds (so its deploy is over) its
// web process reads zeros through tail, which keeps the whole input
// looking for a newline: it grows until the OOM killer stops it at
// memory_max.
const (
	oomProcfile = "web: sleep 6; head -c 2G /dev/zero | tail\n"
	oomManifest = `{"processes": {"web": {"limits": {"memory_max": "64M", "tasks_max": 32}}}}`
	oomLimit    = "killed by the OOM killer at 64 MiB"
)

// TestLimits deploys, under systemd, an app whose process allocates
// beyond its memory_max: it must be killed by the OOM killer, recorded
// so in events and ps ("web.1 killed by the OOM killer at 64 MiB"),
// counted in /metrics and restarted. berth run is checked on the way:
// the app's user, its exit code. Where the kernel gives cgroup v2 no
// memory controller (a host whose controllers are bound to cgroup v1,
// so the container's are too), the agent must say the limits are not
// enforced, and the OOM kill cannot happen: that part is skipped,
// saying why.
func TestLimits(t *testing.T) {
	root := e2eutil.RepoRoot(t)
	bin := filepath.Join(root, "bin", "berth")
	if b := os.Getenv("BERTH_E2E_BINARY"); b != "" {
		bin = b
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%v (run `make build`, or `make e2e-systemd`)", err)
	}
	m := NewMachine(t, fmt.Sprintf("berth-limits-%d", os.Getpid()))
	m.CopyIn(bin, "/usr/local/bin/berth", 0o755)
	m.WriteFile("/root/oom.tar.gz", makeTarball(t, map[string]string{"Procfile": oomProcfile, "berth.json": oomManifest}), 0o644)
	t.Logf("boot: %s", m.Boot().Round(time.Millisecond))
	b := berthEnv{t: t, m: m}
	b.m.MustExec("/usr/local/bin/berth", "systemd", "install", "--env", "BERTH_SETTLE=1s", "--env", "BERTH_PROBATION=1s")
	b.waitAgentRunning("")

	out := b.mustBerth("deploy", "-a", "oom", "/root/oom.tar.gz")
	t.Logf("deploy:\n%s", e2eutil.Tail(out, 3))
	ps, err := b.ps("oom")
	if err != nil || len(ps) != 1 {
		t.Fatalf("ps: %+v, %v", ps, err)
	}
	web := ps[0]
	t.Logf("web.1 limits: %s", web.Limits)

	// berth run: the app's user and environment, its exit code.
	uid := strings.TrimSpace(b.mustBerth("run", "-a", "oom", "--", "id", "-u"))
	if pids := b.m.Procs("BERTH_APP=oom", "BERTH_PROCESS=web.1"); len(pids) == 0 {
		t.Errorf("no process of oom web.1")
	} else if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pids[0])); err != nil || !strings.Contains(string(st), "\nUid:\t"+uid+"\t") {
		t.Errorf("berth run ran as uid %s, web.1 runs as:\n%s", uid, st)
	}
	if out, err := b.berth("run", "-a", "oom", "--", "sh", "-c", "echo $BERTH_APP $BERTH_PROCESS; exit 3"); err == nil || !strings.Contains(err.Error(), "exit status 3") || strings.TrimSpace(out) != "oom run.1" {
		t.Errorf("berth run ... exit 3: %q, %v; want output \"oom run.1\" and exit status 3", out, err)
	}

	if strings.Contains(web.Limits, "not enforced") {
		events := b.mustBerth("events", "-a", "oom")
		if !strings.Contains(events, "are not enforced") || !strings.Contains(events, "memory") {
			t.Errorf("no event says the limits are not enforced:\n%s", events)
		}
		controllers, _ := b.m.Exec("sh", "-c", "cat /sys/fs/cgroup/cgroup.controllers /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null")
		t.Skipf("OOM kill not exercised: this kernel gives the container's cgroup v2 no memory controller (available: %q), "+
			"and berth says so: ps shows %q", strings.TrimSpace(controllers), web.Limits)
	}
	if web.Limits != "memory_max 64 MiB, tasks_max 32" {
		t.Errorf("ps limits %q, want \"memory_max 64 MiB, tasks_max 32\"", web.Limits)
	}
	max := b.m.MustExec("sh", "-c", `cat "/sys/fs/cgroup$(systemctl show -P ControlGroup berth)/apps/oom\x2fweb.1/memory.max"`)
	if strings.TrimSpace(max) != "67108864" {
		t.Errorf("memory.max of oom/web.1: %q, want 67108864", max)
	}

	e2eutil.WaitFor(t, "an oom event for web.1", 2*time.Minute, func() (bool, string) {
		out, _ := b.berth("events", "-a", "oom")
		return strings.Contains(out, "web.1 "+oomLimit), e2eutil.Tail(out, 5)
	})
	e2eutil.WaitFor(t, "web.1 restarted after its OOM kill", time.Minute, func() (bool, string) {
		ps, err := b.ps("oom")
		if err != nil || len(ps) != 1 {
			return false, fmt.Sprint(ps, err)
		}
		p := ps[0]
		return p.Restarts >= 1 && p.LastExit == oomLimit && p.PID != 0 && p.PID != web.PID, fmt.Sprintf("%+v", p)
	})
	metrics := b.m.MustExec("curl", "-sS", "--unix-socket", "/run/berth/berth.sock", "http://berth/metrics")
	for _, want := range []string{"berth_limits_enforced 1", `berth_oom_kills_total{app="oom",type="web"} `,
		`berth_instance_memory_limit_bytes{app="oom",instance="web.1",release="1"} 67108864`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, metrics)
		}
	}
}
