package systemd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// fakeCgroups returns Cgroups on a plain directory laid out like a
// delegated cgroup whose own and apps levels offer (and have enabled)
// the given controllers.
func fakeCgroups(t *testing.T, controllers string) *Cgroups {
	t.Helper()
	own := t.TempDir()
	apps := filepath.Join(own, "apps")
	for _, d := range []string{own, apps} {
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "cgroup.controllers"), []byte(controllers+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte(controllers+"\n"), 0o644)
	}
	return &Cgroups{log: hclog.NewNullLogger(), own: own, apps: apps, killTimeout: DefaultKillTimeout, fds: map[string]int{}}
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestCgroups_SetLimitsFiles checks what SetLimits writes into an
// instance's cgroup files, "max" for a limit not set, and how
// OOMEvents and Usage read memory.events, memory.current and cpu.stat.
func TestCgroups_SetLimitsFiles(t *testing.T) {
	c := fakeCgroups(t, "cpu memory pids")
	dir, _ := c.Dir("hello/web.1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if why := c.Unenforced(256<<20, 0, 0.5, 64); why != "" {
		t.Errorf("Unenforced with every controller: %q", why)
	}
	if err := c.SetLimits("hello/web.1", 256<<20, 200<<20, 0.5, 64); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{"memory.max": "268435456", "memory.high": "209715200", "memory.oom.group": "1",
		"cpu.max": "50000 100000", "pids.max": "64"} {
		if got := readTrim(t, filepath.Join(dir, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if err := c.SetLimits("hello/web.1", 0, 0, 2, 0); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{"memory.max": "max", "memory.high": "max", "memory.oom.group": "0",
		"cpu.max": "200000 100000", "pids.max": "max"} {
		if got := readTrim(t, filepath.Join(dir, file)); got != want {
			t.Errorf("without limits %s = %q, want %q", file, got, want)
		}
	}

	if n, err := c.OOMEvents("hello/web.1"); n != 0 || err != nil {
		t.Errorf("OOMEvents without memory.events: %d, %v", n, err)
	}
	os.WriteFile(filepath.Join(dir, "memory.events"), []byte("low 0\nhigh 4\nmax 9\noom 2\noom_kill 1\noom_group_kill 1\n"), 0o644)
	if n, err := c.OOMEvents("hello/web.1"); n != 3 || err != nil {
		t.Errorf("OOMEvents = %d, %v; want oom 2 + oom_kill 1", n, err)
	}
	os.WriteFile(filepath.Join(dir, "memory.current"), []byte("1234567\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "cpu.stat"), []byte("usage_usec 987654\nuser_usec 900000\nsystem_usec 87654\n"), 0o644)
	if mem, cpu, err := c.Usage("hello/web.1"); mem != 1234567 || cpu != 987654 || err != nil {
		t.Errorf("Usage = %d, %d, %v", mem, cpu, err)
	}
	os.WriteFile(filepath.Join(dir, "memory.events"), []byte("oom x\n"), 0o644)
	if _, err := c.OOMEvents("hello/web.1"); err == nil || !strings.Contains(err.Error(), "memory.events") {
		t.Errorf("OOMEvents of a garbled file: %v", err)
	}
}

// TestCgroups_MissingController ensures limits whose controller is not
// delegated are named by Unenforced and left out by SetLimits (the
// instance starts anyway), while the others are written.
func TestCgroups_MissingController(t *testing.T) {
	c := fakeCgroups(t, "cpu")
	dir, _ := c.Dir("web.1")
	os.MkdirAll(dir, 0o755)
	why := c.Unenforced(64<<20, 0, 1, 10)
	if !strings.Contains(why, "memory, pids") || !strings.Contains(why, c.own) {
		t.Errorf("Unenforced = %q, want memory and pids named with the cgroup", why)
	}
	if why := c.Unenforced(0, 0, 1, 0); why != "" {
		t.Errorf("Unenforced of a cpu limit with the cpu controller: %q", why)
	}
	if err := c.SetLimits("web.1", 64<<20, 0, 1, 10); err != nil {
		t.Fatalf("SetLimits: %v", err)
	}
	if got := readTrim(t, filepath.Join(dir, "cpu.max")); got != "100000 100000" {
		t.Errorf("cpu.max = %q", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "memory.max")); !os.IsNotExist(err) {
		t.Errorf("memory.max written without the memory controller: %v", err)
	}
}

// TestCgroups_RealLimits applies limits to a real cgroup v2 of this host
// (as root, in a cgroup marked delegated). Where the kernel offers the
// memory and pids controllers to cgroup v2, the kernel's files must read
// back the limits; where it does not (controllers bound to cgroup v1),
// Unenforced must say so and SetLimits must still let the instance
// start. Either way cpu.stat is read for Usage.
func TestCgroups_RealLimits(t *testing.T) {
	own := delegatedCgroup(t)
	apps := filepath.Join(own, "apps")
	if err := os.Mkdir(apps, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &Cgroups{log: hclog.NewNullLogger(), own: own, apps: apps, killTimeout: DefaultKillTimeout, fds: map[string]int{}}
	defer c.Close()
	if _, err := c.Prepare("web.1"); err != nil {
		t.Fatal(err)
	}
	defer c.Remove("web.1")
	avail := readFields(filepath.Join(own, "cgroup.controllers"))
	err := c.SetLimits("web.1", 64<<20, 0, 0, 16)
	if err != nil {
		t.Fatalf("SetLimits: %v", err)
	}
	dir, _ := c.Dir("web.1")
	why := c.Unenforced(64<<20, 0, 0, 16)
	if avail["memory"] && avail["pids"] {
		if why != "" {
			t.Errorf("Unenforced = %q with memory and pids available", why)
		}
		if got := readTrim(t, filepath.Join(dir, "memory.max")); got != "67108864" {
			t.Errorf("memory.max = %q", got)
		}
		if got := readTrim(t, filepath.Join(dir, "pids.max")); got != "16" {
			t.Errorf("pids.max = %q", got)
		}
	} else {
		t.Logf("this kernel's cgroup v2 offers %v: limits cannot be enforced here (%s)", avail, why)
		if !strings.Contains(why, "memory") {
			t.Errorf("Unenforced = %q, want the memory controller named", why)
		}
	}
	if _, _, err := c.Usage("web.1"); err != nil {
		t.Errorf("Usage of a real cgroup: %v", err)
	}
	if n, err := c.OOMEvents("web.1"); err != nil || n != 0 {
		t.Errorf("OOMEvents of a fresh cgroup: %d, %v", n, err)
	}
}
