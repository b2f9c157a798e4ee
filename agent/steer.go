// Connection steering: with it, each web instance owns its listening
// socket and the agent decides which one gets each new connection to
// the type's public ports, with no proxy in the data path (an eBPF
// sk_lookup program and a sockmap, package steer).
//
// Port model. Each instance slot keeps its stable port (web.1: 5000,
// web.2: 5001 ...), now a public port of its type: a new connection to
// any of them goes to one of the type's steered instances that are up
// (spread by the client's address and port). Each instance listens on a
// private port of its own, which is its PORT: for a socket-activated
// type the agent makes a plain TCP socket per instance on a free port
// and passes it as fd 3 (one per instance, never shared by old and
// new); a type that binds $PORT itself (the "web" type) gets a free
// port, and the agent takes its listening socket with pidfd_getfd once
// it listens. Health checks probe the private port, so they always
// reach the instance they are about.
//
// A switch starts the new instances beside the old ones, waits until
// they are up and listen, points the public ports at them (the join),
// then drains the old ones: no new connection reaches them, and the
// agent waits (sock_diag) until their accept queues are empty and the
// connections they hold on the type's ports are closed, bounded by the
// type's drain_timeout; only then do they get their stop signal. A scale
// adds instances to the group once they are up and drains those it
// removes. An instance that restarts leaves the group by itself (its
// socket closes; the agent keeps a socket-activated one's open, so its
// connections queue meanwhile) and is put back once it listens again.
//
// Steering is on when the agent can load and attach the program (root,
// or CAP_BPF and CAP_NET_ADMIN; Linux 5.9+) and --no-steer is not set.
// Otherwise the agent logs why and keeps the shared-socket and
// stop-then-start switching; `berth ps` says steering is off and why.

package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/agent/internal/procfs"
	"github.com/berth-dev/berth/agent/internal/steer"
	"github.com/berth-dev/berth/agent/rollout"
	"github.com/berth-dev/berth/state/build"
	"golang.org/x/sys/unix"
)

// DefaultDrainTimeout bounds a drain when the type's berth.json sets no
// drain_timeout.
const DefaultDrainTimeout = 5 * time.Second

// drainPoll is how often a drain looks at the old instance's sockets.
const drainPoll = 20 * time.Millisecond

// listenPollMax is the longest waitListening waits between two looks
// for a steered instance's listening socket (it starts at drainPoll and
// doubles): a slow server joins its group at most this late.
const listenPollMax = 250 * time.Millisecond

// steerInst is what steering adds to an instance.
type steerInst struct {
	// private is the port the instance listens on: its PORT.
	private int
	// sock is the agent's socket for a socket-activated instance, passed
	// as fd 3 and kept open while the instance lives (across restarts);
	// nil for a type that binds $PORT itself. closeSock closes it.
	sock *os.File
	// drain bounds the drain of this instance.
	drain time.Duration

	// joined (the public ports may reach it) and draining (they no
	// longer do) are guarded by Agent.steerMu.
	joined, draining bool
	closeOnce        sync.Once
}

func (s *steerInst) closeSock() {
	s.closeOnce.Do(func() {
		if s.sock != nil {
			s.sock.Close()
		}
	})
}

// openSteering loads the steering program, or records why it is off.
// The program is pinned (steerPin) where a bpffs allows, so that the
// public ports keep reaching the instances while no agent runs; the
// previous agent's pinned program is taken over.
func (a *Agent) openSteering(cfg Config) {
	if cfg.NoSteer {
		a.steerOff = "turned off (--no-steer)"
		a.log.Info("connection steering is off (--no-steer): socket-activated types share one socket per slot, others switch stop-then-start")
		return
	}
	var s *steer.Steerer
	var err error
	pin, why := steerPin(cfg)
	if pin != "" {
		if s, err = steer.OpenPinned(pin); err != nil && !errors.Is(err, steer.ErrUnsupported) {
			why = err.Error()
			s, err = steer.Open()
		}
	} else {
		s, err = steer.Open()
	}
	if err != nil {
		a.steerOff = err.Error()
		a.log.Warn("connection steering is unavailable: socket-activated types share one socket per slot, others switch stop-then-start", "error", err)
		return
	}
	a.steerer = s
	a.log.Info("connection steering is on: each web instance listens on a port of its own, the agent steers the public ports (sk_lookup)")
	if s.Pinned() {
		a.log.Info("the steering program is pinned: the public ports keep reaching the instances while no agent runs", "pin", pin)
	} else {
		a.log.Warn("the steering program is not pinned: while no agent runs (a crash, a restart, an upgrade) the public ports of steered types refuse connections", "reason", why)
	}
}

// steerPin is the steering pin directory of cfg, or "" and why none.
func steerPin(cfg Config) (string, string) {
	switch cfg.SteerPin {
	case "-":
		return "", "turned off (steer pin -)"
	case "":
		const root = "/sys/fs/bpf"
		if !steer.IsBPFFS(root) {
			return "", "no bpffs mounted at " + root
		}
		sum := sha256.Sum256([]byte(cfg.DataDir))
		return filepath.Join(root, "berth-"+hex.EncodeToString(sum[:6])), ""
	}
	return cfg.SteerPin, ""
}

// closeSteering detaches the program once the apps are stopped.
func (a *Agent) closeSteering() {
	if a.steerer != nil {
		a.steerer.Unpin()
		if err := a.steerer.Close(); err != nil {
			a.log.Error("detach the steering program", "error", err)
		}
	}
}

// dropSteerOrphans stops steering the ports of groups a previous agent's
// pinned program had that no instance took over at start-up (a type or
// an app gone while no agent ran).
func (a *Agent) dropSteerOrphans() {
	if a.steerer != nil {
		a.steerer.DropOrphans()
	}
}

// steerable reports whether instances of typ are steered: steering is
// on, and the type is socket-activated or is the "web" type (which, by
// the Procfile convention, serves $PORT; Heroku likewise expects it to
// bind $PORT within 60 s).
func (a *Agent) steerable(typ string, pm build.ProcessManifest) bool {
	return a.steerer != nil && (pm.SocketActivation || typ == "web")
}

// steeringOf is what `berth ps` says of an instance's steering: "" for a
// type that is never steered.
func (a *Agent) steeringOf(in *instance) string {
	switch {
	case in.steer != nil:
		return "on: listens on port " + strconv.Itoa(in.steer.private)
	case a.steerer == nil && (in.Mode == "socket" || in.Type == "web"):
		return "off: " + a.steerOff
	}
	return ""
}

// newSteerInst prepares the steering of an instance about to start: its
// socket (socket mode) or its private port, and the env changes its
// process needs. env is the process's environment, with PORT set to the
// private port on return.
func newSteerInst(socket bool, pm build.ProcessManifest, env []string) (*steerInst, []string, error) {
	s := &steerInst{drain: DefaultDrainTimeout}
	if pm.DrainTimeout > 0 {
		s.drain = time.Duration(pm.DrainTimeout)
	}
	var lc net.ListenConfig
	// A sockmap takes only plain TCP sockets; Go listens with Multipath
	// TCP by default since 1.24.
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", ":0")
	if err != nil {
		return nil, nil, fmt.Errorf("listen on a private port: %w", err)
	}
	s.private = ln.Addr().(*net.TCPAddr).Port
	if socket {
		// File returns a duplicate; the listener is closed so that the
		// runtime's poller does not hold the socket (see socketFor).
		s.sock, err = ln.(*net.TCPListener).File()
		ln.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("socket on private port %d: %w", s.private, err)
		}
	} else {
		// The app binds the port itself: free it for it.
		ln.Close()
	}
	out := make([]string, 0, len(env)+1)
	godebug := false
	for _, kv := range env {
		switch {
		case strings.HasPrefix(kv, "PORT="):
			kv = "PORT=" + strconv.Itoa(s.private)
		case strings.HasPrefix(kv, "GODEBUG=") && !socket:
			godebug = true
			if !strings.Contains(kv, "multipathtcp=") {
				kv += ",multipathtcp=0"
			}
		}
		out = append(out, kv)
	}
	if !socket && !godebug {
		// A Go program would listen with MPTCP, which no sockmap takes.
		out = append(out, "GODEBUG=multipathtcp=0")
	}
	return s, out, nil
}

// probePort is the port health checks probe: the private one of a
// steered instance, else its stable port.
func (in *instance) probePort() int {
	if in.steer != nil {
		return in.steer.private
	}
	return in.Port
}

// listenerInode returns the inode of the socket listening on port that
// the process group pgid holds (0 if none), with the pid and fd that
// hold it.
func listenerInode(pgid, port int) (uint64, procfs.PIDFD, error) {
	socks, err := procfs.DiagDump(1 << procfs.TCPListen)
	if err != nil {
		return 0, procfs.PIDFD{}, err
	}
	var want []uint64
	for _, s := range socks {
		if int(s.Local.Port()) == port && s.Inode != 0 {
			want = append(want, s.Inode)
		}
	}
	if len(want) == 0 {
		return 0, procfs.PIDFD{}, nil
	}
	held, err := procfs.GroupSockets(pgid)
	if err != nil {
		return 0, procfs.PIDFD{}, err
	}
	for _, inode := range want {
		if pf, ok := held[inode]; ok {
			return inode, pf, nil
		}
	}
	return 0, procfs.PIDFD{}, nil
}

// listens reports whether in is a steered instance that binds its PORT
// itself and whose process group pid listens there now.
func (in *instance) listens(pid int) bool {
	if in.steer == nil || in.steer.sock != nil || pid <= 0 {
		return false
	}
	inode, _, err := listenerInode(pid, in.steer.private)
	return err == nil && inode != 0
}

// errNotListening says a steered instance holds no listening socket on
// its private port (yet).
var errNotListening = errors.New("not listening on its PORT")

// listenerFD returns a descriptor of in's listening socket and the
// function that releases it: the agent's own socket in socket mode, else
// a duplicate taken from the process with pidfd_getfd.
func (a *Agent) listenerFD(in *instance) (int, func(), error) {
	if in.steer.sock != nil {
		rc, err := in.steer.sock.SyscallConn()
		if err != nil {
			return 0, nil, err
		}
		var fd int
		if err := rc.Control(func(s uintptr) { fd = int(s) }); err != nil {
			return 0, nil, err
		}
		// Not Fd(): it would put the socket into blocking mode under the
		// app (issue 13).
		return fd, func() {}, nil
	}
	st, err := a.sup.Status(in.Name)
	if err != nil || st.PID == 0 {
		return 0, nil, fmt.Errorf("%s: %w (no process)", in.Instance, errNotListening)
	}
	inode, pf, err := listenerInode(st.PID, in.steer.private)
	if err != nil {
		return 0, nil, err
	}
	if inode == 0 {
		return 0, nil, fmt.Errorf("%s: %w %d", in.Instance, errNotListening, in.steer.private)
	}
	pidfd, err := unix.PidfdOpen(pf.PID, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("pidfd_open %d: %w", pf.PID, err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, pf.FD, 0)
	if err != nil {
		return 0, nil, fmt.Errorf("pidfd_getfd of fd %d of %d: %w", pf.FD, pf.PID, err)
	}
	return fd, func() { unix.Close(fd) }, nil
}

// resteer points the public ports of the app's type at its steered
// instances that joined and are not draining. A member that does not
// listen at the moment (it restarts) is left out until it listens again.
func (a *Agent) resteer(app, typ string) error {
	a.steerMu.Lock()
	defer a.steerMu.Unlock()
	var members []*instance
	for _, in := range a.appInstances(app) {
		if in.Type == typ && in.steer != nil && in.steer.joined && !in.steer.draining {
			members = append(members, in)
		}
	}
	slices.SortFunc(members, compareSlotsOf)
	var fds []int
	var ports []uint16
	var release []func()
	defer func() {
		for _, r := range release {
			r()
		}
	}()
	for _, in := range members {
		if !slices.Contains(ports, uint16(in.Port)) {
			ports = append(ports, uint16(in.Port))
		}
		fd, done, err := a.listenerFD(in)
		if errors.Is(err, errNotListening) {
			a.log.Debug("steered instance not listening; left out until it does", "name", in.Name)
			continue
		}
		if err != nil {
			return fmt.Errorf("socket of %s: %w", in.Instance, err)
		}
		release = append(release, done)
		fds = append(fds, fd)
	}
	slices.Sort(ports)
	if len(fds) > steer.MaxGroup {
		a.log.Warn("more instances than one group steers; the first ones get the connections", "app", app, "type", typ, "instances", len(fds), "max", steer.MaxGroup)
		fds = fds[:steer.MaxGroup]
	}
	key := app + "/" + typ
	if len(fds) == 0 {
		return a.steerer.Remove(key)
	}
	return a.steerer.Set(key, ports, fds)
}

// compareSlotsOf orders instances by slot, then by release.
func compareSlotsOf(x, y *instance) int {
	if c := rollout.CompareInstances(x.Instance, y.Instance); c != 0 {
		return c
	}
	return x.Release - y.Release
}

// join marks the steered instances of insts joined and points their
// types' public ports at those that listen. They are up already: one
// with an HTTP or TCP check listens (its check reached its private
// port); one without a check ran for the settle time. One that does not
// listen yet is not waited for: it joins once it does (watchListening,
// bounded by Config.StartTimeout), and the log says so.
func (a *Agent) join(insts []*instance) error {
	types := map[string]string{}
	for _, in := range insts {
		if in.steer == nil {
			continue
		}
		a.steerMu.Lock()
		in.steer.joined = true
		a.steerMu.Unlock()
		types[in.App+"\x00"+in.Type] = in.Type
		if in.steer.sock == nil {
			if st, err := a.sup.Status(in.Name); err != nil || st.PID == 0 {
				a.watchListening(in)
			} else if inode, _, err := listenerInode(st.PID, in.steer.private); err != nil || inode == 0 {
				a.log.Warn("new instance does not listen on its PORT yet; the public port reaches it once it does", "name", in.Name, "port", in.steer.private)
				a.watchListening(in)
			}
		}
	}
	for key, typ := range types {
		app, _, _ := strings.Cut(key, "\x00")
		if err := a.resteer(app, typ); err != nil {
			return fmt.Errorf("steer %s's %s connections to the new instances: %w", app, typ, err)
		}
	}
	return nil
}

// waitListening waits until in's process group listens on its private
// port, bounded by limit; an *instanceError if it does not.
func (a *Agent) waitListening(ctx context.Context, in *instance, limit time.Duration) error {
	if in.steer.sock != nil {
		return nil // the agent's own socket listens from the start
	}
	deadline := time.Now().Add(limit)
	poll := drainPoll
	for {
		st, err := a.newStatus(in)
		if err != nil {
			return err
		}
		if st.PID > 0 {
			inode, _, err := listenerInode(st.PID, in.steer.private)
			if err != nil {
				return fmt.Errorf("look for the socket of %s: %w", in.Instance, err)
			}
			if inode != 0 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return &instanceError{in, fmt.Errorf("%w: %s does not listen on its PORT %d after %s (a web process must bind $PORT)",
				ErrStartTimeout, in.Instance, in.steer.private, limit)}
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for %s to listen: %w", in.Instance, ctx.Err())
		case <-t.C:
		}
		// A server that does not listen at once may take seconds to
		// boot, and one that never does is waited for the whole limit:
		// each look (its status and a sock_diag dump) costs about 0.3
		// ms, 14 ms of CPU a second at drainPoll. Look less often the
		// longer it takes.
		poll = min(2*poll, listenPollMax)
	}
}

// watchListening puts a joined bind-mode instance whose process (new or
// restarted) does not listen yet back in its group once it does, in a
// goroutine bounded by Config.StartTimeout that the shutdown waits for.
func (a *Agent) watchListening(in *instance) {
	if in.steer == nil || in.steer.sock != nil {
		return
	}
	a.steerWG.Go(func() {
		ctx, cancel := context.WithTimeout(a.opCtx, a.config().StartTimeout)
		defer cancel()
		if err := a.waitListening(ctx, in, a.config().StartTimeout); err != nil {
			if ctx.Err() == nil {
				a.log.Warn("steered instance does not listen; the public port does not reach it", "name", in.Name, "error", err)
			}
			return
		}
		a.steerMu.Lock()
		ok := in.steer.joined && !in.steer.draining
		a.steerMu.Unlock()
		if !ok {
			return
		}
		if err := a.resteer(in.App, in.Type); err != nil {
			a.log.Error("steer connections to a restarted instance", "name", in.Name, "error", err)
		}
	})
}

// steerEvent reacts to a supervisor event of a steered instance: a
// bind-mode process that runs again (after a crash or a restart) is put
// back in its group once it listens.
func (a *Agent) steerEvent(in *instance, running bool) {
	if in.steer == nil || in.steer.sock != nil || !running {
		return
	}
	a.steerMu.Lock()
	ok := in.steer.joined && !in.steer.draining
	a.steerMu.Unlock()
	if ok {
		a.watchListening(in)
	}
}

// resteerStopped updates the groups of the steered types of insts,
// which were stopped: a type whose last instance went (scale to 0, a
// destroy, a failed first release) releases its public ports.
func (a *Agent) resteerStopped(app string, insts []*instance) {
	if a.steerer == nil {
		return
	}
	types := map[string]bool{}
	for _, in := range insts {
		if in.steer != nil && !types[in.Type] {
			types[in.Type] = true
			if err := a.resteer(app, in.Type); err != nil {
				a.log.Error("steer connections after a stop", "app", app, "type", in.Type, "error", err)
			}
		}
	}
}

// retire takes the steered instances among names out of their groups
// and drains them, all at once: it returns once each has an empty
// accept queue and holds no connection on its type's ports, or its
// drain timeout passed. Instances that are not steered are left alone.
func (a *Agent) retire(ctx context.Context, app string, names []string) {
	insts := pick(a.appInstances(app), names)
	types := map[string]bool{}
	var retiring []*instance
	a.steerMu.Lock()
	for _, in := range insts {
		if in.steer == nil {
			continue
		}
		in.steer.draining = true
		types[in.Type] = true
		retiring = append(retiring, in)
	}
	a.steerMu.Unlock()
	if len(retiring) == 0 {
		return
	}
	for typ := range types {
		if err := a.resteer(app, typ); err != nil {
			// The old ones may still get connections: the drain timeout
			// bounds the wait, and the stop follows.
			a.log.Error("steer connections away from old instances", "app", app, "type", typ, "error", err)
		}
	}
	ports := a.publicPorts(app)
	var wg sync.WaitGroup
	for _, in := range retiring {
		wg.Go(func() { a.drain(ctx, in, ports) })
	}
	wg.Wait()
}

// publicPorts returns the stable ports of the app's instances.
func (a *Agent) publicPorts(app string) map[int]bool {
	out := map[int]bool{}
	for _, in := range a.appInstances(app) {
		out[in.Port] = true
	}
	return out
}

// drain waits until in, which no new connection reaches any more, has
// an empty accept queue and holds no connection on its private port or
// on the app's public ports, twice in a row drainPoll apart (a handshake
// steered to it just before may still complete), bounded by its drain
// timeout.
func (a *Agent) drain(ctx context.Context, in *instance, public map[int]bool) {
	st, err := a.sup.Status(in.Name)
	if err != nil || st.PID == 0 {
		return // not running: nothing to drain
	}
	begin := time.Now()
	deadline := begin.Add(in.steer.drain)
	quiet := 0
	for {
		t := time.NewTimer(drainPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		queued, conns, err := drainState(st.PID, in.steer.private, public)
		if err != nil {
			a.log.Warn("cannot watch the drain of an old instance; stopping it now", "name", in.Name, "error", err)
			return
		}
		if queued == 0 && conns == 0 {
			if quiet++; quiet >= 2 {
				a.log.Debug("drained", "name", in.Name, "took", time.Since(begin))
				return
			}
		} else {
			quiet = 0
		}
		if time.Now().After(deadline) {
			a.log.Warn("drain timed out; stopping the old instance anyway", "name", in.Name,
				"drain_timeout", in.steer.drain, "queued", queued, "connections", conns)
			return
		}
	}
}

// drainMask selects every TCP state but TIME_WAIT, CLOSE and a request
// socket's NEW_SYN_RECV (its listener's queue counts it once complete).
const drainMask = (1<<12 - 1) &^ (1<<0 | 1<<procfs.TCPTimeWait | 1<<procfs.TCPClose)

// drainState counts the connections waiting in the accept queue of the
// socket listening on private, and the connections on private or on a
// public port that the process group pgid holds.
func drainState(pgid, private int, public map[int]bool) (queued, conns int, err error) {
	socks, err := procfs.DiagDump(drainMask)
	if err != nil {
		return 0, 0, err
	}
	held, err := procfs.GroupSockets(pgid)
	if err != nil {
		return 0, 0, err
	}
	for _, s := range socks {
		port := int(s.Local.Port())
		switch {
		case s.State == procfs.TCPListen:
			if port == private {
				queued += int(s.RQueue)
			}
		case s.Inode != 0 && (port == private || public[port]):
			if _, ok := held[s.Inode]; ok {
				conns++
			}
		}
	}
	return queued, conns, nil
}
