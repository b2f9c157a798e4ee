package systemd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// DefaultKillTimeout bounds how long Cgroups.Kill waits for a killed
// cgroup to empty.
const DefaultKillTimeout = 10 * time.Second

// Cgroups contains each app instance in its own cgroup v2, a child of the
// agent's delegated cgroup (systemd Delegate=yes):
//
//	<own>/agent          the agent itself (a leaf, so its siblings may be used)
//	<own>/apps/<name>    one per instance
//
// so that stopping an instance kills everything it forked, also what left
// its process group with setsid. Its methods fit supervisor.Container and
// are safe for concurrent use on different names.
type Cgroups struct {
	log  hclog.Logger
	own  string // the agent's delegated cgroup dir
	apps string // own/apps

	// killTimeout bounds Kill; DefaultKillTimeout unless a test sets it.
	killTimeout time.Duration

	mu  sync.Mutex     // guards fds
	fds map[string]int // open dir fds of prepared instance cgroups, by instance name

	ctrl controllers // the controllers enabled for limits (limits.go)
}

// cgroupEnv is where NewCgroups looks; tests point it at fakes.
type cgroupEnv struct {
	mountinfo  string // /proc/self/mountinfo
	selfCgroup string // /proc/self/cgroup
	pid        int    // the process to move into <own>/agent
}

// NewCgroups finds the agent's own cgroup v2 and checks that it was
// delegated to it and is writable; then it moves the agent into the leaf
// <own>/agent and creates <own>/apps. It returns an error wrapping
// ErrNoCgroup, saying why, when cgroup containment is not possible here;
// the agent then falls back to process groups.
func NewCgroups(log hclog.Logger) (*Cgroups, error) {
	return newCgroups(cgroupEnv{
		mountinfo:  "/proc/self/mountinfo",
		selfCgroup: "/proc/self/cgroup",
		pid:        os.Getpid(),
	}, log)
}

func newCgroups(env cgroupEnv, log hclog.Logger) (*Cgroups, error) {
	mount, mountRoot, err := findCgroup2Mount(env.mountinfo)
	if err != nil {
		return nil, err
	}
	own, err := ownCgroup(env.selfCgroup)
	if err != nil {
		return nil, err
	}
	if own == "/" {
		return nil, fmt.Errorf("%w: the agent runs in the root cgroup (not started by systemd with Delegate=yes)", ErrNoCgroup)
	}
	rel, ok := strings.CutPrefix(own, mountRoot)
	if mountRoot == "/" {
		rel, ok = own, true
	}
	if !ok || (rel != "" && !strings.HasPrefix(rel, "/")) {
		return nil, fmt.Errorf("%w: own cgroup %s is outside the cgroup2 mount (root %s)", ErrNoCgroup, own, mountRoot)
	}
	dir := filepath.Join(mount, rel)
	if filepath.Base(dir) == "agent" {
		// Started again in the leaf a previous agent moved into (a re-exec
		// in place): the delegated cgroup is its parent.
		if isDelegated(filepath.Dir(dir)) {
			dir = filepath.Dir(dir)
		}
	}
	if !isDelegated(dir) {
		return nil, fmt.Errorf("%w: cgroup %s was not delegated to the agent (Delegate=yes sets the trusted.delegate xattr)", ErrNoCgroup, dir)
	}
	if err := unix.Access(filepath.Join(dir, "cgroup.procs"), unix.W_OK); err != nil {
		return nil, fmt.Errorf("%w: cgroup %s is not writable: %v", ErrNoCgroup, dir, err)
	}
	c := &Cgroups{
		log:         log,
		own:         dir,
		apps:        filepath.Join(dir, "apps"),
		killTimeout: DefaultKillTimeout,
		fds:         map[string]int{},
	}
	leaf := filepath.Join(dir, "agent")
	for _, d := range []string{leaf, c.apps} {
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("%w: create cgroup %s: %v", ErrNoCgroup, d, err)
		}
	}
	if err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte(strconv.Itoa(env.pid)), 0); err != nil {
		return nil, fmt.Errorf("%w: move the agent (pid %d) into %s: %v", ErrNoCgroup, env.pid, leaf, err)
	}
	log.Info("app instances are contained in cgroups", "cgroup", c.apps)
	return c, nil
}

// Dir returns the cgroup dir of an instance (it may not exist).
func (c *Cgroups) Dir(name string) (string, error) {
	esc, err := escapeCgroupName(name)
	if err != nil {
		return "", err
	}
	return filepath.Join(c.apps, esc), nil
}

// Prepare creates the instance's cgroup if needed and returns a directory
// fd of it for SysProcAttr{UseCgroupFD: true, CgroupFD: fd}. The fd stays
// owned by Cgroups: the same one is returned until Kill, Remove or Close
// closes it.
func (c *Cgroups) Prepare(name string) (int, error) {
	dir, err := c.Dir(name)
	if err != nil {
		return -1, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if fd, ok := c.fds[name]; ok {
		return fd, nil
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return -1, fmt.Errorf("create cgroup for %s: %w", name, err)
	}
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open cgroup of %s: %w", name, &os.PathError{Op: "open", Path: dir, Err: err})
	}
	c.fds[name] = fd
	return fd, nil
}

// Close closes the fds of all prepared cgroups; it leaves the cgroups and
// their processes alone. Prepare must not be called after Close.
func (c *Cgroups) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, fd := range c.fds {
		unix.Close(fd)
		delete(c.fds, name)
	}
	return nil
}

// Kill kills every process in the instance's cgroup (cgroup.kill), waits
// until the cgroup is empty (at most DefaultKillTimeout), then closes its
// fd and removes it: the next Prepare makes a fresh cgroup. (A cgroup
// that was killed is not reused: on some kernels, such as 6.18, a process
// cloned into it afterwards with CLONE_INTO_CGROUP is killed at once.) An
// instance without a cgroup has nothing to kill.
func (c *Cgroups) Kill(name string) error {
	dir, err := c.Dir(name)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(c.killTimeout)
	err = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if _, serr := os.Stat(dir); errors.Is(serr, os.ErrNotExist) {
			c.closeFD(name)
			return nil
		}
		// A kernel before 5.14 has no cgroup.kill: SIGKILL each member
		// until none is left.
		if err := killEach(dir, deadline); err != nil {
			return fmt.Errorf("kill cgroup of %s: %w", name, err)
		}
	case err != nil:
		return fmt.Errorf("kill cgroup of %s: %w", name, err)
	default:
		if err := waitEmpty(dir, deadline); err != nil {
			return fmt.Errorf("kill cgroup of %s: %w", name, err)
		}
	}
	return c.Remove(name)
}

// Remove closes the instance's cgroup fd and removes its (empty) cgroup.
// A cgroup that does not exist is no error; one that still holds
// processes is.
func (c *Cgroups) Remove(name string) error {
	dir, err := c.Dir(name)
	if err != nil {
		return err
	}
	c.closeFD(name)
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove cgroup of %s: %w", name, &os.PathError{Op: "rmdir", Path: dir, Err: err})
	}
	return nil
}

// closeFD closes and forgets the instance's cgroup fd, if open.
func (c *Cgroups) closeFD(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fd, ok := c.fds[name]; ok {
		unix.Close(fd)
		delete(c.fds, name)
	}
}

// Procs returns the PIDs in the instance's cgroup; none when it has no
// cgroup.
func (c *Cgroups) Procs(name string) ([]int, error) {
	dir, err := c.Dir(name)
	if err != nil {
		return nil, err
	}
	pids, err := readProcs(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return pids, err
}

func readProcs(dir string) ([]int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%s/cgroup.procs: bad pid %q", dir, f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// populated reads "populated" from the cgroup's cgroup.events.
func populated(dir string) (bool, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false, err
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "populated "); ok {
			return v != "0", nil
		}
	}
	return false, fmt.Errorf("%s/cgroup.events has no populated line", dir)
}

// waitEmpty waits until cgroup.events says populated 0: the kernel
// signals a change of that file with IN_MODIFY.
func waitEmpty(dir string, deadline time.Time) error {
	ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	defer unix.Close(ifd)
	if _, err := unix.InotifyAddWatch(ifd, filepath.Join(dir, "cgroup.events"), unix.IN_MODIFY); err != nil {
		return fmt.Errorf("watch %s/cgroup.events: %w", dir, err)
	}
	buf := make([]byte, 4096)
	for {
		busy, err := populated(dir)
		if err != nil {
			return err
		}
		if !busy {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			pids, _ := readProcs(dir)
			return fmt.Errorf("cgroup %s still holds pids %v after the kill", dir, pids)
		}
		fds := []unix.PollFd{{Fd: int32(ifd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(min(left, 100*time.Millisecond)/time.Millisecond)+1); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll inotify: %w", err)
		}
		for {
			if _, err := unix.Read(ifd, buf); err != nil {
				break // EAGAIN: drained
			}
		}
	}
}

// killEach is the fallback for kernels without cgroup.kill.
func killEach(dir string, deadline time.Time) error {
	for {
		pids, err := readProcs(dir)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s still holds pids %v", dir, pids)
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		step := time.Now().Add(50 * time.Millisecond)
		if deadline.Before(step) {
			step = deadline
		}
		if err := waitEmpty(dir, step); err == nil {
			return nil
		}
	}
}

// isDelegated reports whether systemd marked dir as delegated (systemd 251
// and later set trusted.delegate, 253 and later also user.delegate).
func isDelegated(dir string) bool {
	buf := make([]byte, 16)
	for _, attr := range []string{"trusted.delegate", "user.delegate"} {
		n, err := unix.Getxattr(dir, attr, buf)
		if err == nil && string(buf[:n]) == "1" {
			return true
		}
	}
	return false
}

// findCgroup2Mount returns the mount point and root of the cgroup2 file
// system from a mountinfo file.
func findCgroup2Mount(mountinfo string) (mount, root string, err error) {
	data, err := os.ReadFile(mountinfo)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrNoCgroup, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		if fields := strings.Fields(post); len(fields) == 0 || fields[0] != "cgroup2" {
			continue
		}
		f := strings.Fields(pre)
		if len(f) < 5 {
			continue
		}
		return unescapeMountinfo(f[4]), unescapeMountinfo(f[3]), nil
	}
	return "", "", fmt.Errorf("%w: no cgroup2 file system is mounted", ErrNoCgroup)
}

// unescapeMountinfo undoes the octal escapes (\040 for a blank) of
// mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ownCgroup returns the cgroup v2 path ("0::/path") from /proc/self/cgroup.
func ownCgroup(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoCgroup, err)
	}
	for line := range strings.Lines(string(data)) {
		if p, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "0::"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s has no cgroup v2 entry", ErrNoCgroup, path)
}

// escapeCgroupName turns an instance name into one cgroup dir name,
// injectively: bytes other than letters, digits, '-', '_', '.' and '@'
// become \xNN, as do a leading '.' and the 'c' of a leading "cgroup."
// (names the kernel keeps for its own files).
func escapeCgroupName(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w: empty", ErrInvalidName)
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		ch := name[i]
		ok := ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' ||
			ch == '-' || ch == '_' || ch == '.' || ch == '@'
		if i == 0 && (ch == '.' || strings.HasPrefix(name, "cgroup.")) {
			ok = false
		}
		if ok {
			b.WriteByte(ch)
		} else {
			fmt.Fprintf(&b, `\x%02x`, ch)
		}
	}
	if b.Len() > 255 {
		return "", fmt.Errorf("%w: %q is too long for a cgroup name once escaped", ErrInvalidName, name)
	}
	return b.String(), nil
}
