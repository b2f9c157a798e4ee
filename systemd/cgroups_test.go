package systemd

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// TestEscapeCgroupName ensures instance names map to single, distinct
// cgroup dir names that cannot collide with the kernel's files.
func TestEscapeCgroupName(t *testing.T) {
	for in, want := range map[string]string{
		"web.1":          "web.1",
		"hello/web.1":    `hello\x2fweb.1`,
		"..":             `\x2e.`,
		".hidden":        `\x2ehidden`,
		"cgroup.procs":   `\x63group.procs`,
		`a\x2fb`:         `a\x5cx2fb`,
		"app web":        `app\x20web`,
		"worker@2":       "worker@2",
		"\xff":           `\xff`,
		"mycgroup.procs": "mycgroup.procs",
	} {
		got, err := escapeCgroupName(in)
		if err != nil || got != want {
			t.Errorf("escape(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", strings.Repeat("/", 80)} {
		if _, err := escapeCgroupName(bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("escape(%q): err = %v, want ErrInvalidName", bad, err)
		}
	}
}

// TestNewCgroups_Unusable ensures each reason containment is impossible is
// reported as ErrNoCgroup with the reason, and nothing is created.
func TestNewCgroups_Unusable(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	v1only := write("mountinfo-v1", "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:10 - cgroup cgroup rw,memory\n")
	v2 := write("mountinfo-v2", "35 25 0:30 / "+dir+" rw,relatime shared:9 - cgroup2 cgroup2 rw\n")
	root := write("cgroup-root", "0::/\n")
	v1self := write("cgroup-v1", "4:memory:/x\n")
	plain := write("cgroup-plain", "0::/plain\n")
	if err := os.Mkdir(filepath.Join(dir, "plain"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mountinfo, self, want string
	}{
		{v1only, plain, "no cgroup2 file system is mounted"},
		{v2, root, "root cgroup"},
		{v2, v1self, "no cgroup v2 entry"},
		{v2, plain, "was not delegated"},
		{filepath.Join(dir, "missing"), plain, "no such file"},
	} {
		_, err := newCgroups(cgroupEnv{mountinfo: tc.mountinfo, selfCgroup: tc.self, pid: os.Getpid()}, hclog.NewNullLogger())
		if !errors.Is(err, ErrNoCgroup) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s + %s: err = %v, want ErrNoCgroup saying %q", filepath.Base(tc.mountinfo), filepath.Base(tc.self), err, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "plain", "apps")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("apps cgroup created in a refused cgroup: %v", err)
	}
}

// TestFindCgroup2Mount_Escapes ensures mountinfo's octal escapes are undone.
func TestFindCgroup2Mount_Escapes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(p, []byte("35 25 0:30 /sub\\040dir /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw\n"), 0o644)
	mount, root, err := findCgroup2Mount(p)
	if err != nil || mount != "/sys/fs/cgroup x" || root != "/sub dir" {
		t.Fatalf("got %q %q %v", mount, root, err)
	}
}

// hostCgroup2 returns the host's cgroup2 mount point, or skips the test
// where there is none (the e2e-systemd suite covers containment there).
func hostCgroup2(t testing.TB) string {
	t.Helper()
	mount, _, err := findCgroup2Mount("/proc/self/mountinfo")
	if err != nil {
		t.Skipf("no cgroup2 here (%v); `make e2e-systemd` tests containment under a real systemd", err)
	}
	if unix.Access(filepath.Join(mount, "cgroup.procs"), unix.W_OK) != nil || os.Geteuid() != 0 {
		t.Skipf("cgroup2 at %s is not writable by this user; `make e2e-systemd` tests containment under a real systemd", mount)
	}
	return mount
}

// delegatedCgroup creates a cgroup marked as delegated the way systemd
// marks a Delegate=yes unit's cgroup, and removes it (and what Cgroups
// made in it) after the test.
func delegatedCgroup(t testing.TB) string {
	mount := hostCgroup2(t)
	dir := filepath.Join(mount, fmt.Sprintf("berth-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, sub := range []string{"apps/web.1", "apps", "agent", ""} {
			if err := unix.Rmdir(filepath.Join(dir, sub)); err != nil && !errors.Is(err, unix.ENOENT) {
				t.Errorf("clean up cgroup %s: %v", filepath.Join(dir, sub), err)
			}
		}
	})
	if err := unix.Setxattr(dir, "trusted.delegate", []byte("1"), 0); err != nil {
		t.Fatalf("mark %s delegated: %v", dir, err)
	}
	return dir
}

// TestCgroups_KillsSetsidEscapee starts a helper agent in a delegated
// cgroup. It must move itself into <cgroup>/agent, start an instance in
// <cgroup>/apps/web.1 whose command forks a setsid daemon (out of its
// process group and session), and Kill must leave no process of it.
func TestCgroups_KillsSetsidEscapee(t *testing.T) {
	dir := delegatedCgroup(t)
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	cmd := exec.Command(os.Args[0])
	cmd.Env = helperEnviron("cgroups")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	out, err := cmd.CombinedOutput()
	t.Logf("helper:\n%s", out)
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	for _, want := range []string{"agent cgroup ok", "escapee in cgroup", "killed", "restart after kill ok", "removed"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("helper output lacks %q", want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "apps", "web.1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("instance cgroup left: %v", err)
	}
}

// helperCgroups is the agent side of TestCgroups_KillsSetsidEscapee.
func helperCgroups() error {
	cg, err := NewCgroups(hclog.NewNullLogger())
	if err != nil {
		return err
	}
	own, err := ownCgroup("/proc/self/cgroup")
	if err != nil {
		return err
	}
	if filepath.Base(own) != "agent" || filepath.Join(cg.own, "agent") != filepath.Join(filepath.Dir(cg.own), filepath.Base(cg.own), "agent") {
		return fmt.Errorf("agent is in %s, want <own>/agent", own)
	}
	fmt.Println("agent cgroup ok:", own)

	fd, err := cg.Prepare("web.1")
	if err != nil {
		return err
	}
	defer cg.Close()
	// The Prepare of a restart gets the same fd, owned by Cgroups.
	if fd2, err := cg.Prepare("web.1"); err != nil || fd2 != fd {
		return fmt.Errorf("second Prepare = %d, %v; want %d", fd2, err, fd)
	}
	cmd := exec.Command("/bin/sh", "-c", `setsid sh -c 'sleep 1000; :' </dev/null >/dev/null 2>&1 & exec sleep 1000`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, UseCgroupFD: true, CgroupFD: fd}
	if err := cmd.Start(); err != nil {
		return err
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	// Wait (bounded) for the daemon: a process in the cgroup in a session
	// of its own.
	var escapee int
	for deadline := time.Now().Add(10 * time.Second); escapee == 0; {
		pids, err := cg.Procs("web.1")
		if err != nil {
			return err
		}
		for _, pid := range pids {
			if sid, err := unix.Getsid(pid); err == nil && sid == pid && pid != cmd.Process.Pid {
				escapee = pid
			}
		}
		if escapee == 0 {
			if time.Now().After(deadline) {
				return fmt.Errorf("no setsid process in the cgroup; procs %v", pids)
			}
			time.Sleep(10 * time.Millisecond) // bounded poll for a fork we do not own
		}
	}
	fmt.Println("escapee in cgroup:", escapee)

	if err := cg.Kill("web.1"); err != nil {
		return err
	}
	if pids, err := cg.Procs("web.1"); err != nil || len(pids) != 0 {
		return fmt.Errorf("after Kill: procs %v, %v", pids, err)
	}
	if err := <-waited; err == nil || !strings.Contains(err.Error(), "killed") {
		return fmt.Errorf("instance exit = %v, want killed", err)
	}
	if alive(escapee) {
		return fmt.Errorf("setsid daemon %d survived", escapee)
	}
	fmt.Println("killed")

	// A restart after Kill (what the supervisor does after a crash) runs:
	// the process started in the instance's cgroup is not killed.
	fd, err = cg.Prepare("web.1")
	if err != nil {
		return err
	}
	again := exec.Command("/bin/sh", "-c", "echo up; exec sleep 1000")
	again.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, UseCgroupFD: true, CgroupFD: fd}
	stdout, err := again.StdoutPipe()
	if err != nil {
		return err
	}
	if err := again.Start(); err != nil {
		return err
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "up\n" {
		return fmt.Errorf("restarted process: read %q, %v (exit %v)", line, err, again.Wait())
	}
	if err := cg.Kill("web.1"); err != nil {
		return err
	}
	if err := again.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		return fmt.Errorf("restarted instance exit = %v, want killed", err)
	}
	fmt.Println("restart after kill ok")
	if err := cg.Remove("web.1"); err != nil {
		return err
	}
	if err := cg.Remove("web.1"); err != nil {
		return fmt.Errorf("second Remove: %w", err)
	}
	if err := cg.Kill("web.1"); err != nil {
		return fmt.Errorf("Kill of a removed cgroup: %w", err)
	}
	// Remove closed the fd: a new Prepare opens a new cgroup.
	fd3, err := cg.Prepare("web.1")
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(cg.apps, "web.1")); err != nil {
		return fmt.Errorf("Prepare after Remove: %w (fd %d)", err, fd3)
	}
	if err := cg.Remove("web.1"); err != nil {
		return err
	}
	fmt.Println("removed")
	return nil
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadString('\n')
	i := strings.LastIndexByte(line, ')')
	return i > 0 && i+2 < len(line) && line[i+2] != 'Z'
}
