// Executing a rollout: converge starts and stops an app's processes in
// the order package rollout plans (stop first, start, overlap on shared
// sockets, stop alongside), then waits until the new instances are up;
// probation watches them after a switch. Deciding what starts and stops
// is package rollout's; the switch around it (release phase, activation,
// rollback) is switch.go's.

package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/health"
	"github.com/berth-dev/berth/agent/rollout"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/state/build"
	"github.com/berth-dev/berth/supervisor"
)

// converge makes the app's processes match rel under the app's current
// formation, and returns the instances it started once they are all up
// (see waitUp). With restart, every instance is replaced (a release
// switch); without, only missing instances are started and surplus ones
// (other releases, slots the formation no longer has) stopped. With
// healthy, instances are up once healthy (or settled, see waitUp);
// without (the start at boot), once they run.
//
// An instance of a socket-activated type whose slot runs a socket-mode
// instance already starts on the same socket (which the agent keeps
// open) beside the old one, and the old one gets its stop signal only
// once the new one is up (overlapUp): an HTTP check counts only the
// probes the new instance answered (verifyShared), and when none reaches
// it the old one stops first and the check probes the port. If a new
// instance fails, the old ones were never stopped. Every other old
// instance is stopped before the new ones start (stop-then-start).
//
// What starts and what stops when is planned by package rollout
// (ToStart, PlanStops); converge executes the plan.
func (a *Agent) converge(ctx context.Context, app string, rel state.Release, b *build.Build, restart, healthy bool, p *progress) ([]*instance, error) {
	cfg := a.config()
	appRec, err := a.store.App(app)
	if err != nil {
		return nil, mapErr(err)
	}
	formation, err := a.store.Formation(app)
	if err != nil {
		return nil, mapErr(err)
	}
	want := rollout.Desired(formation, b.Procfile.Types())
	have := a.appInstances(app)
	running := runningOf(have)
	start := rollout.ToStart(want, running, rel.Version, restart)

	// Everything that can fail on bad input (user, ports, manifest) is
	// checked before any old process is touched.
	var specs []supervisor.Spec
	var insts []*instance
	if len(start) > 0 {
		who, err := resolveUser(appRec.User, cfg.DefaultUser)
		if err != nil {
			return nil, fmt.Errorf("%w: app %s: %w", api.ErrInvalid, app, err)
		}
		tmp, err := a.prepareAppDirs(app, who)
		if err != nil {
			return nil, err
		}
		for _, inst := range start {
			spec, in, err := a.specFor(cfg, app, rel, b, inst, who, tmp)
			if err != nil {
				return nil, err
			}
			in.prober = a.newProber(in)
			specs = append(specs, spec)
			insts = append(insts, in)
		}
	}

	starting := make([]rollout.Starting, len(insts))
	for i, in := range insts {
		starting[i] = rollout.Starting{Name: in.Name, Slot: in.Instance, Socket: in.Mode == "socket",
			SocketOpen: in.Mode == "socket" && a.hasSocket(in.slot())}
	}
	plan := rollout.PlanStops(want, running, starting, rel.Version, healthy)
	if len(plan.StopFirst) > 0 {
		p.mark()
		if err := a.stopInstances(ctx, app, plan.StopFirst); err != nil {
			return nil, err
		}
		p.step("stop", "stopped %d old instance(s) before starting the new ones", len(plan.StopFirst))
	}
	// Bind-mode instances need their port back from a socket no longer
	// used; socket-mode ones get theirs (made now if it is new).
	keep := map[string]bool{}
	for _, slot := range plan.KeepSockets {
		keep[app+"/"+slot] = true
	}
	a.pruneSockets(app, keep)
	for i, in := range insts {
		if in.Mode != "socket" {
			continue
		}
		f, err := a.socketFor(in.slot(), in.Port)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", api.ErrUnavailable, err)
		}
		specs[i].ListenFiles = []*os.File{f}
	}
	if len(specs) == 0 {
		a.pruneSockets(app, nil)
		return nil, nil
	}

	p.mark()
	events, unsubscribe := a.sup.Subscribe(4 * len(specs))
	defer unsubscribe()
	w := a.newWatch(events)
	var held []*instance
	for _, name := range plan.Held {
		held = append(held, have[name])
	}
	for _, old := range held {
		old.prober.hold()
	}
	defer func() {
		// Still running (the switch failed before they stopped): their
		// checks go on.
		for _, old := range held {
			old.prober.resume()
		}
	}()
	a.markChanged()
	if err := a.startSpecs(ctx, specs); err != nil {
		for _, in := range insts {
			a.startProber(in)
		}
		return insts, err
	}
	p.step("start", "started %d instance(s) of v%d", len(insts), rel.Version)
	if !healthy {
		cfg.Settle = 0
	}
	if len(plan.StopAlong) > 0 {
		quiet := false
		if healthy {
			fallback, err := a.overlapUp(ctx, cfg, insts, plan, w, p)
			if err != nil {
				return insts, err
			}
			quiet = len(fallback) == 0
			if !quiet {
				a.log.Warn("no health probe reached the new instances while the old ones shared their sockets; stopping the old ones first and probing through the port",
					"app", app, "version", rel.Version, "instances", strings.Join(fallback, ","))
			}
		}
		if err := a.stopInstances(ctx, app, plan.StopAlong); err != nil {
			return insts, err
		}
		if healthy {
			p.step("stop", "stopped %d old instance(s); the new ones serve their sockets", len(plan.StopAlong))
		} else {
			p.step("stop", "stopped %d old instance(s); the new ones took over their sockets", len(plan.StopAlong))
		}
		if quiet {
			// Every new instance is up already; this starts the checks
			// of those verified on the shared socket and confirms them
			// without reporting a second health step.
			p = newProgress(nil)
		}
	}
	for _, in := range insts {
		a.startProber(in)
	}
	if err := a.waitUp(ctx, cfg, insts, w, healthy, p); err != nil {
		return insts, err
	}
	// The supervisor events record the processes too; doing it here as
	// well means a switch reports done only once its records are durable.
	a.recordAll(insts)

	a.pruneSockets(app, nil)
	return insts, nil
}

// runningOf describes the app's instances for planning.
func runningOf(have map[string]*instance) []rollout.Running {
	out := make([]rollout.Running, 0, len(have))
	for _, in := range have {
		out = append(out, rollout.Running{Name: in.Name, Slot: in.Instance, Release: in.Release, Socket: in.Mode == "socket",
			HTTPCheck: in.prober != nil && in.Check != nil && in.Check.HTTP != ""})
	}
	return out
}

// startSpecs hands the specs to the supervisor, replacing an instance
// of the same name it supervises without the agent's record. An instance
// whose spawn failed stays supervised (retried with backoff); one the
// supervisor refused is forgotten. It returns every failure.
func (a *Agent) startSpecs(ctx context.Context, specs []supervisor.Spec) error {
	var errs []error
	for _, spec := range specs {
		err := a.sup.Start(spec)
		if errors.Is(err, supervisor.ErrExists) {
			// Supervised already under this name (a previous start whose
			// switch failed): replace it.
			var old *instance
			if st, serr := a.sup.Status(spec.Name); serr == nil {
				old = instanceOf(st.Meta)
			}
			if _, serr := a.sup.Stop(ctx, spec.Name); serr == nil || errors.Is(serr, supervisor.ErrNotFound) {
				if old != nil {
					a.forget(old)
				}
				err = a.sup.Start(spec)
			}
		}
		var spawn *supervisor.SpawnError
		switch {
		case errors.As(err, &spawn):
			// Supervised and retried with backoff, but the switch failed.
			errs = append(errs, err)
		case err != nil:
			// Not supervised at all: forget it.
			a.forget(instanceOf(spec.Meta))
			errs = append(errs, fmt.Errorf("start %s: %w", spec.Name, err))
		}
	}
	return errors.Join(errs...)
}

// overlapUp waits, while the old socket-mode instances still serve, until
// the new ones are up. A new instance of an overlapping slot with an HTTP
// check is probed on the shared socket, counting only the probes it
// answered (verifyShared); every other one gets its prober now and is
// waited for as waitUp does (an exec check runs in the new instance
// itself; a type without a check runs for the settle time). It returns
// the instances no probe reached, which the caller checks once the old
// ones are gone, or the *instanceError of the first that failed.
func (a *Agent) overlapUp(ctx context.Context, cfg Config, insts []*instance, plan rollout.Plan, w *watch, p *progress) ([]string, error) {
	var verify, others []*instance
	for _, in := range insts {
		if plan.Overlapping(in.Instance) && in.Check != nil && in.Check.HTTP != "" {
			verify = append(verify, in)
		} else {
			others = append(others, in)
			a.startProber(in)
		}
	}
	vctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make([]verifyResult, len(verify))
	errs := make([]error, len(verify)+1)
	var wg sync.WaitGroup
	for i, in := range verify {
		wg.Go(func() {
			results[i], errs[i+1] = a.verifyShared(vctx, cfg, in)
			if errs[i+1] != nil {
				cancel()
			}
		})
	}
	if len(others) > 0 {
		if errs[0] = a.waitUp(vctx, cfg, others, w, true, newProgress(nil)); errs[0] != nil {
			cancel()
		}
	}
	wg.Wait()
	// The failure that cut the others short, not what the cut did.
	for _, err := range errs {
		var ie *instanceError
		if errors.As(err, &ie) {
			return nil, err
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var unreached []string
	for i, in := range verify {
		if results[i] == verifyUnreached {
			unreached = append(unreached, in.Instance)
		}
	}
	if len(unreached) == 0 {
		p.step("health", "%d instance(s) healthy while the old ones still served", len(insts))
	}
	return unreached, nil
}

// stopInstances stops and forgets the named instances.
func (a *Agent) stopInstances(ctx context.Context, app string, names []string) error {
	// Stop forgets an instance even when it fails (its group is killed
	// when ctx ends), so forget them all either way.
	insts := pick(a.appInstances(app), names)
	err := a.sup.StopMany(ctx, names)
	a.forget(insts...)
	if ctx.Err() != nil {
		return fmt.Errorf("stop old instances: %w", ctx.Err())
	}
	if err != nil {
		a.log.Warn("stopping old instances", "app", app, "error", err)
	}
	return nil
}

// instanceError is why one instance did not come up, or failed during
// probation; it wraps ErrUnhealthy, ErrCrashed or ErrStartTimeout.
type instanceError struct {
	inst *instance
	err  error
}

func (e *instanceError) Error() string { return e.err.Error() }
func (e *instanceError) Unwrap() error { return e.err }

// waitUp waits until every instance is up: healthy when its type has a
// check (bounded by healthDeadline), else running for Config.Settle
// without a restart. It fails with an *instanceError when an instance
// fails its check, crash-loops, or is not up in time (Config.StartTimeout
// plus the settle time).
func (a *Agent) waitUp(ctx context.Context, cfg Config, insts []*instance, w *watch, healthy bool, p *progress) error {
	begin := time.Now()
	pending := slices.Clone(insts)
	checked := healthy && slices.ContainsFunc(insts, func(in *instance) bool { return in.Check != nil })
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		// Take the wake-up channel before reading states, so a change in
		// between is not missed.
		woken := a.healthChanged.wait()
		if !w.drain() {
			return fmt.Errorf("wait for instances: %w", supervisor.ErrClosed)
		}
		now := time.Now()
		next := now.Add(time.Hour)
		var err error
		pending = slices.DeleteFunc(pending, func(in *instance) bool {
			if err != nil {
				return false
			}
			var up bool
			var at time.Time
			up, at, err = a.upState(cfg, in, w, healthy, begin, now)
			if at.Before(next) {
				next = at
			}
			return up
		})
		if err != nil {
			return err
		}
		if len(pending) == 0 {
			n := 0
			for _, in := range insts {
				if in.Check != nil {
					n++
				}
			}
			switch {
			case checked && n == len(insts):
				p.step("health", "%d instance(s) healthy", len(insts))
			case checked:
				p.step("health", "%d instance(s) healthy, %d running for %s (no health check)", n, len(insts)-n, cfg.Settle)
			case healthy:
				p.step("health", "%d instance(s) running for %s (no health checks)", len(insts), cfg.Settle)
			default:
				p.step("health", "%d instance(s) running", len(insts))
			}
			return nil
		}
		timer.Reset(max(time.Until(next), 0))
		select {
		case ev, ok := <-w.events:
			if !ok {
				return fmt.Errorf("wait for instances: %w", supervisor.ErrClosed)
			}
			w.apply(ev)
		case <-woken:
		case <-timer.C:
		case <-ctx.Done():
			var left []string
			for _, in := range pending {
				left = append(left, in.Instance)
			}
			return fmt.Errorf("wait for %s: %w", strings.Join(left, ", "), ctx.Err())
		}
	}
}

// upState says whether in is up; if not, when to look again, or why it
// never will be.
func (a *Agent) upState(cfg Config, in *instance, w *watch, healthy bool, begin, now time.Time) (bool, time.Time, error) {
	st, err := w.newStatus(in)
	if err != nil {
		return false, now, err
	}
	if in.Check == nil || !healthy {
		if st.State == supervisor.StateRunning {
			settled := st.StartedAt.Add(cfg.Settle)
			if !now.Before(settled) {
				in.upRestarts = st.Restarts
				return true, now, nil
			}
			return false, settled, nil
		}
		deadline := begin.Add(cfg.StartTimeout)
		if !now.Before(deadline) {
			return false, now, &instanceError{in, fmt.Errorf("%w: %s not running after %s (%s)", ErrStartTimeout, in.Instance, cfg.StartTimeout, st.State)}
		}
		return false, deadline, nil
	}
	status, last := in.prober.status(st.PID)
	switch {
	case st.State == supervisor.StateRunning && status == health.Healthy:
		in.upRestarts = st.Restarts
		return true, now, nil
	case st.State == supervisor.StateRunning && status == health.Unhealthy:
		return false, now, unhealthyError(in, last)
	}
	limit := healthDeadline(*in.Check, cfg.StartTimeout)
	deadline := begin.Add(limit)
	if !now.Before(deadline) {
		return false, now, notHealthyInTime(in, st, limit, last)
	}
	return false, deadline, nil
}

// newStatus returns the supervisor's status of a new instance, or the
// *instanceError saying it will never be up: it is not supervised, or it
// crash-loops.
func (a *Agent) newStatus(in *instance) (supervisor.Status, error) {
	st, err := a.sup.Status(in.Name)
	return newState(in, st, err)
}

// newState is newStatus for a status the caller read (from a watch).
func newState(in *instance, st supervisor.Status, err error) (supervisor.Status, error) {
	if err != nil {
		return st, &instanceError{in, fmt.Errorf("%w: %s is not supervised: %v", ErrCrashed, in.Instance, err)}
	}
	if st.State == supervisor.StateCrashed {
		return st, &instanceError{in, fmt.Errorf("%w: %s keeps exiting (%s)", ErrCrashed, in.Instance, lastExit(st))}
	}
	return st, nil
}

// unhealthyError says a new instance failed its check Retries times in a
// row; last is the last check.
func unhealthyError(in *instance, last health.Result) error {
	return &instanceError{in, fmt.Errorf("%w: %s failed its health check (%s) %d times in a row; last check: %s",
		ErrUnhealthy, in.Instance, in.Check, in.Check.Retries, lastOutput(last))}
}

// notHealthyInTime says a new instance did not pass its check within
// limit: with the last check's output while it runs, else with its state
// and last exit.
func notHealthyInTime(in *instance, st supervisor.Status, limit time.Duration, last health.Result) error {
	what := "last check: " + lastOutput(last)
	if st.State != supervisor.StateRunning {
		what = fmt.Sprintf("it is %s (%s)", st.State, lastExit(st))
	}
	return &instanceError{in, fmt.Errorf("%w: %s did not pass its health check (%s) within %s; %s",
		ErrUnhealthy, in.Instance, in.Check, limit, what)}
}

// probation watches the new instances for cfg.Probation after a switch:
// any exit (a crash, since nothing else stops them meanwhile) or a turn
// to unhealthy fails it with an *instanceError.
func (a *Agent) probation(ctx context.Context, cfg Config, insts []*instance, w *watch, p *progress) error {
	if cfg.Probation <= 0 || len(insts) == 0 {
		return nil
	}
	p.mark()
	end := time.Now().Add(cfg.Probation)
	timer := time.NewTimer(cfg.Probation)
	defer timer.Stop()
	for {
		woken := a.healthChanged.wait()
		if !w.drain() {
			return fmt.Errorf("probation: %w", supervisor.ErrClosed)
		}
		for _, in := range insts {
			st, err := w.status(in)
			if err != nil {
				return &instanceError{in, fmt.Errorf("%w: %s is gone during the %s probation: %v", ErrCrashed, in.Instance, cfg.Probation, err)}
			}
			if st.Restarts != in.upRestarts || st.State != supervisor.StateRunning {
				return &instanceError{in, fmt.Errorf("%w: %s exited (%s) during the %s probation after the switch",
					ErrCrashed, in.Instance, lastExit(st), cfg.Probation)}
			}
			if in.prober != nil {
				if status, last := in.prober.status(st.PID); status == health.Unhealthy {
					return &instanceError{in, fmt.Errorf("%w: %s turned unhealthy (%s) during the %s probation; last check: %s",
						ErrUnhealthy, in.Instance, in.Check, cfg.Probation, lastOutput(last))}
				}
			}
		}
		if !time.Now().Before(end) {
			p.step("probation", "%d instance(s) stayed up for %s", len(insts), cfg.Probation)
			return nil
		}
		select {
		case ev, ok := <-w.events:
			if !ok {
				return fmt.Errorf("probation: %w", supervisor.ErrClosed)
			}
			w.apply(ev)
		case <-woken:
		case <-timer.C:
		case <-ctx.Done():
			return fmt.Errorf("probation: %w", ctx.Err())
		}
	}
}

// watch follows the instances a switch waits for through the
// supervisor's events: an instance's state is what the last event about
// it carried (state, pid, start time, restarts, exit). The supervisor's
// Status is read only for an instance no event has described since the
// watch began or since events were lost, and for the reason of a crash
// loop (the last start error, which events do not carry).
type watch struct {
	a      *Agent
	events <-chan supervisor.Event
	last   map[string]supervisor.Status
	gone   map[string]bool // stopped and no longer supervised
}

// newWatch follows events, a subscription taken before the instances it
// is asked about were started.
func (a *Agent) newWatch(events <-chan supervisor.Event) *watch {
	return &watch{a: a, events: events, last: map[string]supervisor.Status{}, gone: map[string]bool{}}
}

// apply takes in one event.
func (w *watch) apply(ev supervisor.Event) {
	if ev.Missed > 0 {
		// Events were lost: read every state again when asked.
		clear(w.last)
	}
	switch ev.State {
	case supervisor.StateStopped:
		delete(w.last, ev.Name)
		w.gone[ev.Name] = true
		return
	case supervisor.StateCrashed:
		delete(w.last, ev.Name) // read with its last start error
		return
	}
	delete(w.gone, ev.Name)
	st := w.last[ev.Name]
	st.Name, st.State, st.PID, st.StartedAt, st.Restarts, st.NextAttempt, st.Meta =
		ev.Name, ev.State, ev.PID, ev.StartedAt, ev.Restarts, ev.NextAttempt, ev.Meta
	if ev.State == supervisor.StateBackoff || ev.State == supervisor.StateStarting && ev.Exit != nil {
		st.PID = 0 // the event names the process that exited
	}
	if ev.Exit != nil {
		st.LastExit = ev.Exit
	}
	w.last[ev.Name] = st
}

// drain applies the events queued now, without waiting; false when the
// subscription ended.
func (w *watch) drain() bool {
	for {
		select {
		case ev, ok := <-w.events:
			if !ok {
				return false
			}
			w.apply(ev)
		default:
			return true
		}
	}
}

// status returns in's state as the events carried it.
func (w *watch) status(in *instance) (supervisor.Status, error) {
	if w.gone[in.Name] {
		return supervisor.Status{}, fmt.Errorf("%w: %s", supervisor.ErrNotFound, in.Name)
	}
	if st, ok := w.last[in.Name]; ok {
		return st, nil
	}
	st, err := w.a.sup.Status(in.Name)
	if err == nil && st.State != supervisor.StateCrashed {
		w.last[in.Name] = st
	}
	return st, err
}

// newStatus is Agent.newStatus from the events.
func (w *watch) newStatus(in *instance) (supervisor.Status, error) {
	st, err := w.status(in)
	return newState(in, st, err)
}
