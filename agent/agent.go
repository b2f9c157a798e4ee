package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/fleet"
	"github.com/berth-dev/berth/agent/internal/notify"
	"github.com/berth-dev/berth/agent/internal/steer"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/state/build"
	"github.com/berth-dev/berth/supervisor"
	"github.com/berth-dev/berth/systemd"
)

// Agent is the berth daemon. It implements api.Backend. Create it with
// New and run it with Run.
type Agent struct {
	log  hclog.Logger // named "agent"
	root hclog.Logger // the caller's, for the other components' named loggers

	// cfgMu guards cfg; Reload replaces the fields that can change at run
	// time. Lock order: app lock, then cfgMu / opMu / sockMu (never two
	// of the latter at once).
	cfgMu sync.Mutex
	cfg   Config

	// Set by Run before ready is closed, read-only afterwards.
	store     *state.Store
	builds    *build.Store
	sup       *supervisor.Supervisor
	startedAt time.Time
	ready     chan struct{}
	// up is closed once the apps were started and the socket serves.
	up chan struct{}
	// opCtx is cancelled when Run starts shutting down: waits inside
	// switches end early.
	opCtx context.Context

	// opMu guards closing and pins; ops counts the Backend operations in
	// flight so shutdown can wait for them.
	opMu    sync.Mutex
	closing bool
	ops     sync.WaitGroup
	pins    map[string]int // build digests in use by deploys in flight

	// locks serialises switches per app (see lockApp).
	locksMu sync.Mutex
	locks   map[string]chan struct{}

	// probMu guards probations: the probation of each app's last switch
	// while it runs in the agent after the switch returned
	// (probation.go). Lock order: app lock, then probMu.
	probMu     sync.Mutex
	probations map[string]*probationRun

	// trimmer gives back the executable's pages once the agent has gone
	// quiet (trim.go); poked after work.
	trimmer *imageTrimmer

	// gcMu keeps garbage collection out while a deploy is between its
	// upload and the pin of its build (read-locked by deploys).
	gcMu sync.RWMutex

	// sockMu guards sockets: the listening sockets the agent owns for
	// instances of socket-activated types, by slot ("app/web.1"). A socket
	// outlives the instances that use it, so a switch or restart never
	// closes the port.
	sockMu  sync.Mutex
	sockets map[string]*os.File

	// cgroups contains app instances when the agent has a delegated
	// cgroup (nil otherwise); set by Run before ready.
	cgroups *systemd.Cgroups
	// kept holds the fds a previous agent kept for this one until start-up
	// has adopted what it can (adopt.go); only Run's start-up and
	// socketFor (under sockMu) use it, before ready is closed.
	kept *kept
	// upgrade is set by Upgrade: Run hands the app processes over
	// (handoff) instead of stopping them, for Exec.
	upgrade   atomic.Bool
	cancelRun atomic.Pointer[context.CancelFunc]
	handoff   *handoff // set by shutdown when upgrading
	// controlLn is the control socket's listener (nil with NoSocket);
	// set by Run before up is closed. control is a copy of its fd that
	// shutdown takes for an upgrade, to pass it on.
	controlLn     net.Listener
	control       *os.File
	controlPassed bool // the first listener takeKept returned came through exec
	// steerer steers the public ports' connections (steer.go); nil when
	// steering is off, and steerOff says why. Set by Run before the apps
	// start, read-only afterwards.
	steerer  *steer.Steerer
	steerOff string
	// steerMu serialises the updates of the steering groups and guards
	// the joined and draining flags of steered instances. Lock order:
	// app lock, then steerMu (never with cfgMu, opMu, sockMu).
	steerMu sync.Mutex
	// steerWG counts the goroutines that wait for a steered instance to
	// listen again (watchListening).
	steerWG sync.WaitGroup
	// adoptedSteered lists the steered instances adopted at start-up,
	// which join their groups once adoption is done (Run only).
	adoptedSteered []*instance

	// healthWG counts the health probers' goroutines (see prober).
	healthWG sync.WaitGroup
	// healthChanged wakes switches waiting for health after every change
	// of an instance's health.
	healthChanged notify.Notifier

	// unrec keeps the release failures the store could not record
	// (failures.go).
	unrec unrecorded

	// events wakes event followers after every AppendEvent.
	events notify.Notifier
	// changed wakes the main loop to update the systemd status line.
	changed chan struct{}
	// ping is how the watchdog asks the main loop whether it is alive.
	ping chan chan struct{}
	// changing counts the changes in flight (holders of an app's lock
	// and those waiting for one, see lockApp). When the last one ends,
	// releaseDue is set and changesEnded wakes the supervisor's event
	// watcher; once it has caught up with the events the changes caused,
	// settled wakes the main loop to give the garbage back (see
	// releaseMemory).
	changing     atomic.Int32
	releaseDue   atomic.Bool
	changesEnded chan struct{}
	settled      chan struct{}

	// met counts what metrics.go reports and no one else keeps; notes
	// remembers the limits said to be unenforced (limits.go).
	met   metrics
	notes limitNotes

	// fleet is fleet mode (nil when Config.Fleet is nil), made by New
	// and run by Run.
	fleet *fleet.Fleet
}

// New checks cfg, fills its defaults and returns an agent. It starts
// nothing; Run does.
func New(cfg Config, log hclog.Logger) (*Agent, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	a := &Agent{
		log:          log.Named("agent"),
		root:         log,
		cfg:          cfg,
		ready:        make(chan struct{}),
		up:           make(chan struct{}),
		pins:         map[string]int{},
		locks:        map[string]chan struct{}{},
		probations:   map[string]*probationRun{},
		sockets:      map[string]*os.File{},
		changed:      make(chan struct{}, 1),
		ping:         make(chan chan struct{}),
		changesEnded: make(chan struct{}, 1),
		settled:      make(chan struct{}, 1),
	}
	a.trimmer = &imageTrimmer{quiet: quietDelay, every: minTrimInterval}
	if !cfg.KeepImageMapped { // fixed for the agent's life: Reload keeps it
		a.trimmer.trim = a.trimImage
	}
	if cfg.Fleet != nil {
		f, err := fleet.New(*cfg.Fleet, fleetNode{a}, log.Named("fleet"))
		if err != nil {
			return nil, err
		}
		a.fleet = f
	}
	return a, nil
}

func (cfg Config) validate() error {
	switch {
	case cfg.BasePort < 1 || cfg.BasePort > 65535:
		return fmt.Errorf("base port %d: must be between 1 and 65535", cfg.BasePort)
	case cfg.Retention < 1:
		return fmt.Errorf("release retention %d: must be at least 1", cfg.Retention)
	case cfg.StopTimeout < 0:
		return fmt.Errorf("stop timeout %s: must not be negative", cfg.StopTimeout)
	case cfg.StartTimeout < 0:
		return fmt.Errorf("start timeout %s: must not be negative", cfg.StartTimeout)
	case cfg.Settle < 0:
		return fmt.Errorf("settle time %s: must not be negative", cfg.Settle)
	case cfg.LogMaxSize < 0:
		return fmt.Errorf("log max size %d: must not be negative", cfg.LogMaxSize)
	case cfg.LogMaxFiles < 0:
		return fmt.Errorf("log max files %d: must not be negative", cfg.LogMaxFiles)
	}
	for _, name := range cfg.AllowEnv {
		if err := state.ValidateEnvName(name); err != nil {
			return fmt.Errorf("allowed env: %w", err)
		}
	}
	if cfg.DefaultUser != "" || os.Geteuid() != 0 {
		if _, err := resolveUser("", cfg.DefaultUser); err != nil {
			return fmt.Errorf("default user: %w", err)
		}
	}
	if cfg.MetricsListen != "" {
		if _, port, err := net.SplitHostPort(cfg.MetricsListen); err != nil || port == "" {
			return fmt.Errorf("metrics listen address %q: want HOST:PORT, e.g. 127.0.0.1:9090", cfg.MetricsListen)
		}
	}
	if r := cfg.AppUIDs; r.Min < 1 || r.Max < r.Min || r.Max >= 1<<32-1 {
		return fmt.Errorf("app uids %d-%d: must be MIN-MAX with 0 < MIN <= MAX < 4294967295", r.Min, r.Max)
	}
	return nil
}

// config returns the current configuration.
func (a *Agent) config() Config {
	a.cfgMu.Lock()
	defer a.cfgMu.Unlock()
	return a.cfg
}

// Reload applies a new configuration at run time (SIGHUP): the default
// user, retention, stop timeout, log limits and allowed env take effect
// for processes started from now on; the data dir, socket, base port,
// lock timeout and journal setting need a restart, which is logged.
func (a *Agent) Reload(cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	a.cfgMu.Lock()
	defer a.cfgMu.Unlock()
	old := a.cfg
	fixed := map[string]bool{
		"data_dir":     cfg.DataDir != old.DataDir,
		"socket":       cfg.SocketPath != old.SocketPath,
		"socket_group": cfg.SocketGroup != old.SocketGroup,
		"base_port":    cfg.BasePort != old.BasePort,
		"lock_timeout": cfg.LockTimeout != old.LockTimeout,
		"journal":      cfg.Journal != old.Journal,
		"inbox_quiet":  cfg.InboxQuiet != old.InboxQuiet,
	}
	fixed["metrics_listen"] = cfg.MetricsListen != old.MetricsListen
	fixed["fleet"] = (cfg.Fleet == nil) != (old.Fleet == nil) ||
		(cfg.Fleet != nil && (cfg.Fleet.Node != old.Fleet.Node || !slices.Equal(cfg.Fleet.Endpoints, old.Fleet.Endpoints)))
	for name, changed := range fixed {
		if changed {
			a.log.Warn("setting changes only when the agent restarts", "setting", name)
		}
	}
	next := old
	next.DefaultUser = cfg.DefaultUser
	next.AppUIDs = cfg.AppUIDs
	next.Retention = cfg.Retention
	next.StopTimeout = cfg.StopTimeout
	next.LogMaxSize = cfg.LogMaxSize
	next.LogMaxFiles = cfg.LogMaxFiles
	next.AllowEnv = cfg.AllowEnv
	next.Backoff = cfg.Backoff
	next.StartTimeout = cfg.StartTimeout
	next.Settle = cfg.Settle
	next.Probation = cfg.Probation
	next.ReleasePhaseTimeout = cfg.ReleasePhaseTimeout
	a.cfg = next
	a.log.Info("configuration reloaded", "default_user", next.DefaultUser, "retention", next.Retention,
		"stop_timeout", next.StopTimeout, "log_max_size", next.LogMaxSize, "log_max_files", next.LogMaxFiles)
	return nil
}

// Run opens the store, kills what a previous agent left running, brings
// every app to its active release, serves the control socket and watches
// the inbox until ctx ends; then it stops every app process gracefully
// and returns nil. It returns an error, having started nothing, when
// another agent uses the data dir.
func (a *Agent) Run(ctx context.Context) (err error) {
	cfg := a.config()
	if a.store != nil {
		return errors.New("agent: Run called twice")
	}
	ctx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	a.cancelRun.Store(&cancelRun)
	// The fds a previous agent kept (systemd's fd store, or exec) are
	// taken first, before anything else opens files.
	k, inherited := a.takeKept()
	a.kept = k
	defer k.closeAll() // after a failed start-up, which released none of them
	lns := inherited.Listeners
	defer func() { // after a failed start-up, before listen took them
		for _, ln := range lns {
			ln.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	store, err := state.Open(state.Config{Path: cfg.path("berth.db"), LockTimeout: cfg.LockTimeout}, a.root.Named("state"))
	if err != nil {
		if errors.Is(err, state.ErrLocked) {
			return fmt.Errorf("data dir %s is in use by another berth agent (its database is locked): %w", cfg.DataDir, err)
		}
		return fmt.Errorf("open store: %w", err)
	}
	defer func() {
		if cerr := store.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close store: %w", cerr)
		}
	}()
	// As root every app runs as a user of its own: only they may enter
	// their builds.
	builds, err := build.Open(build.Config{Dir: cfg.path("builds"), Private: os.Geteuid() == 0}, a.root.Named("build"))
	if err != nil {
		return fmt.Errorf("open build store: %w", err)
	}
	if fi, err := os.Stat(cfg.DataDir); err == nil && os.Geteuid() == 0 && fi.Mode().Perm()&0o001 == 0 {
		a.log.Warn("the data dir is not searchable by other users: apps running as their own user cannot reach their builds",
			"dir", cfg.DataDir, "mode", fi.Mode().Perm().String())
	}
	if err := os.MkdirAll(cfg.path("apps"), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", cfg.path("apps"), err)
	}
	// Tarballs dropped in the inbox are the agent's alone to read.
	if err := os.MkdirAll(cfg.path("inbox"), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", cfg.path("inbox"), err)
	}
	if err := os.Chmod(cfg.path("inbox"), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", cfg.path("inbox"), err)
	}

	supCfg := supervisor.Config{Subreaper: true, OutputLimit: releaseOutputMax,
		KeepPipes: a.keepPipes, DropPipes: a.dropPipes}
	if cg, err := systemd.NewCgroups(a.root.Named("systemd")); err == nil {
		supCfg.Container = cg
		a.cgroups = cg
	} else {
		a.log.Info("no delegated cgroup; containing app processes by process group only", "reason", err)
	}
	if cfg.Journal {
		supCfg.Sink = func(l supervisor.LogLine, fields map[string]string) {
			_ = systemd.SendJournal(l.Text, l.Stream == "stderr", fields)
		}
	}
	sup := supervisor.New(supCfg, a.root.Named("supervisor"))

	var wg sync.WaitGroup
	defer wg.Wait()
	supCtx, stopSup := context.WithCancel(context.Background())
	defer stopSup()
	supDone := make(chan error, 1)
	wg.Go(func() { supDone <- sup.Run(supCtx) })
	supEvents, unsubscribe := sup.Subscribe(1024)
	watchDone := make(chan struct{})
	wg.Go(func() { a.watchSupervisor(supEvents, watchDone) })
	defer func() {
		close(watchDone)
		unsubscribe()
	}()

	opCtx, cancelOps := context.WithCancel(context.Background())
	defer cancelOps()
	a.store, a.builds, a.sup, a.opCtx = store, builds, sup, opCtx
	a.startedAt = time.Now()

	// A previous agent that died, restarted or re-executed left its app
	// processes running: adopt those it can verify, with their pipes and
	// sockets, and kill the others before starting new ones, those it
	// recorded and those it had no time to record.
	// Steering first: an adopted steered instance keeps its private port
	// and joins its group once adoption is done.
	a.openSteering(cfg)
	adopted := a.adoptLeftovers(ctx, k)
	if len(a.adoptedSteered) > 0 {
		if err := a.join(a.adoptedSteered); err != nil {
			a.log.Error("steer the public ports to the adopted instances", "error", err)
		}
		a.adoptedSteered = nil
	}
	a.killStrays(ctx, adopted)
	causes := a.openUnrecorded(cfg.path("unrecorded-failures"))
	defer a.closeUnrecorded()
	a.failInterrupted(causes)
	a.syncUnrecorded()
	// A uid freed by a destroy that crashed before pruning keeps no
	// access to builds, and builds from before private builds become so.
	a.pruneBuildAccess()
	close(a.ready)
	// From here on Backend calls are served. The shutdown is written out
	// in one place, in order (see shutdown): whatever started below is
	// registered in sd, and stopped after the operations in flight ended.
	var sd shutdownSteps
	defer func() { a.shutdown(cancelOps, &sd) }()

	a.startAll(ctx)
	a.dropSteerOrphans()
	a.sockMu.Lock()
	a.kept = nil
	a.sockMu.Unlock()
	a.releaseKept(k) // what no adopted or started instance took

	passed := lns
	lns = nil
	if cfg.NoSocket {
		for _, ln := range passed {
			ln.Close()
		}
	} else {
		ln, gid, err := a.listen(cfg, passed)
		if err != nil {
			return err
		}
		a.controlLn = ln
		srv := api.NewServer(api.ServerConfig{Backend: a, GID: gid, Version: cfg.Version, AfterRequest: a.trimmer.poke}, a.root.Named("api"))
		sd.server = goOwned(context.Background(), func(ctx context.Context) {
			if err := srv.Serve(ctx, ln); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, net.ErrClosed) {
				a.log.Error("control socket server stopped", "error", err)
			}
		})
		a.log.Info("serving", "socket", ln.Addr().String())
	}
	if cfg.MetricsListen != "" {
		// The apps run on without it: a port taken by something else
		// must not keep them down (the socket serves /metrics too).
		stop, lerr := a.listenMetrics(cfg.MetricsListen)
		if lerr != nil {
			a.log.Error("no TCP metrics listener; /metrics is served on the control socket only", "error", lerr)
		}
		sd.metrics = stop
	}

	// The inbox also stops as soon as Run's context ends, before the
	// ordered shutdown reaches it: it starts no new deploy then.
	sd.inbox = goOwned(ctx, func(ctx context.Context) {
		if err := a.runInbox(ctx); err != nil {
			a.log.Error("inbox watcher stopped", "error", err)
		}
	})

	// Fleet mode, like the inbox, stops with Run's context: the apps run
	// on whatever becomes of etcd.
	if a.fleet != nil {
		sd.fleet = goOwned(ctx, func(ctx context.Context) {
			if err := a.fleet.Run(ctx); err != nil {
				a.log.Error("fleet mode stopped; the apps run on", "error", err)
			}
		})
	}

	if err := systemd.Ready(); err != nil {
		a.log.Warn("notify systemd", "error", err)
	}
	wd := &systemd.Watchdog{Check: a.alive}
	sd.watchdog = goOwned(context.Background(), func(ctx context.Context) {
		if err := wd.Run(ctx, a.root.Named("systemd")); err != nil && !errors.Is(err, context.Canceled) {
			a.log.Warn("watchdog stopped", "error", err)
		}
	})

	close(a.up)
	a.trimmer.hold()()
	a.trimmer.pokeAfterGC()
	defer a.trimmer.stop()
	if err := a.mainLoop(ctx, supDone); err != nil {
		return err
	}
	if a.upgrade.Load() {
		return nil // not stopping: the next agent is this process (Exec)
	}
	a.log.Info("stopping")
	if err := systemd.Stopping(); err != nil {
		a.log.Warn("notify systemd", "error", err)
	}
	return nil
}

// goOwned runs fn in a goroutine with a context derived from parent and
// returns the function that cancels that context and waits for fn to
// return.
func goOwned(parent context.Context, fn func(ctx context.Context)) func() {
	ctx, cancel := context.WithCancel(parent)
	done := make(chan struct{})
	go func() { // owned: the returned function waits for done
		defer close(done)
		fn(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// shutdownSteps holds the stop functions of what Run started after the
// store and the supervisor (nil for what it did not start).
type shutdownSteps struct {
	fleet, inbox, server, metrics, watchdog func()
}

// mainLoop answers watchdog pings and updates the systemd status line
// until ctx ends. It fails if the supervisor stops on its own (another
// supervisor runs in this process): nothing would reap the app processes.
func (a *Agent) mainLoop(ctx context.Context, supDone <-chan error) error {
	last := ""
	a.markChanged()
	// retry is armed only while failures wait to be recorded.
	var retry <-chan time.Time
	arm := func() {
		if retry == nil && a.unrecordedLeft() {
			retry = time.After(unrecordedRetry)
		}
	}
	for {
		arm()
		select {
		case <-ctx.Done():
			return nil
		case <-retry:
			retry = nil
			a.retryUnrecorded()
		case err := <-supDone:
			return fmt.Errorf("supervisor stopped: %w", err)
		case reply := <-a.ping:
			close(reply)
		case <-a.changed:
			// Every instance event wakes the loop: without a service
			// manager to tell, composing the line (a walk of all
			// instances) would only make garbage.
			if !systemd.CanNotify() {
				break
			}
			if s := a.statusLine(); s != last {
				last = s
				if err := systemd.Status(s); err != nil {
					a.log.Debug("systemd status", "error", err)
				}
			}
		case <-a.settled:
			if a.changing.Load() == 0 {
				releaseMemory()
			}
		}
	}
}

// releaseMemory collects the garbage a change left and gives the free
// heap back to the kernel. Go collects when the heap has doubled since
// the last collection (4 MB at least), and an agent that has gone idle
// allocates nothing more: without this, what a deploy of 100 instances
// left (about 2 MB of dead heap, more in freed pages not yet returned)
// stays in its resident memory until the forced collection every two
// minutes, and part of it for good. It costs one collection, 2-3 ms of
// CPU with 100 instances, once the changes in flight have ended and the
// events they caused are handled (see changeDone and watchSupervisor),
// never while idle.
func releaseMemory() { debug.FreeOSMemory() }

// beginChange counts a change in flight; changeDone ends it.
// Both also hold the executable trim off (trim.go).
func (a *Agent) beginChange() {
	a.changing.Add(1)
	a.trimmer.begin()
}

// changeDone ends a change; when it was the last one in flight, it asks
// the event watcher to have the memory the changes left released
// (releaseIfSettled).
func (a *Agent) changeDone() {
	defer a.trimmer.end()
	if a.changing.Add(-1) == 0 {
		a.releaseDue.Store(true)
		select {
		case a.changesEnded <- struct{}{}:
		default:
		}
	}
}

// alive is the watchdog's check: the main loop answers and the store can
// be read.
func (a *Agent) alive(ctx context.Context) error {
	if a.opCtx.Err() != nil {
		// Shutting down: the main loop has returned, and shutdown stops
		// the watchdog once the operations in flight have ended.
		return nil
	}
	reply := make(chan struct{})
	select {
	case a.ping <- reply:
	case <-ctx.Done():
		return fmt.Errorf("main loop does not answer: %w", ctx.Err())
	}
	select {
	case <-reply:
	case <-ctx.Done():
		return fmt.Errorf("main loop does not answer: %w", ctx.Err())
	}
	if _, err := a.store.Apps(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// markChanged tells the main loop that the app or process counts may
// have changed.
func (a *Agent) markChanged() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

func (a *Agent) statusLine() string {
	apps, err := a.store.Apps()
	if err != nil {
		return "store error"
	}
	running, total := 0, 0
	for _, st := range a.sup.List() {
		if st.State == supervisor.StateRunning {
			running++
		}
		if instanceOf(st.Meta) != nil {
			total++
		}
	}
	return fmt.Sprintf("%d apps, %d of %d processes running", len(apps), running, total)
}

// listen returns the socket systemd passed, or listens on the configured
// path, and the socket group's gid for the server. An unknown socket
// group is an error only for a socket the agent makes itself; with one
// systemd passed, the agent's own group stands in.
func (a *Agent) listen(cfg Config, lns []net.Listener) (net.Listener, int, error) {
	gid, gerr := lookupGroup(cfg.SocketGroup)
	if len(lns) > 0 {
		for _, extra := range lns[1:] {
			extra.Close()
		}
		if a.controlPassed {
			a.log.Info("using the control socket the agent passed to itself through exec", "addr", lns[0].Addr().String())
		} else {
			a.log.Info("using the socket passed by systemd", "addr", lns[0].Addr().String())
		}
		if gerr != nil {
			gid = os.Getegid()
		}
		return lns[0], gid, nil
	}
	if gerr != nil {
		return nil, 0, gerr
	}
	ln, err := api.Listen(cfg.SocketPath, gid)
	if err != nil {
		return nil, 0, fmt.Errorf("listen on %s: %w", cfg.SocketPath, err)
	}
	return ln, gid, nil
}

// shutdown stops the agent in order, as tailscale and litestream do:
// first what takes work, then what does it, then what it ran.
//
//  1. Refuse new operations (they get errShuttingDown) and cancel those
//     in flight: a switch in its release phase or waiting for its
//     instances is abandoned and recorded as interrupted (the previous
//     release stays active, see interrupt), a follow stream ends. Wait
//     until every operation has returned, so that its client got the
//     "the agent is shutting down" error over a socket still served.
//  2. Stop fleet mode, the inbox, the control socket's server and the
//     watchdog.
//  3. Stop every app process gracefully (its stop signal, SIGKILL after
//     its stop timeout, all at once) and forget their records.
func (a *Agent) shutdown(cancelOps context.CancelFunc, sd *shutdownSteps) {
	a.opMu.Lock()
	a.closing = true
	a.opMu.Unlock()
	cancelOps()
	a.ops.Wait()

	if a.upgrade.Load() && a.controlLn != nil {
		// The control socket goes on to the re-executed agent: clients
		// connecting meanwhile wait in its queue.
		a.control = passListener(a.controlLn)
	}
	for _, stop := range []func(){sd.fleet, sd.inbox, sd.server, sd.metrics, sd.watchdog} {
		if stop != nil {
			stop()
		}
	}

	insts := a.appInstances("")
	names := slices.Collect(maps.Keys(insts))
	if a.keepApps() {
		// Their records stay for the next agent, which adopts them.
		stopProbers(slices.Collect(maps.Values(insts)))
		h := a.detachAll()
		if a.control != nil {
			h.files[controlName] = a.control
			a.control = nil
		}
		a.retryUnrecorded()
		a.log.Info("left app processes running for the next agent", "count", len(names), "files", len(h.files))
		if a.upgrade.Load() {
			a.handoff = h
		} else {
			h.close() // systemd's fd store holds copies
		}
		return
	}
	cfg := a.config()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.StopTimeout+5*time.Second)
	defer cancel()
	if err := a.sup.StopMany(ctx, names); err != nil {
		a.log.Error("stop app processes", "error", err)
	}
	a.forget(pick(insts, names)...)
	a.healthWG.Wait()
	a.steerWG.Wait()
	a.closeSteering()
	a.closeSockets("")
	a.log.Info("stopped app processes", "count", len(names))
	a.retryUnrecorded() // a last chance before the cause file is all that is left
}

// errShuttingDown is what a Backend call gets once shutdown began, and
// what an operation cut short by it returns.
var errShuttingDown = fmt.Errorf("%w: %w", api.ErrUnavailable, ErrShuttingDown)

// begin registers a Backend operation; it fails once shutdown began or
// before Run is ready. Call end when done.
func (a *Agent) begin() error {
	select {
	case <-a.ready:
	default:
		return fmt.Errorf("%w: %w", api.ErrUnavailable, ErrNotRunning)
	}
	a.opMu.Lock()
	defer a.opMu.Unlock()
	if a.closing {
		return errShuttingDown
	}
	a.ops.Add(1)
	return nil
}

func (a *Agent) end() { a.ops.Done() }

// opContext returns a context that ends with ctx (the client's request)
// or when shutdown begins, whichever comes first.
func (a *Agent) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(a.opCtx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// lockApp waits for the app's switching lock: one change per app at a
// time, other apps are not affected. It returns the unlock function. A
// change counts as in flight from the call until the unlock (see
// changeDone). Taking the lock ends the probation of the app's last
// switch if it still runs (see probation.go).
func (a *Agent) lockApp(ctx context.Context, app string) (func(), error) {
	unlock, err := a.acquireApp(ctx, app)
	if err != nil {
		return nil, err
	}
	a.endProbation(app)
	return unlock, nil
}

// acquireApp is lockApp without ending the app's probation: the
// probation's own rollback takes the lock with it.
func (a *Agent) acquireApp(ctx context.Context, app string) (func(), error) {
	a.beginChange()
	a.locksMu.Lock()
	l, ok := a.locks[app]
	if !ok {
		l = make(chan struct{}, 1)
		a.locks[app] = l
	}
	a.locksMu.Unlock()
	select {
	case l <- struct{}{}:
		return func() {
			<-l
			a.changeDone()
		}, nil
	case <-ctx.Done():
		a.changeDone()
		return nil, fmt.Errorf("wait for the change in progress on app %q: %w", app, ctx.Err())
	case <-a.opCtx.Done():
		a.changeDone()
		return nil, errShuttingDown
	}
}

// pin keeps a build from garbage collection while a deploy uses it.
func (a *Agent) pin(digest string) func() {
	a.opMu.Lock()
	a.pins[digest]++
	a.opMu.Unlock()
	return func() {
		a.opMu.Lock()
		if a.pins[digest]--; a.pins[digest] <= 0 {
			delete(a.pins, digest)
		}
		a.opMu.Unlock()
	}
}

func (a *Agent) pinned(digest string) bool {
	a.opMu.Lock()
	defer a.opMu.Unlock()
	return a.pins[digest] > 0
}
