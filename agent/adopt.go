package agent

// Adoption: apps outlive the agent (issue 14). A new agent (after a
// crash, a restart of the unit, or the re-exec of an upgrade) adopts the
// app processes the previous one left, instead of killing them, when it
// can verify each beyond doubt and still has what it needs to keep
// supervising it:
//
//   - its process record (pid, process group, start time) from the store,
//     for the app's active release;
//   - the read ends of its output pipes, named after its pid and
//     instance: from systemd's fd store after a crash or restart, or
//     passed through exec by an upgrade (without them it would die of
//     SIGPIPE at its next line);
//   - for a socket-activated instance, its slot's listening socket, from
//     the same places;
//   - under systemd, its place in the instance's cgroup.
//
// The supervisor then checks pid, start time and markers with the pid
// held by a pidfd (supervisor.Adopt). What fails any check has its
// process group killed, as before adoption existed, and is started
// afresh by startAll. A recorded process that died while no agent ran
// has what it wrote meanwhile read from its kept pipes into its log
// (supervisor.Salvage) before the instance starts again.
//
// Names of the kept fds (in the fd store, after systemd.StorePrefix, and
// in $BERTH_HANDOFF): "out/<pid>/<instance name>", "err/<pid>/<instance
// name>", "sock/<slot>".

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/agent/internal/procfs"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/supervisor"
	"github.com/berth-dev/berth/systemd"
)

// envHandoff names the variable through which an agent that re-executes
// itself describes the fds it passes: a JSON object of fd number ->
// name, names as in the fd store.
const envHandoff = "BERTH_HANDOFF"

func pipeName(stream string, pid int, name string) string {
	return stream + "/" + strconv.Itoa(pid) + "/" + name
}

func sockName(slot string) string { return "sock/" + slot }

// controlName names the control socket's listener passed through exec.
const controlName = "control"

// passListener returns a copy of ln's fd for the re-executed agent, and
// keeps ln from removing its socket file when the server closes it.
func passListener(ln net.Listener) *os.File {
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var f *os.File
	rc.Control(func(fd uintptr) {
		if nfd, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3); err == nil {
			f = os.NewFile(uintptr(nfd), "control socket")
		}
	})
	return f
}

// kept holds the fds a previous agent kept for this one, by name, until
// adoption takes them; the rest are closed (and removed from the fd
// store) by release.
type kept struct {
	files map[string]*os.File
}

// takeKept collects the fds systemd passed from its fd store and those
// a re-exec passed, and unsets the variables that described them.
// Sockets of a socket unit (berth.socket) are returned for listen.
func (a *Agent) takeKept() (*kept, systemd.Inherited) {
	k := &kept{files: map[string]*os.File{}}
	add := func(name string, f *os.File) {
		if old, ok := k.files[name]; ok {
			old.Close() // the same fd kept twice (store and exec): one will do
		}
		k.files[name] = f
	}
	in, err := systemd.Inherit()
	if err != nil {
		a.log.Error("fds passed by systemd", "error", err)
	}
	for _, nf := range in.Stored {
		add(nf.Name, nf.File)
	}
	in.Stored = nil
	if v := os.Getenv(envHandoff); v != "" {
		os.Unsetenv(envHandoff)
		var m map[string]string
		if err := json.Unmarshal([]byte(v), &m); err != nil {
			a.log.Error("fds passed by the previous agent", "error", err)
		}
		for fdStr, name := range m {
			fd, err := strconv.Atoi(fdStr)
			if err != nil || fd < 3 {
				continue
			}
			unix.CloseOnExec(fd)
			f := os.NewFile(uintptr(fd), name)
			if f == nil {
				continue
			}
			add(name, f)
		}
	}
	if f := k.take(controlName); f != nil {
		// The control socket an upgraded agent passed: served first.
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			a.log.Error("control socket passed by the previous agent", "error", err)
		} else {
			in.Listeners = append([]net.Listener{ln}, in.Listeners...)
			a.controlPassed = true
		}
	}
	if len(k.files) > 0 {
		a.log.Info("file descriptors kept by the previous agent", "count", len(k.files))
	}
	return k, in
}

// take returns the kept fd named name, nil if there is none; the caller
// owns it from then on.
func (k *kept) take(name string) *os.File {
	f := k.files[name]
	delete(k.files, name)
	return f
}

// release closes the kept fds nobody took and removes them from the fd
// store: their processes are gone or were not adopted.
func (a *Agent) releaseKept(k *kept) {
	for name, f := range k.files {
		f.Close()
		if systemd.CanNotify() {
			if err := systemd.RemoveFiles(name); err != nil {
				a.log.Warn("remove from the fd store", "name", name, "error", err)
			}
		}
		delete(k.files, name)
	}
}

// closeAll closes the kept fds nobody took, leaving the fd store as it
// is: a start-up that failed early adopted nothing, the next one may.
func (k *kept) closeAll() {
	for name, f := range k.files {
		f.Close()
		delete(k.files, name)
	}
}

// keepPipes is the supervisor's KeepPipes: the pipes of every new app
// process go to systemd's fd store, so the next agent can adopt it.
func (a *Agent) keepPipes(name string, pid int, stdout, stderr *os.File) {
	if !systemd.CanNotify() {
		return
	}
	for _, p := range []struct {
		stream string
		f      *os.File
	}{{"out", stdout}, {"err", stderr}} {
		if _, err := systemd.StoreFiles(pipeName(p.stream, pid, name), p.f); err != nil {
			a.log.Warn("keep an output pipe in the fd store; the process cannot be adopted after a crash",
				"name", name, "pid", pid, "error", err)
		}
	}
}

// dropPipes is the supervisor's DropPipes.
func (a *Agent) dropPipes(name string, pid int) {
	if !systemd.CanNotify() {
		return
	}
	for _, stream := range []string{"out", "err"} {
		if err := systemd.RemoveFiles(pipeName(stream, pid, name)); err != nil {
			a.log.Warn("remove an output pipe from the fd store", "name", name, "pid", pid, "error", err)
		}
	}
}

// keepSocket puts a slot's listening socket in the fd store.
func (a *Agent) keepSocket(slot string, f *os.File) {
	if !systemd.CanNotify() {
		return
	}
	if _, err := systemd.StoreFiles(sockName(slot), f); err != nil {
		a.log.Warn("keep a listening socket in the fd store", "slot", slot, "error", err)
	}
}

// dropSocket removes a slot's listening socket from the fd store.
func (a *Agent) dropSocket(slot string) {
	if !systemd.CanNotify() {
		return
	}
	if err := systemd.RemoveFiles(sockName(slot)); err != nil {
		a.log.Warn("remove a listening socket from the fd store", "slot", slot, "error", err)
	}
}

// adoptedSet is what adoptLeftovers adopted, for killStrays to spare:
// the process groups, and the instances by "app/web.1@v3" (the markers
// BERTH_APP, BERTH_PROCESS and BERTH_RELEASE of what left a group).
type adoptedSet struct {
	pgids     map[int]bool
	instances map[string]bool
}

// adoptLeftovers adopts, or else kills (a reused pid never: same pid and
// start time), every process a previous agent recorded, and deletes the
// records of those it killed. It returns what it adopted.
func (a *Agent) adoptLeftovers(ctx context.Context, k *kept) adoptedSet {
	adopted := adoptedSet{pgids: map[int]bool{}, instances: map[string]bool{}}
	recs, err := a.store.Procs()
	if err != nil {
		a.log.Error("read process records of the previous run", "error", err)
		return adopted
	}
	own := unix.Getpgrp()
	start := time.Now()
	cfg := a.config()
	for _, rec := range recs {
		if st, serr := procfs.ReadStat(rec.PID); serr != nil || st.StartTime != rec.StartTime || st.State == 'Z' {
			// It died while no agent ran: what it wrote last waits in
			// its pipes, if they were kept.
			out, errp := k.take(pipeName("out", rec.PID, rec.Name)), k.take(pipeName("err", rec.PID, rec.Name))
			if out != nil || errp != nil {
				spec := supervisor.Spec{Name: rec.Name, Log: supervisor.LogConfig{
					Path: a.appDir(rec.App, "logs", rec.Instance+".log"), MaxSize: cfg.LogMaxSize, MaxFiles: cfg.LogMaxFiles}}
				if err := a.sup.Salvage(spec, out, errp, salvageTimeout); err != nil {
					a.log.Warn("store the last output of a process that died with no agent", "name", rec.Name, "error", err)
				}
				a.dropPipes(rec.Name, rec.PID)
			}
			a.log.Info("process left by the previous agent is gone", "name", rec.Name, "pid", rec.PID)
			if err := a.store.DeleteProc(rec.Name); err != nil {
				a.log.Error("delete process record", "name", rec.Name, "error", err)
			}
			continue
		}
		err := a.adopt(rec, k)
		if err == nil {
			adopted.pgids[rec.PGID] = true
			adopted.instances[rec.App+"/"+rec.Instance+"@v"+strconv.Itoa(rec.Release)] = true
			continue
		}
		st, serr := procfs.ReadStat(rec.PID)
		alive := serr == nil && st.StartTime == rec.StartTime && st.State != 'Z'
		if alive && rec.PGID > 1 && rec.PGID != own {
			a.log.Warn("killing process left by the previous agent", "name", rec.Name, "pid", rec.PID, "pgid", rec.PGID, "reason", err)
			a.killGroup(ctx, rec.PGID)
		} else {
			a.log.Info("process left by the previous agent is gone", "name", rec.Name, "pid", rec.PID)
		}
		if err := a.store.DeleteProc(rec.Name); err != nil {
			a.log.Error("delete process record", "name", rec.Name, "error", err)
		}
	}
	if len(recs) > 0 {
		a.log.Info("adoption done", "adopted", len(adopted.pgids), "records", len(recs), "took", time.Since(start).String())
	}
	return adopted
}

// salvageTimeout bounds the read of the pipes of a process that died
// while no agent ran, in case something it started still holds them.
const salvageTimeout = 500 * time.Millisecond

// errNoAdopt says why a recorded process cannot be adopted.
var errNoAdopt = errors.New("not adoptable")

// adopt adopts the process of one record, or says why not; then nothing
// was changed (the fds it took are closed).
func (a *Agent) adopt(rec state.ProcRecord, k *kept) error {
	out := k.take(pipeName("out", rec.PID, rec.Name))
	errp := k.take(pipeName("err", rec.PID, rec.Name))
	closeBoth := func() {
		for _, f := range []*os.File{out, errp} {
			if f != nil {
				f.Close()
			}
		}
	}
	if out == nil || errp == nil {
		closeBoth()
		return fmt.Errorf("%w: the read ends of its output pipes were not kept", errNoAdopt)
	}
	cfg := a.config()
	rel, b, err := a.activeBuild(rec.App)
	if err != nil {
		closeBoth()
		return fmt.Errorf("%w: active release: %w", errNoAdopt, err)
	}
	if rel.Version != rec.Release {
		closeBoth()
		return fmt.Errorf("%w: it runs v%d, the active release is v%d", errNoAdopt, rec.Release, rel.Version)
	}
	who, tmp, err := a.prepare(cfg, rec.App, b)
	if err != nil {
		closeBoth()
		return fmt.Errorf("%w: %w", errNoAdopt, err)
	}
	spec, in, err := a.specFor(cfg, rec.App, rel, b, rec.Instance, who, tmp)
	if err != nil {
		closeBoth()
		return fmt.Errorf("%w: %w", errNoAdopt, err)
	}
	if spec.Name != rec.Name {
		closeBoth()
		return fmt.Errorf("%w: the release would run it as %s", errNoAdopt, spec.Name)
	}
	if in.steer != nil {
		if err := a.adoptSteered(rec, in, &spec); err != nil {
			closeBoth()
			return err
		}
	} else if in.Mode == "socket" {
		f, err := a.adoptSocket(in.slot(), k)
		if err != nil {
			closeBoth()
			return err
		}
		spec.ListenFiles = []*os.File{f}
	}
	var verify func(pid int) error
	if cg := a.cgroups; cg != nil {
		verify = func(pid int) error {
			pids, err := cg.Procs(spec.Name)
			if err != nil {
				return err
			}
			if !slices.Contains(pids, pid) {
				return fmt.Errorf("it is not in the cgroup of %s", spec.Name)
			}
			return nil
		}
	}
	in.prober = a.newProber(in)
	// Adopt owns the pipes from here on, adopted or not.
	err = a.sup.Adopt(spec, supervisor.Adopted{PID: rec.PID, StartTime: rec.StartTime, Stdout: out, Stderr: errp, Verify: verify})
	if err != nil {
		return err
	}
	in.recorded.Store(int64(rec.PID))
	if in.steer != nil {
		a.adoptedSteered = append(a.adoptedSteered, in)
	}
	a.startProber(in)
	if in.prober != nil {
		in.prober.setLive()
	}
	a.log.Info("adopted app process", "name", rec.Name, "pid", rec.PID, "release", rec.Release)
	return nil
}

// adoptSteered gives a steered instance about to be adopted what its
// process has, in place of what specFor made for a new one: the private
// port it was started with (its PORT) and, in socket mode, its own
// listening socket, taken from the process with pidfd_getfd (the agent's
// copy died with the previous agent). The previous agent's steering
// program went with it; the adopted instances join their groups once
// adoption is done (Run), so the public ports reach them again.
func (a *Agent) adoptSteered(rec state.ProcRecord, in *instance, spec *supervisor.Spec) error {
	in.steer.closeSock() // the fresh socket specFor made
	env, err := procfs.Environ(rec.PID)
	if err != nil {
		return fmt.Errorf("%w: read its environment: %w", errNoAdopt, err)
	}
	port := 0
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PORT="); ok {
			port, _ = strconv.Atoi(v)
		}
	}
	if port <= 0 || port > 65535 {
		return fmt.Errorf("%w: it has no PORT to steer to", errNoAdopt)
	}
	st := &steerInst{private: port, drain: in.steer.drain}
	if spec.ListenFiles != nil {
		inode, pf, err := listenerInode(rec.PGID, port)
		if err != nil || inode == 0 {
			return fmt.Errorf("%w: no socket listening on its port %d (%v)", errNoAdopt, port, err)
		}
		pidfd, err := unix.PidfdOpen(pf.PID, 0)
		if err != nil {
			return fmt.Errorf("%w: pidfd_open %d: %w", errNoAdopt, pf.PID, err)
		}
		fd, err := unix.PidfdGetfd(pidfd, pf.FD, 0)
		unix.Close(pidfd)
		if err != nil {
			return fmt.Errorf("%w: take its socket: %w", errNoAdopt, err)
		}
		unix.CloseOnExec(fd)
		st.sock = os.NewFile(uintptr(fd), fmt.Sprintf("%s port %d", in.Instance, port))
		spec.ListenFiles = []*os.File{st.sock}
	}
	for i, kv := range spec.Env {
		if strings.HasPrefix(kv, "PORT=") {
			spec.Env[i] = "PORT=" + strconv.Itoa(port)
		}
	}
	in.steer = st
	in.spec = *spec
	return nil
}

// adoptSocket takes the kept socket of slot into the agent's sockets,
// or returns the one it holds already.
func (a *Agent) adoptSocket(slot string, k *kept) (*os.File, error) {
	a.sockMu.Lock()
	defer a.sockMu.Unlock()
	if f, ok := a.sockets[slot]; ok {
		return f, nil
	}
	f := k.take(sockName(slot))
	if f == nil {
		return nil, fmt.Errorf("%w: the listening socket of %s was not kept", errNoAdopt, slot)
	}
	if v, err := unix.GetsockoptInt(int(rawFD(f)), unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
		f.Close()
		return nil, fmt.Errorf("%w: the kept fd of %s is not a listening socket", errNoAdopt, slot)
	}
	a.sockets[slot] = f
	return f, nil
}

// keepApps reports whether the agent, stopping, leaves its app processes
// to the next one: for an upgrade (Upgrade), and when systemd restarts
// the unit (`systemctl restart berth`). A stop of the unit, a shutdown of
// the host and a stop without systemd (SIGINT, SIGTERM) stop them.
func (a *Agent) keepApps() bool {
	if a.upgrade.Load() {
		return true
	}
	kind := systemd.WhyStopping(context.Background())
	a.log.Info("stopping", "why", kind.String())
	return kind == systemd.StopRestart
}

// Upgrade makes Run end as for a restart in place: the app processes are
// handed over, not stopped, and Exec then re-executes the agent's binary,
// which adopts them (SIGUSR2, `systemctl reload berth`). It fails, and
// nothing changes, when Run is not serving yet or the binary is not
// there to be executed.
func (a *Agent) Upgrade() error {
	select {
	case <-a.up:
	default:
		return fmt.Errorf("upgrade: %w", ErrNotRunning)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	if err := unix.Access(exe, unix.X_OK); err != nil {
		return fmt.Errorf("upgrade: binary %s: %w", exe, err)
	}
	cancel := a.cancelRun.Load()
	if cancel == nil {
		return fmt.Errorf("upgrade: %w", ErrNotRunning)
	}
	if err := systemd.Reloading(); err != nil {
		a.log.Warn("notify systemd", "error", err)
	}
	a.log.Info("upgrading in place: re-executing the agent's binary", "binary", exe)
	a.upgrade.Store(true)
	(*cancel)()
	return nil
}

// Exec re-executes the agent's binary after Run returned from an
// Upgrade, passing the app processes' pipes and sockets; it returns only
// on failure (then the apps still run, and the next agent started by
// systemd adopts them). Without an Upgrade it returns nil at once.
func (a *Agent) Exec() error {
	if !a.upgrade.Load() || a.handoff == nil {
		return nil
	}
	return a.handoff.exec()
}

// rawFD returns f's descriptor without os.File.Fd's switch to blocking
// mode.
func rawFD(f *os.File) uintptr {
	var fd uintptr
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(s uintptr) { fd = s })
	}
	return fd
}

// handoff is what an agent that re-executes itself passes on.
type handoff struct {
	files map[string]*os.File
}

// detachAll lets go of every app process (the supervisor's Detach) and
// collects their pipes and the listening sockets, for the next agent.
func (a *Agent) detachAll() *handoff {
	h := &handoff{files: map[string]*os.File{}}
	for _, d := range a.sup.Detach() {
		h.files[pipeName("out", d.PID, d.Name)] = d.Stdout
		h.files[pipeName("err", d.PID, d.Name)] = d.Stderr
	}
	a.sockMu.Lock()
	for slot, f := range a.sockets {
		h.files[sockName(slot)] = f
		delete(a.sockets, slot)
	}
	a.sockMu.Unlock()
	a.healthWG.Wait()
	return h
}

// close closes the handed-off fds (systemd's fd store keeps copies).
func (h *handoff) close() {
	for name, f := range h.files {
		f.Close()
		delete(h.files, name)
	}
}

// exec re-executes the agent's binary (the file at the path it was
// started from, possibly a new version) in this process, passing the
// handed-off fds (FD_CLOEXEC cleared) described in $BERTH_HANDOFF. It
// returns only on failure.
func (h *handoff) exec() error {
	exe, err := os.Executable() // /proc/self/exe, without " (deleted)" once replaced
	if err != nil {
		return fmt.Errorf("re-exec: %w", err)
	}
	desc := map[string]string{}
	for name, f := range h.files {
		fd, err := unix.FcntlInt(rawFD(f), unix.F_DUPFD, 3) // no FD_CLOEXEC
		if err != nil {
			return fmt.Errorf("re-exec: pass %s: %w", name, err)
		}
		desc[strconv.Itoa(fd)] = name
	}
	js, err := json.Marshal(desc)
	if err != nil {
		return fmt.Errorf("re-exec: %w", err)
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, envHandoff+"=") })
	env = append(env, envHandoff+"="+string(js))
	return fmt.Errorf("re-exec %s: %w", exe, syscall.Exec(exe, os.Args, env))
}
