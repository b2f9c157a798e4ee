package agent

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// procStatus returns a field of /proc/PID/status ("Uid", "Gid",
// "Groups"), its first value for ids.
func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				return f[0]
			}
			return ""
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}

// asProcess runs a shell script with the credentials of the running
// process pid (its uid, gid and supplementary groups, as /proc says), so
// the script can do what that app's own processes can do. It returns the
// combined output and whether the script succeeded.
func asProcess(t *testing.T, pid int, script string) (string, bool) {
	t.Helper()
	uid, _ := strconv.Atoi(procStatus(t, pid, "Uid"))
	gid, _ := strconv.Atoi(procStatus(t, pid, "Gid"))
	groups := []uint32{}
	if g := procStatus(t, pid, "Groups"); g != "" {
		t.Fatalf("process %d has supplementary groups %q", pid, g)
	}
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err == nil
}

// TestAgent_AppsRunAsOwnUsers ensures that, as root, each app runs as a
// uid of its own from the reserved range (its gid the same, no
// supplementary groups), and that from one app's identity another app's
// environment cannot be read, its processes cannot be signalled, and its
// TMPDIR, logs and build cannot be listed or read, while a build shared
// by two apps is readable by both. The uid stays across an agent restart
// and a new release, an operator-set user wins over it, and destroy
// frees it (taking its access to builds away).
func TestAgent_AppsRunAsOwnUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: apps run as their own uids only when the agent is root (skipped because euid != 0)")
	}
	cfg := testConfig(dataDir(t))
	ta := startAgent(t, cfg)
	ctx := context.Background()
	bodyA := webBuild(t, "alpha")
	relA := ta.mustDeploy(t, "alpha", bodyA)
	relB := ta.mustDeploy(t, "beta", webBuild(t, "beta"))
	relC := ta.mustDeploy(t, "gamma", bodyA) // alpha's build, shared
	if relC.Build != relA.Build {
		t.Fatalf("gamma's build %s, want alpha's %s", relC.Build, relA.Build)
	}
	pid := func(app string) int { return ta.procs(t, app)["web.1"].PID }
	uidOf := func(app string) int {
		p := pid(app)
		uid, _ := strconv.Atoi(procStatus(t, p, "Uid"))
		if gid := procStatus(t, p, "Gid"); gid != strconv.Itoa(uid) {
			t.Errorf("%s runs with gid %s, want its uid %d", app, gid, uid)
		}
		return uid
	}
	uidA, uidB, uidC := uidOf("alpha"), uidOf("beta"), uidOf("gamma")
	r := DefaultAppUIDs
	for app, uid := range map[string]int{"alpha": uidA, "beta": uidB, "gamma": uidC} {
		if uid < r.Min || uid > r.Max {
			t.Errorf("%s runs as uid %d, outside %d-%d", app, uid, r.Min, r.Max)
		}
	}
	if uidA == uidB || uidA == uidC || uidB == uidC {
		t.Fatalf("apps share a uid: alpha %d, beta %d, gamma %d", uidA, uidB, uidC)
	}

	data := ta.cfg.DataDir
	pa, pb := pid("alpha"), pid("beta")
	tmpB := filepath.Join(data, "apps", "beta", "tmp")
	buildA := filepath.Join(data, "builds", relA.Build)
	buildB := filepath.Join(data, "builds", relB.Build)
	// From alpha: nothing of beta's.
	denied := []struct{ what, script, want string }{
		{"read beta's environment", "cat /proc/" + strconv.Itoa(pb) + "/environ", "Permission denied"},
		{"signal beta", "kill -0 " + strconv.Itoa(pb), "Operation not permitted"},
		{"list beta's TMPDIR", "ls " + tmpB, "Permission denied"},
		{"list beta's logs", "ls " + filepath.Join(data, "apps", "beta", "logs"), "Permission denied"},
		{"list beta's app dir", "ls " + filepath.Join(data, "apps", "beta"), "Permission denied"},
		{"read beta's build", "cat " + filepath.Join(buildB, "Procfile"), "Permission denied"},
		{"list the builds", "ls " + filepath.Join(data, "builds"), "Permission denied"},
		{"list the inbox", "ls " + filepath.Join(data, "inbox"), "Permission denied"},
	}
	for _, d := range denied {
		if out, ok := asProcess(t, pa, d.script); ok || !strings.Contains(out, d.want) {
			t.Errorf("alpha could %s, or failed otherwise: %q (ok %v); want %q", d.what, out, ok, d.want)
		}
	}
	// Beta itself can, and gamma reads the build it shares with alpha.
	allowed := []struct {
		who          int
		what, script string
	}{
		{pb, "read its own environment", "cat /proc/" + strconv.Itoa(pb) + "/environ"},
		{pb, "signal itself", "kill -0 " + strconv.Itoa(pb)},
		{pb, "write to its TMPDIR", "echo x > " + tmpB + "/f && ls " + tmpB},
		{pb, "read its build", "cat " + filepath.Join(buildB, "Procfile")},
		{pa, "read its build", "cat " + filepath.Join(buildA, "README")},
		{pid("gamma"), "read the build shared with alpha", "cat " + filepath.Join(buildA, "README")},
	}
	for _, a := range allowed {
		if out, ok := asProcess(t, a.who, a.script); !ok {
			t.Errorf("cannot %s: %s", a.what, out)
		}
	}
	if fi, err := os.Stat(tmpB); err != nil || fi.Mode().Perm() != 0o700 || fi.Sys().(*syscall.Stat_t).Uid != uint32(uidB) {
		t.Errorf("beta's TMPDIR: %v, %v; want 0700 owned by %d", fi.Mode(), err, uidB)
	}

	// A restart of the agent and a new release keep the uid.
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	ta = startAgent(t, cfg)
	if got := uidOf("beta"); got != uidB {
		t.Errorf("after a restart beta runs as %d, want %d", got, uidB)
	}
	ta.mustDeploy(t, "beta", webBuild(t, "beta v2"))
	if got := uidOf("beta"); got != uidB {
		t.Errorf("after a new release beta runs as %d, want %d", got, uidB)
	}

	// An operator-set user wins; unset, the app's own uid is back.
	daemon, err := user.Lookup("daemon")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ta.SetAppUser(ctx, "beta", "daemon"); err != nil {
		t.Fatal(err)
	}
	if got := uidOf("beta"); strconv.Itoa(got) != daemon.Uid {
		t.Errorf("with user daemon beta runs as %d, want %s", got, daemon.Uid)
	}
	if _, err := ta.SetAppUser(ctx, "beta", ""); err != nil {
		t.Fatal(err)
	}
	if got := uidOf("beta"); got != uidB {
		t.Errorf("with its user unset beta runs as %d, want its own %d", got, uidB)
	}

	// Destroy frees alpha's uid: no longer allocated, no access to the
	// build it shared with gamma, which keeps its own.
	if err := ta.DestroyApp(ctx, "alpha"); err != nil {
		t.Fatal(err)
	}
	uids, err := ta.store.AppUIDs()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := uids["alpha"]; ok || uids["beta"] != uidB || uids["gamma"] != uidC {
		t.Errorf("uids after destroying alpha = %v", uids)
	}
	cmd := exec.Command("cat", filepath.Join(buildA, "README"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uidA), Gid: uint32(uidA), Groups: []uint32{}}}
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("alpha's freed uid %d still reads the build: %s", uidA, out)
	}
	if out, ok := asProcess(t, pid("gamma"), "cat "+filepath.Join(buildA, "README")); !ok {
		t.Errorf("gamma lost its build with alpha: %s", out)
	}
	// The next app gets the freed uid, the lowest free.
	ta.mustDeploy(t, "delta", webBuild(t, "delta"))
	if got := uidOf("delta"); got != uidA {
		t.Errorf("delta runs as %d, want the freed %d", got, uidA)
	}
}
