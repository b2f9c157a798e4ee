package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Container is the containment hook: it can put each instance in its own
// cgroup. Package systemd implements it; it must satisfy this interface
// structurally (without importing supervisor).
type Container interface {
	// Prepare is called before each start of an instance's process. It
	// returns a directory fd of the cgroup to start the process in
	// (clone3 CLONE_INTO_CGROUP), or -1 for none. The fd stays owned by
	// the Container.
	Prepare(name string) (cgroupFD int, err error)
	// Kill kills everything left in the instance's container. It is
	// called after the process group has been dealt with on a stop, and
	// after an unexpected exit before the restart.
	Kill(name string) error
	// Remove is called once the instance is stopped and forgotten.
	Remove(name string) error
}

// Config configures a Supervisor. The zero value is usable.
type Config struct {
	// Subreaper makes Run mark this process a child subreaper
	// (PR_SET_CHILD_SUBREAPER), so that processes orphaned by an
	// instance are reparented to it and reaped, never left as zombies.
	Subreaper bool
	// Container, if set, contains each instance (e.g. in a cgroup).
	Container Container
	// Sink, if set, receives every stored line with the instance's
	// LogConfig.Fields (e.g. to forward to journald). It is called from
	// the pipe reader goroutine: it must be quick and must not block, or
	// it slows the app down.
	Sink func(LogLine, map[string]string)
	// DrainTimeout bounds how long a stop waits, once the process group
	// is gone, for the output pipes to be drained (a process that left
	// the group may still hold them); then they are closed. 0 means 2s.
	DrainTimeout time.Duration
	// OutputLimit caps the output RunCommand keeps (the last bytes are
	// kept). 0 means 1 MiB.
	OutputLimit int
	// KeepPipes, if set, is given the read ends of each new process's
	// stdout and stderr pipes as soon as it has exec'd, before its
	// output is read, so that the owner can keep copies outside this
	// process (systemd's file descriptor store): with them, a next
	// supervisor can Adopt the process after this one died, and lines
	// written meanwhile wait in the pipes. It must not close or read the
	// files, and must be quick: the start waits for it.
	KeepPipes func(name string, pid int, stdout, stderr *os.File)
	// DropPipes, if set, is called once the pipes of the process pid
	// were read to their end (or closed by a stop) and closed: copies
	// kept by KeepPipes are no longer needed. It is not called for the
	// pipes Detach hands over.
	DropPipes func(name string, pid int)
}

// Supervisor runs instances, restarts them when they exit, stops them on
// request, reaps every child and captures output. Create it with New and
// drive it with Run.
type Supervisor struct {
	cfg Config
	log hclog.Logger
	r   *reaper

	// mu guards instances, closed and ran. Lock order: s.mu is never
	// held while taking an instance's locks.
	mu        sync.Mutex
	instances map[string]*instance
	closed    bool // Run's context ended: nothing new may start
	detached  bool // Detach let go of the processes: Run stops none of them
	ran       bool
	shutdown  chan struct{} // closed when Run's context ends
	reaping   chan struct{} // closed once Run reaps (tests wait for it)

	// wg counts every goroutine and pending timer the supervisor
	// started (spawns, pipe readers, backoff timers) and calls in
	// progress that may start some. Run waits for it.
	wg sync.WaitGroup

	subsMu        sync.RWMutex // guards subs; taken inside instance.mu
	subs          map[*subscriber]struct{}
	droppedEvents atomic.Uint64

	followMu sync.RWMutex // guards follows; taken inside pipe readers
	follows  map[*follower]struct{}
	nfollow  atomic.Int32
	dropped  atomic.Uint64 // log lines lost by slow followers

	pools *pools

	oneoffs oneOffs // the commands RunAttached runs (oneoff.go)
}

// New returns a Supervisor with defaults filled in. It starts nothing.
func New(cfg Config, log hclog.Logger) *Supervisor {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 2 * time.Second
	}
	if cfg.OutputLimit <= 0 {
		cfg.OutputLimit = 1 << 20
	}
	return &Supervisor{
		cfg:       cfg,
		log:       log,
		r:         newReaper(log),
		instances: make(map[string]*instance),
		shutdown:  make(chan struct{}),
		reaping:   make(chan struct{}),
		subs:      make(map[*subscriber]struct{}),
		follows:   make(map[*follower]struct{}),
		pools:     newPools(),
	}
}

// Run reaps children until ctx ends, then stops every instance
// concurrently (each with its stop signal and timeout), waits for all of
// them and returns nil. Instances may be started before Run: their exits
// are handled once it runs. Run may be called once; only one Supervisor
// may run in a process at a time (ErrReaperBusy).
func (s *Supervisor) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.ran {
		s.mu.Unlock()
		return ErrClosed
	}
	s.ran = true
	s.mu.Unlock()
	if !reaperBusy.CompareAndSwap(false, true) {
		return ErrReaperBusy
	}
	defer reaperBusy.Store(false)
	if s.cfg.Subreaper {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("become child subreaper: %w", err)
		}
	}
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGCHLD)
	defer signal.Stop(sigc)
	close(s.reaping)

	stopped := make(chan struct{})
	go func() { // owned: Run returns only after stopped is closed
		defer close(stopped)
		<-ctx.Done()
		s.closeAndStopAll()
	}()

	retry := time.NewTimer(time.Hour)
	retry.Stop()
	retries := 0
	for {
		if s.r.reapAll() {
			// A zombie of other code in this process hides the rest:
			// look again shortly, for at most about a second.
			if retries < 200 {
				retries++
				retry.Reset(5 * time.Millisecond)
			}
		} else {
			retries = 0
		}
		select {
		case <-sigc:
		case <-retry.C:
		case <-stopped:
			s.r.reapAll()
			retry.Stop()
			return nil
		}
	}
}

// closeAndStopAll refuses new work, stops every instance and waits for
// every goroutine the supervisor started.
func (s *Supervisor) closeAndStopAll() {
	s.mu.Lock()
	if !s.closed {
		close(s.shutdown)
	}
	s.closed = true
	names := make([]string, 0, len(s.instances))
	for name := range s.instances {
		names = append(names, name)
	}
	detached := s.detached
	s.mu.Unlock()
	if detached {
		s.wg.Wait() // Detach let go of every process: nothing to stop
		return
	}
	if err := s.StopMany(context.Background(), names); err != nil {
		s.log.Warn("stop at shutdown", "error", err)
	}
	s.wg.Wait()
}

// enter registers a call that may start goroutines; false once closed.
func (s *Supervisor) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

func (s *Supervisor) lookup(name string) (*instance, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.instances[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return in, nil
}

// Start supervises a new instance and starts its process. It returns once
// the process has exec'd. If that first start fails it returns a
// *SpawnError, and the instance stays supervised in backoff and is
// retried. A bad spec returns a *SpecError and starts nothing; a name in
// use returns ErrExists.
func (s *Supervisor) Start(spec Spec) error {
	sp, err := spec.withDefaults()
	if err != nil {
		return err
	}
	if !s.enter() {
		return ErrClosed
	}
	defer s.wg.Done()
	s.mu.Lock()
	if s.closed { // Run's shutdown has taken its list of instances to stop
		s.mu.Unlock()
		return ErrClosed
	}
	if _, ok := s.instances[sp.Name]; ok {
		s.mu.Unlock()
		return fmt.Errorf("start %s: %w", sp.Name, ErrExists)
	}
	in := newInstance(s, sp)
	s.instances[sp.Name] = in
	s.mu.Unlock()
	if err := in.spawn(); err != nil {
		return &SpawnError{Name: sp.Name, Err: err}
	}
	return nil
}

// Stop stops an instance on purpose and forgets it: the stop signal goes
// to its process group, SIGKILL follows after the stop timeout, and Stop
// returns once the whole group is gone and its output is stored. It
// returns the exit of the process it stopped (the last exit, or a zero
// Exit, if none was running). If ctx ends first, the group is killed
// at once and Stop returns ctx's error without waiting further.
func (s *Supervisor) Stop(ctx context.Context, name string) (Exit, error) {
	in, err := s.lookup(name)
	if err != nil {
		return Exit{}, err
	}
	in.stopWaiting.Add(1) // a RestartUnhealthy in progress starts nothing more
	defer in.stopWaiting.Add(-1)
	in.opMu.Lock()
	defer in.opMu.Unlock()
	if in.isGone() {
		return Exit{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	exit, err := in.halt(ctx)
	in.forget(exit)
	s.mu.Lock()
	delete(s.instances, name)
	s.mu.Unlock()
	if c := s.cfg.Container; c != nil {
		if cerr := c.Remove(name); cerr != nil {
			err = errors.Join(err, fmt.Errorf("remove container of %s: %w", name, cerr))
		}
	}
	return exit, err
}

// StopMany stops the named instances concurrently, so stopping 50 takes
// about one stop timeout. It returns the errors joined, each naming its
// instance.
func (s *Supervisor) StopMany(ctx context.Context, names []string) error {
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			if _, err := s.Stop(ctx, name); err != nil {
				errs[i] = fmt.Errorf("stop %s: %w", name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Restart stops the instance's process group like Stop (on purpose, so
// it is not counted as a crash) and starts it again with the same spec,
// with its backoff reset. It returns a *SpawnError if the new start
// failed (the instance is then in backoff).
func (s *Supervisor) Restart(name string) error {
	return s.instanceOp(name, func(in *instance) error {
		if in.isGone() {
			return fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		if _, err := in.halt(context.Background()); err != nil {
			return fmt.Errorf("restart %s: %w", name, err)
		}
		in.resume()
		if err := in.spawn(); err != nil {
			return &SpawnError{Name: name, Err: err}
		}
		return nil
	})
}

// instanceOp runs op on the named instance while Run serves, holding
// the instance's opMu (serialized with Stop and the restarts).
func (s *Supervisor) instanceOp(name string, op func(in *instance) error) error {
	in, err := s.lookup(name)
	if err != nil {
		return err
	}
	if !s.enter() {
		return ErrClosed
	}
	defer s.wg.Done()
	in.opMu.Lock()
	defer in.opMu.Unlock()
	return op(in)
}

// RestartUnhealthy restarts an instance because its process pid failed
// its health check; reason (e.g. the check's last output) is logged. If
// pid is still the running process, its group is stopped as Restart
// does (stop signal, SIGKILL after the stop timeout; on purpose, so the
// exit is no crash) and a new process is started at once. The old
// process's output is stored on the side, as after a crash: the call
// returns within about the stop timeout plus a start.
//
// The restart is counted in Restarts but is not a quick exit: it is
// never backed off, the state never shows backoff or crashed for it,
// and the backoff is left as it was (reset if the process had run
// Backoff.Settle, as its exit would have). It is recorded as
// CauseUnhealthy: in Status.LastCause, in Event.Cause of its stopping,
// starting and running events (the starting one carries the old PID and
// its Exit) and in Exit.Cause of the stopped process, whose String
// reads "restarted: unhealthy (signal SIGTERM)".
//
// If pid is no longer the running process (it exited, was replaced, or
// is being stopped) nothing is done and ErrStalePID is returned. It is
// serialized with Stop and Restart of the instance; a Stop that comes
// in meanwhile waits for the old group to be gone, as for Restart, and
// wins: no new process is started and ErrNotFound is returned. A failed
// start returns a *SpawnError (the instance is then in backoff).
func (s *Supervisor) RestartUnhealthy(name string, pid int, reason string) error {
	return s.instanceOp(name, func(in *instance) error { return in.restartUnhealthy(pid, reason) })
}

// Status returns a snapshot of one instance.
func (s *Supervisor) Status(name string) (Status, error) {
	in, err := s.lookup(name)
	if err != nil {
		return Status{}, err
	}
	return in.status(), nil
}

// List returns a snapshot of every instance, sorted by name.
func (s *Supervisor) List() []Status {
	s.mu.Lock()
	ins := make([]*instance, 0, len(s.instances))
	for _, in := range s.instances {
		ins = append(ins, in)
	}
	s.mu.Unlock()
	out := make([]Status, 0, len(ins))
	for _, in := range ins {
		out = append(out, in.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Tail returns up to n of the instance's most recent lines kept in memory
// (all of them if n <= 0), oldest first.
func (s *Supervisor) Tail(name string, n int) ([]LogLine, error) {
	in, err := s.lookup(name)
	if err != nil {
		return nil, err
	}
	return in.logs.tail(n), nil
}

// WaitOutput waits up to timeout until everything the instance's last
// exited process wrote has been read and stored (its output pipes reached
// end of file), and reports whether it was. An exit is reported as soon as
// the reaper sees it, possibly before the last lines are read, and a
// settled process is restarted at once: a caller that reads Tail right
// after a crash (to say why a release failed) calls this first. With no
// exited process it returns true at once.
func (s *Supervisor) WaitOutput(name string, timeout time.Duration) (bool, error) {
	in, err := s.lookup(name)
	if err != nil {
		return false, err
	}
	in.mu.Lock()
	p := in.lastExited
	in.mu.Unlock()
	if p == nil {
		return true, nil
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.output:
		return true, nil
	case <-t.C:
		return false, nil
	}
}

// mailbox is the bounded channel of one subscriber or follower. Offers
// never block: when the channel is full the value is dropped and
// counted, and the next value delivered carries the count.
type mailbox[T any] struct {
	mu     sync.Mutex // guards ch sends, closed and missed
	ch     chan T
	closed bool
	missed int
}

// offer sends v, as withMissed marks it with how many values were lost
// before it, unless the mailbox is closed. A value dropped because the
// channel is full adds one to dropped.
func (m *mailbox[T]) offer(v T, withMissed func(T, int) T, dropped *atomic.Uint64) {
	m.mu.Lock()
	if !m.closed {
		select {
		case m.ch <- withMissed(v, m.missed):
			m.missed = 0
		default:
			m.missed++
			dropped.Add(1)
		}
	}
	m.mu.Unlock()
}

// close closes the channel; later offers are ignored.
func (m *mailbox[T]) close() {
	m.mu.Lock()
	m.closed = true
	close(m.ch)
	m.mu.Unlock()
}

func eventWithMissed(e Event, n int) Event    { e.Missed = n; return e }
func lineWithMissed(l LogLine, n int) LogLine { l.Missed = n; return l }

// subscriber is one Subscribe call.
type subscriber = mailbox[Event]

// Subscribe returns a channel of every state change, in order per
// instance. Publishing never blocks the supervisor: when the channel's
// buffer (buf, at least 1) is full the event is dropped, counted, and
// the next delivered event carries the count in Missed. cancel stops the
// subscription and closes the channel.
func (s *Supervisor) Subscribe(buf int) (<-chan Event, func()) {
	sub := &subscriber{ch: make(chan Event, max(buf, 1))}
	s.subsMu.Lock()
	s.subs[sub] = struct{}{}
	s.subsMu.Unlock()
	var once sync.Once
	return sub.ch, func() {
		once.Do(func() {
			s.subsMu.Lock()
			delete(s.subs, sub)
			s.subsMu.Unlock()
			sub.close()
		})
	}
}

// DroppedEvents counts the events lost by full subscribers so far.
func (s *Supervisor) DroppedEvents() uint64 { return s.droppedEvents.Load() }

// DroppedLines counts the log lines lost by slow followers so far (the
// files and memory never lose lines).
func (s *Supervisor) DroppedLines() uint64 { return s.dropped.Load() }

func (s *Supervisor) publish(ev Event) {
	s.subsMu.RLock()
	defer s.subsMu.RUnlock()
	for sub := range s.subs {
		sub.offer(ev, eventWithMissed, &s.droppedEvents)
	}
}

// follower is one FollowLogs call.
type follower struct {
	match func(string) bool
	mailbox[LogLine]
}

// FollowLogs returns a channel of the lines stored from now on by the
// instances whose name match accepts (all if match is nil). The channel
// is bounded (buf, at least 1): a follower that falls behind loses lines,
// never slows the app or the files, and the next line it gets carries
// the count in Missed. cancel ends the follow and closes the channel.
func (s *Supervisor) FollowLogs(match func(name string) bool, buf int) (<-chan LogLine, func()) {
	f := &follower{match: match, mailbox: mailbox[LogLine]{ch: make(chan LogLine, max(buf, 1))}}
	s.followMu.Lock()
	s.follows[f] = struct{}{}
	s.nfollow.Add(1)
	s.followMu.Unlock()
	var once sync.Once
	return f.ch, func() {
		once.Do(func() {
			s.followMu.Lock()
			delete(s.follows, f)
			s.nfollow.Add(-1)
			s.followMu.Unlock()
			f.close()
		})
	}
}

// SettleLogs waits, for at most timeout, until every batch of output
// that the instances whose name match accepts had begun to store is in
// their files (or is not to be: no file, closed). Between a follow's
// start (FollowLogs) and a read of the files after SettleLogs, no line
// falls through: a batch either reaches the follower or was counted and
// settled before the read. Lines can be in both; the reader drops those.
func (s *Supervisor) SettleLogs(match func(name string) bool, timeout time.Duration) {
	s.mu.Lock()
	var sinks []*logSink
	for name, in := range s.instances {
		if match == nil || match(name) {
			sinks = append(sinks, in.logs)
		}
	}
	s.mu.Unlock()
	targets := make([]uint64, len(sinks))
	for i, ls := range sinks {
		targets[i] = ls.entered.Load()
	}
	var expired atomic.Bool
	t := time.AfterFunc(timeout, func() {
		expired.Store(true)
		for _, ls := range sinks {
			ls.mu.Lock()
			ls.cond.Broadcast()
			ls.mu.Unlock()
		}
	})
	defer t.Stop()
	for i, ls := range sinks {
		ls.mu.Lock()
		for ls.settled < targets[i] && !ls.closed && !expired.Load() {
			ls.cond.Wait()
		}
		ls.mu.Unlock()
	}
}

// deliverLines hands a batch to the followers that want it and the sink.
func (s *Supervisor) deliverLines(ls *logSink, b *batch) {
	var fs []*follower
	if s.nfollow.Load() > 0 {
		s.followMu.RLock()
		for f := range s.follows {
			if f.match == nil || f.match(ls.name) {
				fs = append(fs, f)
			}
		}
		s.followMu.RUnlock()
	}
	sink := s.cfg.Sink
	if len(fs) == 0 && sink == nil {
		return
	}
	b.each(ls.name, ls.cfg.Tag, func(l LogLine) {
		if sink != nil {
			sink(l, ls.cfg.Fields)
		}
		for _, f := range fs {
			f.offer(l, lineWithMissed, &s.dropped)
		}
	})
}
