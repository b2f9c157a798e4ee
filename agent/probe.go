package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/agent/health"
	"github.com/berth-dev/berth/state/build"
	"github.com/berth-dev/berth/supervisor"
)

// checkOf converts a manifest's health check; nil for none.
func checkOf(hc *build.Healthcheck) (*health.Check, error) {
	if hc == nil {
		return nil, nil
	}
	c := health.Check{HTTP: hc.HTTP, TCP: hc.TCP, Exec: hc.Exec, Interval: time.Duration(hc.Interval),
		Timeout: time.Duration(hc.Timeout), StartPeriod: time.Duration(hc.StartPeriod), Retries: hc.Retries}.WithDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// healthDeadline is how long a switch waits for a new instance to pass
// its check: the start period, then Retries probes (each at most Timeout,
// Interval apart), plus one more probe as a margin, bounded by limit.
func healthDeadline(c health.Check, limit time.Duration) time.Duration {
	c = c.WithDefaults()
	d := c.StartPeriod + time.Duration(c.Retries+1)*(c.Interval+c.Timeout) + time.Second
	return min(d, limit)
}

// prober runs an instance's health check for as long as the agent runs
// the instance: a health.Monitor for each of its processes in turn (a
// restarted process starts over, with its own start period). Once the
// instance is live (its switch is over), a process that turns unhealthy
// is restarted by the supervisor (Supervisor.RestartUnhealthy).
type prober struct {
	a     *Agent
	inst  *instance
	check health.Check
	// kick is signalled (buffer 1) when the instance's process may have
	// changed: every supervisor event about it.
	kick chan struct{}
	// unhealthy receives the pid of a live process that turned unhealthy.
	unhealthy chan int
	// live enables liveness restarts.
	live atomic.Bool
	// held pauses the checks (see hold).
	held atomic.Bool
	// started is set once run's goroutine is started.
	started atomic.Bool
	ctx     context.Context // ends when the instance is forgotten
	cancel  context.CancelFunc

	mu  sync.Mutex // guards pid and mon
	pid int        // the process mon probes (0: none runs)
	mon *health.Monitor
}

// newProber returns the prober of inst's check, not running yet; nil
// when inst has no check. It is set before the instance is published.
func (a *Agent) newProber(inst *instance) *prober {
	if inst.Check == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &prober{a: a, inst: inst, check: *inst.Check, kick: make(chan struct{}, 1),
		unhealthy: make(chan int, 1), ctx: ctx, cancel: cancel}
}

// startProber starts probing inst's check, once; forget stops it.
func (a *Agent) startProber(inst *instance) {
	if pr := inst.prober; pr != nil && pr.started.CompareAndSwap(false, true) {
		a.healthWG.Go(func() { pr.run(pr.ctx) })
	}
}

// poke tells the prober that the instance's process may have changed.
func (pr *prober) poke() {
	select {
	case pr.kick <- struct{}{}:
	default:
	}
}

// status returns the health of the process pid (the instance's current
// one) and the last probe's result. A process the prober has not picked
// up yet is starting.
func (pr *prober) status(pid int) (health.Status, health.Result) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.mon == nil || pr.pid != pid || pid == 0 {
		return health.Starting, health.Result{}
	}
	return pr.mon.Last()
}

// run follows the instance's processes until ctx ends.
func (pr *prober) run(ctx context.Context) {
	var (
		cur     int
		stopMon = func() {}
	)
	defer func() { stopMon() }()
	for {
		st, err := pr.a.sup.Status(pr.inst.Name)
		pid := 0
		if err == nil && st.State == supervisor.StateRunning {
			pid = st.PID
		}
		if pr.held.Load() {
			// Paused: no probe runs; status keeps the last one's answer,
			// and resume starts a fresh monitor.
			stopMon()
			stopMon = func() {}
			cur = -1
		} else if pid != cur {
			stopMon()
			stopMon = func() {}
			cur = pid
			var mon *health.Monitor
			if pid != 0 {
				mon = health.NewMonitor(pr.check, pr.target(st.StartedAt), func(s health.Status, r health.Result) {
					pr.changed(pid, s)
				})
				mctx, cancel := context.WithCancel(ctx)
				done := make(chan struct{})
				go func() { // owned: stopMon waits for done
					defer close(done)
					if err := mon.Run(mctx); err != nil {
						pr.a.log.Error("health check cannot run", "name", pr.inst.Name, "check", pr.check.String(), "error", err)
					}
				}()
				stopMon = func() { cancel(); <-done }
			}
			pr.mu.Lock()
			pr.pid, pr.mon = pid, mon
			pr.mu.Unlock()
			pr.a.healthChanged.Notify()
		}
		select {
		case <-ctx.Done():
			return
		case <-pr.kick:
		case bad := <-pr.unhealthy:
			if bad == cur && !pr.held.Load() {
				pr.restart(bad)
			}
		}
	}
}

// changed is the monitor's callback for process pid.
func (pr *prober) changed(pid int, s health.Status) {
	pr.a.healthChanged.Notify()
	pr.a.markChanged()
	if s == health.Unhealthy && pr.live.Load() && !pr.held.Load() {
		pr.flagUnhealthy(pid)
	}
}

// flagUnhealthy hands run the pid of a live process that turned
// unhealthy, unless one is waiting for it already.
func (pr *prober) flagUnhealthy(pid int) {
	select {
	case pr.unhealthy <- pid:
	default:
	}
}

// target is what the check probes for a process started at started.
func (pr *prober) target(started time.Time) health.Target {
	in := pr.inst
	return health.Target{Port: in.probePort(), Env: in.spec.Env, Dir: in.spec.Dir, StartedAt: started,
		RunExec: func(ctx context.Context, command string, env []string, dir string) (int, []byte, error) {
			exit, out, err := pr.a.sup.RunCommand(ctx, supervisor.Spec{Name: in.Name + " health", Command: command,
				Env: env, Dir: dir, Credential: in.spec.Credential, StopTimeout: time.Second})
			if err != nil {
				return -1, out, err
			}
			if exit.Signal != 0 {
				return -1, append(out, fmt.Sprintf("\n%s", exit)...), nil
			}
			return exit.Code, out, nil
		}}
}

// restart has the supervisor restart an unhealthy live process (pid):
// its stop signal, SIGKILL after its stop timeout, and a new process at
// once. The supervisor records it as "restarted: unhealthy", not as a
// crash (no crash backoff), and its events carry that cause.
func (pr *prober) restart(pid int) {
	in := pr.inst
	st, err := pr.a.sup.Status(in.Name)
	if err != nil || st.PID != pid || st.State != supervisor.StateRunning {
		return
	}
	_, last := pr.status(pid)
	pr.a.appendEvent(in.App, "unhealthy", fmt.Sprintf("%s failed its health check (%s): %s; restarting it",
		in.Instance, pr.check, firstLine(last.Output)))
	pr.a.log.Warn("instance is unhealthy; restarting it", "name", in.Name, "pid", pid, "check", pr.check.String())
	err = pr.a.sup.RestartUnhealthy(in.Name, pid, pr.check.String())
	if err != nil && !errors.Is(err, supervisor.ErrStalePID) && !errors.Is(err, supervisor.ErrNotFound) {
		pr.a.log.Error("restart unhealthy instance", "name", in.Name, "pid", pid, "error", err)
	}
}

// hold pauses the checks of an old socket-mode instance while a new one
// shares its socket: an HTTP probe of the port could reach the new one,
// and its failures must not restart the old one. Nothing it probes while
// held counts; resume starts over with a fresh monitor.
func (pr *prober) hold() {
	pr.held.Store(true)
	pr.poke()
}

// resume ends a hold.
func (pr *prober) resume() {
	if pr.held.CompareAndSwap(true, false) {
		pr.poke()
	}
}

// setLive enables liveness restarts, at once if the process is
// unhealthy already.
func (pr *prober) setLive() {
	pr.live.Store(true)
	pr.mu.Lock()
	pid, mon := pr.pid, pr.mon
	pr.mu.Unlock()
	if mon == nil {
		return
	}
	if s, _ := mon.Last(); s == health.Unhealthy {
		pr.flagUnhealthy(pid)
	}
}

// stopProbers stops the probers of forgotten instances; Agent.healthWG
// waits for their goroutines.
func stopProbers(insts []*instance) {
	for _, in := range insts {
		if in.prober != nil {
			in.prober.cancel()
		}
	}
}

// firstLine returns s up to its first newline.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
