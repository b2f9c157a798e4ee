package agent

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/agent/internal/procfs"
	"github.com/berth-dev/berth/supervisor"
	"github.com/berth-dev/berth/systemd"
)

// fakeFDStore is systemd's file descriptor store as an agent sees it: a
// NOTIFY_SOCKET that keeps the fds sent with FDSTORE=1 by FDNAME and
// drops them on FDSTOREREMOVE=1.
type fakeFDStore struct {
	conn *net.UnixConn
	done chan struct{}

	mu  sync.Mutex // guards fds
	fds map[string][]*os.File
}

func newFakeFDStore(t *testing.T) *fakeFDStore {
	t.Helper()
	dir, err := os.MkdirTemp("", "fdstore")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeFDStore{conn: conn, done: make(chan struct{}), fds: map[string][]*os.File{}}
	go s.serve()
	t.Cleanup(func() {
		conn.Close()
		<-s.done
		s.mu.Lock()
		for _, fs := range s.fds {
			for _, f := range fs {
				f.Close()
			}
		}
		s.mu.Unlock()
		os.RemoveAll(dir)
	})
	t.Setenv("NOTIFY_SOCKET", path)
	return s
}

func (s *fakeFDStore) serve() {
	defer close(s.done)
	buf, oob := make([]byte, 4096), make([]byte, 4096)
	for {
		n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		var files []*os.File
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				fds, _ := unix.ParseUnixRights(&m)
				for _, fd := range fds {
					unix.CloseOnExec(fd)
					files = append(files, os.NewFile(uintptr(fd), "stored"))
				}
			}
		}
		vars := map[string]string{}
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				vars[k] = v
			}
		}
		s.mu.Lock()
		switch {
		case vars["FDSTORE"] == "1":
			s.fds[vars["FDNAME"]] = append(s.fds[vars["FDNAME"]], files...)
			files = nil
		case vars["FDSTOREREMOVE"] == "1":
			for _, f := range s.fds[vars["FDNAME"]] {
				f.Close()
			}
			delete(s.fds, vars["FDNAME"])
		}
		s.mu.Unlock()
		for _, f := range files {
			f.Close()
		}
	}
}

func (s *fakeFDStore) has(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fds[systemd.StorePrefix+name]) > 0
}

// handoff returns $BERTH_HANDOFF passing copies of every stored fd, as
// a re-exec would (the agent takes them over).
func (s *fakeFDStore) handoff(t *testing.T) string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	desc := map[string]string{}
	for name, fs := range s.fds {
		for _, f := range fs {
			rc, err := f.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var fd int
			rc.Control(func(raw uintptr) { fd, err = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 3) })
			if err != nil {
				t.Fatal(err)
			}
			desc[strconv.Itoa(fd)] = strings.TrimPrefix(name, systemd.StorePrefix)
		}
	}
	js, _ := json.Marshal(desc)
	return string(js)
}

// linesProcfile runs web.1 printing "n 0", "n 1", ... every 10 ms.
const linesProcfile = "web: i=0; while :; do echo \"n $i\"; i=$((i+1)); sleep 0.01; done\n"

// loopPID returns the pid of web.1 of the lines app (the shell loop,
// leader of its process group, not the sleep it runs), 0 if none runs.
func loopPID(t *testing.T, dataDir string) int {
	for p := range appProcs(t, dataDir, "lines") {
		if st, err := procfs.ReadStat(p); err == nil && st.PGID == p {
			return p
		}
	}
	return 0
}

// TestAgent_AdoptAfterKill9 ensures a second agent on the same data dir,
// started after a kill -9 of a child agent, adopts its app process (the
// same pid, running since before, no restart) with the pipes the first
// one kept in the fd store, so that its log holds every line the app
// wrote, the ones written while no agent ran included, each once.
// killChildAgent runs the lines app (with manifest as its berth.json
// unless empty) under a child agent that keeps its pipes in a fake fd
// store, kills the agent with SIGKILL and returns the store, the config
// and the app's pid, still running.
func killChildAgent(t *testing.T, manifest string) (*fakeFDStore, Config, int) {
	store := newFakeFDStore(t)
	cfg := testConfig(dataDir(t))
	cfg.BasePort = freeBasePort(t)
	inbox := filepath.Join(cfg.DataDir, "inbox")
	if err := os.MkdirAll(inbox, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"Procfile": linesProcfile}
	name := "lines/web.1"
	if manifest != "" {
		files["berth.json"] = manifest
		name = "lines/web.1@v1"
	}
	if err := os.WriteFile(filepath.Join(inbox, "lines.tar.gz"), tarball(t, files), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, childLog := childAgentLog(t)
	child := startChildAgent(t, cfg, "", logf)
	var pid int
	waitFor(t, 30*time.Second, "the child agent to run web.1 and keep its pipes", func() bool {
		if child.ProcessState != nil {
			t.Fatalf("child agent exited: %s", childLog())
		}
		pid = loopPID(t, cfg.DataDir)
		_, err := os.Stat(filepath.Join(inbox, ".done", "lines.tar.gz"))
		return pid != 0 && err == nil && store.has(pipeName("out", pid, name)) && store.has(pipeName("err", pid, name)) &&
			(manifest == "" || store.has(sockName("lines/web.1")))
	})
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("web.1 died with the agent: %v", err)
	}
	return store, cfg, pid
}

func TestAgent_AdoptAfterKill9(t *testing.T) {
	t.Run("bind", func(t *testing.T) { adoptAfterKill9(t, "") })
	// The listening socket, kept in the fd store, is the one the adopted
	// process still accepts on.
	t.Run("socket", func(t *testing.T) { adoptAfterKill9(t, `{"processes":{"web":{"socket_activation":true}}}`) })
}

func adoptAfterKill9(t *testing.T, manifest string) {
	store, cfg, pid := killChildAgent(t, manifest)
	killed := time.Now()

	t.Setenv(envHandoff, store.handoff(t))
	ta := startAgent(t, cfg)
	ps := ta.procs(t, "lines")
	web := ps["web.1"]
	if web.PID != pid || web.State != "running" || web.Restarts != 0 {
		t.Fatalf("web.1 after the new agent started: %+v, want pid %d running, no restart", web, pid)
	}
	if !web.StartedAt.Before(killed) {
		t.Errorf("web.1 StartedAt %s, want its real start, before the kill at %s", web.StartedAt, killed)
	}
	if manifest != "" {
		if web.Mode != "socket" {
			t.Fatalf("web.1 mode %q, want socket", web.Mode)
		}
		ta.sockMu.Lock()
		f := ta.sockets["lines/web.1"]
		ta.sockMu.Unlock()
		if f == nil {
			t.Fatal("the new agent holds no socket for lines/web.1")
		}
		var held unix.Stat_t
		rc, _ := f.SyscallConn()
		rc.Control(func(fd uintptr) { unix.Fstat(int(fd), &held) })
		var apps unix.Stat_t
		if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/fd/3", &apps); err != nil {
			t.Fatal(err)
		}
		if held.Ino != apps.Ino {
			t.Errorf("the agent's socket (inode %d) is not the one web.1 accepts on (inode %d)", held.Ino, apps.Ino)
		}
	}
	// One set of processes: the loop and its sleep of the moment.
	for p := range appProcs(t, cfg.DataDir, "lines") {
		if st, err := procfs.ReadStat(p); err == nil && st.PGID != pid {
			t.Errorf("process %d of lines in group %d after adoption, want all in %d's", p, st.PGID, pid)
		}
	}
	// Lines keep coming through the adopted pipe.
	logPath := filepath.Join(cfg.DataDir, "apps", "lines", "logs", "web.1.log")
	var last int
	if lines, err := supervisor.ReadLogFile(logPath, 1); err == nil && len(lines) == 1 {
		last, _ = strconv.Atoi(strings.TrimPrefix(lines[0].Text, "n "))
	}
	ta.waitLog(t, "lines", "web.1", "n "+strconv.Itoa(last+30))
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	lines, err := supervisor.ReadLogFile(logPath, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range lines {
		got = append(got, l.Text)
	}
	for i, l := range got {
		if want := "n " + strconv.Itoa(i); l != want {
			t.Fatalf("log line %d is %q, want %q: a line is missing or twice (around: %q)", i, l, want, got[max(0, i-3):min(len(got), i+3)])
		}
	}
	if len(got) < last+30 || slices.Contains(got, "") {
		t.Fatalf("log holds %d lines, want more than %d", len(got), last+30)
	}
}

// TestAgent_UpgradeInPlace ensures SIGUSR2 re-executes a child agent in
// place without systemd (`make run`): the same process (pid), serving
// again on the same socket, with its app process adopted (same pid, no
// restart) and every line the app wrote stored once.
func TestAgent_UpgradeInPlace(t *testing.T) {
	cfg := testConfig(dataDir(t))
	cfg.BasePort = freeBasePort(t)
	inbox := filepath.Join(cfg.DataDir, "inbox")
	if err := os.MkdirAll(inbox, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(inbox, "lines.tar.gz"), tarball(t, map[string]string{"Procfile": linesProcfile}), 0o644); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(filepath.Dir(cfg.DataDir), "u.sock")
	logf, childLog := childAgentLog(t)
	child, c := startAnsweringChildAgent(t, cfg, socket, logf, childLog)
	var pid int
	waitFor(t, 30*time.Second, "the child agent to run web.1", func() bool {
		pid = loopPID(t, cfg.DataDir)
		_, err := os.Stat(filepath.Join(inbox, ".done", "lines.tar.gz"))
		return pid != 0 && err == nil
	})
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
	before, err := c.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the re-executed agent to answer", func() bool {
		if child.ProcessState != nil {
			t.Fatalf("child agent exited: %s", childLog())
		}
		info, err := c.Info(t.Context())
		return err == nil && info.StartedAt.After(before.StartedAt)
	})
	info, _ := c.Info(t.Context())
	if info.PID != before.PID {
		t.Fatalf("agent pid %d -> %d: not re-executed in place", before.PID, info.PID)
	}
	ps, err := c.Processes(t.Context(), "lines")
	if err != nil || len(ps) != 1 {
		t.Fatalf("ps after the upgrade: %+v %v", ps, err)
	}
	if ps[0].PID != pid || ps[0].State != "running" || ps[0].Restarts != 0 {
		t.Fatalf("web.1 after the upgrade: %+v, want pid %d running, no restart\n%s", ps[0], pid, childLog())
	}
	logPath := filepath.Join(cfg.DataDir, "apps", "lines", "logs", "web.1.log")
	var last int
	if lines, err := supervisor.ReadLogFile(logPath, 1); err == nil && len(lines) == 1 {
		last, _ = strconv.Atoi(strings.TrimPrefix(lines[0].Text, "n "))
	}
	waitFor(t, 10*time.Second, "lines after the upgrade", func() bool {
		lines, err := supervisor.ReadLogFile(logPath, 1)
		if err != nil || len(lines) != 1 {
			return false
		}
		n, _ := strconv.Atoi(strings.TrimPrefix(lines[0].Text, "n "))
		return n >= last+30
	})
	// Without systemd, SIGTERM stops the apps.
	child.Process.Signal(syscall.SIGTERM)
	if err := child.Wait(); err != nil {
		t.Fatalf("child agent: %v\n%s", err, childLog())
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("web.1 (pid %d) survived SIGTERM of the agent without systemd", pid)
	}
	lines, err := supervisor.ReadLogFile(logPath, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range lines {
		if want := "n " + strconv.Itoa(i); l.Text != want {
			t.Fatalf("log line %d is %q, want %q: a line is missing or twice", i, l.Text, want)
		}
	}
}

// TestAgent_CrashWhileNoAgent ensures an app process that dies while no
// agent runs is started again by the next agent, and that what it wrote
// meanwhile, left in its kept pipes, is stored in its log: every line of
// the dead process once, then the new one's.
func TestAgent_CrashWhileNoAgent(t *testing.T) {
	store, cfg, pid := killChildAgent(t, "")
	// Let it write while no agent reads, then kill it.
	logPath := filepath.Join(cfg.DataDir, "apps", "lines", "logs", "web.1.log")
	stored := 0
	if lines, err := supervisor.ReadLogFile(logPath, 1); err == nil && len(lines) == 1 {
		stored, _ = strconv.Atoi(strings.TrimPrefix(lines[0].Text, "n "))
	}
	waitFor(t, 10*time.Second, "unread lines in the pipe", func() bool {
		return pipeBytes(t, store, pipeName("out", pid, "lines/web.1")) > 100
	})
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "web.1 to die", func() bool {
		st, err := procfs.ReadStat(pid)
		return err != nil || st.State == 'Z'
	})

	t.Setenv(envHandoff, store.handoff(t))
	ta := startAgent(t, cfg)
	web := ta.procs(t, "lines")["web.1"]
	if web.PID == pid || web.PID == 0 {
		t.Fatalf("web.1 after the new agent started: %+v, want a new process", web)
	}
	ta.waitLog(t, "lines", "web.1", "n 20")
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	lines, err := supervisor.ReadLogFile(logPath, 0)
	if err != nil {
		t.Fatal(err)
	}
	runs, next := 1, 0
	for i, l := range lines {
		n, err := strconv.Atoi(strings.TrimPrefix(l.Text, "n "))
		if err != nil {
			t.Fatalf("unexpected line %q", l.Text)
		}
		if n == 0 && i > 0 {
			if next <= stored+1 {
				t.Errorf("the dead process's lines end at n %d: those left in its pipe (after n %d) were lost", next-1, stored)
			}
			runs, next = runs+1, 0
		}
		if n != next {
			t.Fatalf("line %d is %q, want n %d: a line is missing or twice", i, l.Text, next)
		}
		next++
	}
	if runs != 2 {
		t.Errorf("lines of %d processes, want 2 (the dead one, the new one)", runs)
	}
}

// pipeBytes returns how many bytes wait in the stored pipe named name.
func pipeBytes(t *testing.T, s *fakeFDStore, name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	fs := s.fds[systemd.StorePrefix+name]
	if len(fs) == 0 {
		return 0
	}
	// Not through Fd, which would make the shared pipe blocking.
	n := 0
	rc, err := fs[0].SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }) // FIONREAD
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAgent_AdoptSteered ensures an agent with connection steering
// adopts the steered web instance a child agent left at its kill -9
// (whose pinned program steered the public port meanwhile),
// in bind mode (the app binds its private PORT) and in socket mode (the
// instance's own socket, taken back from the process): the same pid,
// the same private port, steering on, and the public port answered by
// that process again once adoption is done.
func TestAgent_AdoptSteered(t *testing.T) {
	steerConfig(t) // steering must work here
	t.Run("bind", func(t *testing.T) { adoptSteered(t, "") })
	t.Run("socket", func(t *testing.T) { adoptSteered(t, `{"processes":{"web":{"socket_activation":true}}}`) })
}

func adoptSteered(t *testing.T, manifest string) {
	store := newFakeFDStore(t)
	cfg := testConfig(dataDir(t))
	cfg.BasePort = freeBasePort(t)
	inbox := filepath.Join(cfg.DataDir, "inbox")
	if err := os.MkdirAll(inbox, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(inbox, "hello.tar.gz"), helloTar(t, manifest, "one"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Pinned in a bpffs of the test's own, so that the program steers on
	// while no agent runs.
	pin := filepath.Join(bpffsDir(t), "berth")
	t.Setenv(helperSteerEnv, pin)
	logf, childLog := childAgentLog(t)
	child := startChildAgent(t, cfg, "", logf)
	public := fmt.Sprintf("http://127.0.0.1:%d/", cfg.BasePort)
	var pid int
	waitFor(t, 30*time.Second, "the child agent to run web.1 behind its public port", func() bool {
		if child.ProcessState != nil {
			t.Fatalf("child agent exited: %s", childLog())
		}
		pid = 0
		for p := range appProcs(t, cfg.DataDir, "hello") {
			pid = p
		}
		body, err := get(newClient(), public)
		return pid != 0 && err == nil && strings.Contains(body, "v1") && store.has(pipeName("out", pid, "hello/web.1@v1"))
	})
	t.Cleanup(func() { syscall.Kill(-pid, syscall.SIGKILL) })
	env, err := procfs.Environ(pid)
	if err != nil {
		t.Fatal(err)
	}
	private := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PORT="); ok {
			private = v
		}
	}
	if private == "" || private == strconv.Itoa(cfg.BasePort) {
		t.Fatalf("web.1 PORT %q, want a private port, not the public %d", private, cfg.BasePort)
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	// No agent runs: the pinned program still steers the public port to
	// web.1's socket.
	for i := range 20 {
		if body, err := get(newClient(), public); err != nil || !strings.Contains(body, "v1") {
			t.Fatalf("request %d to the public port while no agent runs: %q, %v", i, body, err)
		}
	}

	t.Setenv(envHandoff, store.handoff(t))
	cfg.NoSteer, cfg.SteerPin = false, pin
	ta := startAgent(t, cfg)
	web := ta.procs(t, "hello")["web.1"]
	if web.PID != pid || web.Restarts != 0 {
		t.Fatalf("web.1 after the new agent started: %+v, want pid %d adopted", web, pid)
	}
	if want := "on: listens on port " + private; web.Steering != want {
		t.Errorf("web.1 steering %q, want %q", web.Steering, want)
	}
	body, err := get(newClient(), public)
	if err != nil || !strings.Contains(body, "v1") {
		t.Fatalf("public port after adoption: %q, %v", body, err)
	}
}

// bpffsDir mounts a bpffs on a temporary directory for the test.
func bpffsDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount a bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}
