// Executing a rollout: converge starts and stops an app's processes in
// the order package rollout plans (stop first, start, overlap on shared
// sockets, stop alongside), then waits until the new instances are up
// (wait.go; probation watches them after a switch). Deciding what starts and stops
// is package rollout's; the switch around it (release phase, activation,
// rollback) is switch.go's.

package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"

	"github.com/berth-dev/berth/agent/api"
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
		who, tmp, err := a.prepare(cfg, app, b)
		if err != nil {
			return nil, err
		}
		for _, inst := range start {
			spec, in, err := a.specFor(cfg, app, rel, b, inst, who, tmp)
			if err != nil {
				for _, in := range insts {
					if in.steer != nil {
						in.steer.closeSock()
					}
				}
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
			SocketOpen: in.Mode == "socket" && in.steer == nil && a.hasSocket(in.slot()), Steered: in.steer != nil}
	}
	plan := rollout.PlanStops(want, running, starting, rel.Version, healthy)
	if len(plan.StopFirst) > 0 {
		p.mark()
		// Steered ones (a slot the formation dropped) are drained first.
		a.retire(ctx, app, plan.StopFirst)
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
		if in.Mode != "socket" || in.steer != nil {
			continue // a steered instance has a socket of its own
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
		// Steered: the public ports go to the new instances once they are
		// up and listen, and the old ones drain before their stop signal.
		if err := a.join(insts); err != nil {
			return insts, err
		}
		if steeredAny(pick(have, plan.StopAlong)) {
			p.mark()
			a.retire(ctx, app, plan.StopAlong)
			p.step("drain", "the public ports reach the new instances; the old ones drained")
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
	// Steered instances that did not overlap (a start, a scale, a
	// stop-first switch) join their groups now; at boot without waiting
	// for them to listen.
	if err := a.join(insts); err != nil {
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
		out = append(out, rollout.Running{Name: in.Name, Slot: in.Instance, Release: in.Release, Socket: in.Mode == "socket" && in.steer == nil,
			HTTPCheck: in.prober != nil && in.Check != nil && in.Check.HTTP != "", Steered: in.steer != nil})
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
		if plan.Overlapping(in.Instance) && in.Check != nil && in.Check.HTTP != "" && in.steer == nil {
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

// stopInstances stops and forgets the named instances, all at once, and
// logs how each ended: one that needed SIGKILL after its stop timeout
// (it ignored its stop signal, or took too long) is a warning.
func (a *Agent) stopInstances(ctx context.Context, app string, names []string) error {
	// Stop forgets an instance even when it fails (its group is killed
	// when ctx ends), so forget them all either way.
	have := a.appInstances(app)
	insts := pick(have, names)
	exits := make([]supervisor.Exit, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			if exits[i], errs[i] = a.sup.Stop(ctx, name); errs[i] != nil {
				errs[i] = fmt.Errorf("stop %s: %w", name, errs[i])
			}
		})
	}
	wg.Wait()
	for i, name := range names {
		in := have[name]
		switch {
		case errs[i] != nil || in == nil:
		case exits[i].Signal == syscall.SIGKILL && in.spec.StopSignal != syscall.SIGKILL:
			a.log.Warn("old instance needed SIGKILL after its stop timeout", "name", name, "stop_timeout", in.spec.StopTimeout, "exit", exits[i].String())
		default:
			a.log.Info("stopped old instance", "name", name, "exit", exits[i].String())
		}
	}
	err := errors.Join(errs...)
	a.forget(insts...)
	a.resteerStopped(app, insts)
	if ctx.Err() != nil {
		return fmt.Errorf("stop old instances: %w", ctx.Err())
	}
	if err != nil {
		a.log.Warn("stopping old instances", "app", app, "error", err)
	}
	return nil
}

// steeredAny reports whether any of insts is steered.
func steeredAny(insts []*instance) bool {
	for _, in := range insts {
		if in.steer != nil {
			return true
		}
	}
	return false
}
