//go:build e2e_systemd

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/agent/e2e/e2eutil"
)

// rootPackages are installed into the cached Debian root besides the
// minimal base. Changing the list rebuilds the cache.
var rootPackages = []string{"systemd", "dbus", "curl", "procps", "ca-certificates"}

const (
	suite          = "bookworm"
	defaultMirror  = "http://deb.debian.org/debian"
	rootStampName  = ".berth-e2e-root"
	bootTimeout    = 90 * time.Second
	commandTimeout = 2 * time.Minute
)

// containerPath is PATH for commands run in the container.
const containerPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// aptMirror returns the Debian mirror apt uses on this machine (the first
// source that serves bookworm), so debootstrap fetches from the same
// place, or deb.debian.org.
func aptMirror() string {
	var files []string
	files = append(files, "/etc/apt/sources.list")
	more, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append(files, more...)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if strings.HasSuffix(f, ".sources") {
			// deb822: stanzas of URIs: and Suites: fields.
			for _, stanza := range strings.Split(string(data), "\n\n") {
				var uris, suites []string
				for _, line := range strings.Split(stanza, "\n") {
					if v, ok := strings.CutPrefix(line, "URIs:"); ok {
						uris = strings.Fields(v)
					}
					if v, ok := strings.CutPrefix(line, "Suites:"); ok {
						suites = strings.Fields(v)
					}
				}
				for _, s := range suites {
					if s == suite && len(uris) > 0 {
						return uris[0]
					}
				}
			}
			continue
		}
		// One-line style: deb [options] URI SUITE COMPONENTS...
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) < 3 || f[0] != "deb" {
				continue
			}
			f = f[1:]
			if strings.HasPrefix(f[0], "[") {
				for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
					f = f[1:]
				}
				if len(f) > 0 {
					f = f[1:]
				}
			}
			if len(f) >= 2 && f[1] == suite {
				return f[0]
			}
		}
	}
	return defaultMirror
}

// debianRoot returns the cached Debian root under .cache/nspawn-root,
// building it with debootstrap when it is missing or was made with other
// packages. It is built in a temp dir and renamed into place, so an
// interrupted build never looks complete.
func debianRoot(t testing.TB) string {
	t.Helper()
	cache := filepath.Join(e2eutil.RepoRoot(t), ".cache")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	// One builder at a time.
	lock, err := os.OpenFile(filepath.Join(cache, "nspawn-root.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(cache, "nspawn-root")
	stamp := suite + " " + strings.Join(rootPackages, ",") + "\n"
	if got, err := os.ReadFile(filepath.Join(root, rootStampName)); err == nil && string(got) == stamp {
		return root
	}
	// Builds cut off earlier left their temp dirs; the lock says no build
	// runs now.
	stale, _ := filepath.Glob(root + ".tmp-*")
	for _, d := range stale {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}
	mirror := aptMirror()
	tmp := fmt.Sprintf("%s.tmp-%d", root, os.Getpid())
	t.Logf("building the Debian root with debootstrap from %s (once; cached in %s)", mirror, root)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "debootstrap", "--variant=minbase",
		"--include="+strings.Join(rootPackages, ","), suite, tmp, mirror)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		os.RemoveAll(tmp)
		t.Fatalf("debootstrap: %v\n%s", err, e2eutil.Tail(out.String(), 40))
	}
	if err := os.WriteFile(filepath.Join(tmp, rootStampName), []byte(stamp), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, root); err != nil {
		t.Fatal(err)
	}
	t.Logf("Debian root built in %s", time.Since(start).Round(time.Second))
	return root
}

// Machine is a Debian system booted with systemd-nspawn from its own copy
// of the cached root.
type Machine struct {
	t      testing.TB
	Name   string
	Root   string // the container's root dir on the host
	logDir string

	cmd     *exec.Cmd
	exited  chan struct{} // closed when nspawn has exited
	waitErr error         // nspawn's exit, valid after exited is closed
	PID1    int           // the container's PID 1 (systemd) as the host sees it
	boots   int
}

// NewMachine copies the cached root for one test run and registers its
// cleanup: the container is killed if still running and the copy removed.
func NewMachine(t testing.TB, name string) *Machine {
	t.Helper()
	src := debianRoot(t)
	dir := t.TempDir()
	m := &Machine{t: t, Name: name, Root: filepath.Join(dir, "root"), logDir: dir}
	start := time.Now()
	if out, err := exec.Command("cp", "-a", "--reflink=auto", src, m.Root).CombinedOutput(); err != nil {
		t.Fatalf("copy the Debian root: %v\n%s", err, out)
	}
	t.Logf("%s: root copied in %s", name, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if m.running() {
			m.kill()
		}
	})
	return m
}

// CopyIn copies a host file into the container's file system.
func (m *Machine) CopyIn(src, dst string, mode os.FileMode) {
	m.t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		m.t.Fatal(err)
	}
	m.WriteFile(dst, data, mode)
}

// WriteFile writes a file into the container's file system.
func (m *Machine) WriteFile(dst string, data []byte, mode os.FileMode) {
	m.t.Helper()
	p := filepath.Join(m.Root, dst)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		m.t.Fatal(err)
	}
}

func (m *Machine) running() bool {
	if m.exited == nil {
		return false
	}
	select {
	case <-m.exited:
		return false
	default:
		return true
	}
}

// Boot starts the container and waits until systemd reports the system
// running (or degraded, with the failed units logged). It returns the
// time from starting nspawn to that point.
func (m *Machine) Boot() time.Duration {
	m.t.Helper()
	if m.running() {
		m.t.Fatalf("%s: already running", m.Name)
	}
	m.boots++
	logPath := filepath.Join(m.logDir, fmt.Sprintf("console-%d.log", m.boots))
	logf, err := os.Create(logPath)
	if err != nil {
		m.t.Fatal(err)
	}
	m.cmd = exec.Command("systemd-nspawn", "--boot", "--register=no", "--keep-unit",
		"--private-network", "--quiet", "-D", m.Root, "--machine="+m.Name)
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	m.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "SYSTEMD_COLORS=0"}
	start := time.Now()
	if err := m.cmd.Start(); err != nil {
		logf.Close()
		m.t.Fatalf("start systemd-nspawn: %v", err)
	}
	m.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		m.waitErr = cmd.Wait()
		logf.Close()
		close(exited)
	}(m.cmd, m.exited)

	deadline := time.Now().Add(bootTimeout)
	m.PID1 = 0
	for m.PID1 == 0 {
		if !m.running() {
			m.t.Fatalf("%s: nspawn exited during boot: %v\n%s", m.Name, m.waitErr, m.Console())
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: no container PID 1 after %s\n%s", m.Name, bootTimeout, m.Console())
		}
		m.PID1 = findPID1(m.cmd.Process.Pid)
		if m.PID1 == 0 {
			time.Sleep(20 * time.Millisecond) // bounded poll: nspawn forks it
		}
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Until(deadline))
		out, err := m.execCtx(ctx, "systemctl", "is-system-running", "--wait")
		cancel()
		state := strings.TrimSpace(out)
		if state == "running" {
			break
		}
		if state == "degraded" {
			failed, _ := m.Exec("systemctl", "--failed", "--no-legend")
			m.t.Logf("%s: system degraded; failed units:\n%s", m.Name, failed)
			break
		}
		if time.Now().After(deadline) || !m.running() {
			m.t.Fatalf("%s: system not running: %q %v\n%s", m.Name, out, err, m.Console())
		}
		time.Sleep(50 * time.Millisecond) // bounded poll: the manager's socket appears
	}
	return time.Since(start)
}

// findPID1 returns the descendant of nspawn that is PID 1 of a new PID
// namespace and runs systemd, or 0.
func findPID1(nspawn int) int {
	queue := []int{nspawn}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			child, _ := strconv.Atoi(f)
			if child == 0 {
				continue
			}
			if nsPID(child) == 1 {
				if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", child)); err == nil && strings.HasSuffix(exe, "/systemd") {
					return child
				}
				continue
			}
			queue = append(queue, child)
		}
	}
	return 0
}

// nsPID returns the pid of a process in its innermost PID namespace.
func nsPID(pid int) int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "NSpid:"); ok {
			fields := strings.Fields(v)
			n, _ := strconv.Atoi(fields[len(fields)-1])
			return n
		}
	}
	return 0
}

// Exec runs a command inside the container (all its namespaces, as root)
// and returns its combined output.
func (m *Machine) Exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	return m.execCtx(ctx, args...)
}

func (m *Machine) execCtx(ctx context.Context, args ...string) (string, error) {
	if !m.running() {
		return "", fmt.Errorf("%s is not running", m.Name)
	}
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(m.PID1), "-a", "--"}, args...)...)
	cmd.Env = []string{"PATH=" + containerPath, "HOME=/root", "LANG=C.UTF-8", "TERM=dumb", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=cat"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	return out.String(), err
}

// MustExec is Exec that fails the test on error.
func (m *Machine) MustExec(args ...string) string {
	m.t.Helper()
	out, err := m.Exec(args...)
	if err != nil {
		m.t.Fatalf("%s: %v\n%s", m.Name, err, out)
	}
	return out
}

// Reboot reboots the container cleanly (systemctl reboot inside: nspawn
// exits) and boots it again; it returns the boot time.
func (m *Machine) Reboot() time.Duration {
	m.t.Helper()
	m.Exec("systemctl", "reboot") // returns or is cut off as the system goes down
	m.waitExit(2 * time.Minute)
	return m.Boot()
}

// PowerCut kills the container's PID 1 with SIGKILL: every process in it
// dies at once, with no clean shutdown; then waits for nspawn to exit.
// (The files live on the host, so what the kernel had cached is kept: this
// is a crash of every process at once, the part of a power cut a process
// can observe.)
func (m *Machine) PowerCut() {
	m.t.Helper()
	if err := unix.Kill(m.PID1, syscall.SIGKILL); err != nil {
		m.t.Fatalf("kill PID 1 (%d): %v", m.PID1, err)
	}
	m.waitExit(time.Minute)
}

func (m *Machine) waitExit(timeout time.Duration) {
	m.t.Helper()
	select {
	case <-m.exited:
	case <-time.After(timeout):
		m.t.Fatalf("%s: nspawn did not exit within %s\n%s", m.Name, timeout, m.Console())
	}
}

// kill stops a running container hard (cleanup).
func (m *Machine) kill() {
	_ = unix.Kill(m.PID1, syscall.SIGKILL)
	select {
	case <-m.exited:
	case <-time.After(30 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
}

// Console returns the tail of the current boot's console output.
func (m *Machine) Console() string {
	data, _ := os.ReadFile(filepath.Join(m.logDir, fmt.Sprintf("console-%d.log", m.boots)))
	return e2eutil.Tail(string(data), 60)
}

// Procs returns the host PIDs of the processes in the container whose
// environment holds all the given NAME=value pairs.
func (m *Machine) Procs(env ...string) []int {
	m.t.Helper()
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", m.PID1))
	if err != nil {
		m.t.Fatalf("pid namespace of %s: %v", m.Name, err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		m.t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid)); err != nil || l != ns {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			continue
		}
		have := map[string]bool{}
		for _, kv := range bytes.Split(data, []byte{0}) {
			have[string(kv)] = true
		}
		all := true
		for _, kv := range env {
			all = all && have[kv]
		}
		if all {
			pids = append(pids, pid)
		}
	}
	return pids
}

// CgroupOf returns a host process's cgroup v2 path (as seen in the
// container's cgroup namespace when the process is inside it).
func CgroupOf(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	return ""
}

var showProp = regexp.MustCompile(`(?m)^(\w+)=(.*)$`)

// Props returns `systemctl show` properties of a unit.
func (m *Machine) Props(unit string, names ...string) map[string]string {
	m.t.Helper()
	out := m.MustExec("systemctl", "show", unit, "-p", strings.Join(names, ","))
	props := map[string]string{}
	for _, mm := range showProp.FindAllStringSubmatch(out, -1) {
		props[mm[1]] = mm[2]
	}
	return props
}
