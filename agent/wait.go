package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/agent/health"
	"github.com/berth-dev/berth/supervisor"
)

// Waiting for the instances of a switch: waitUp until they are up
// (healthy, or running for the settle time), probation after that, both
// acting on the supervisor's events through a watch, and the errors that
// say why an instance never came up.

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
		woken := a.healthChanged.Wait()
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
// never will be. A steered instance without a check that binds $PORT
// itself is up as soon as it listens there, or once it ran for the
// settle time, whichever comes first.
func (a *Agent) upState(cfg Config, in *instance, w *watch, healthy bool, begin, now time.Time) (bool, time.Time, error) {
	st, err := w.newStatus(in)
	if err != nil {
		return false, now, err
	}
	if in.Check == nil || !healthy {
		if st.State == supervisor.StateRunning {
			settled := st.StartedAt.Add(cfg.Settle)
			if !now.Before(settled) || healthy && in.listens(st.PID) {
				in.upRestarts = st.Restarts
				return true, now, nil
			}
			if healthy && in.steer != nil && in.steer.sock == nil {
				// Look again soon for its listening socket.
				if soon := now.Add(drainPoll); soon.Before(settled) {
					return false, soon, nil
				}
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
		woken := a.healthChanged.Wait()
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
	// dropped is the supervisor's count of dropped events when last
	// looked at: a drop with no event after it carries no Missed.
	dropped uint64
}

// newWatch follows events, a subscription taken before the instances it
// is asked about were started.
func (a *Agent) newWatch(events <-chan supervisor.Event) *watch {
	return &watch{a: a, events: events, last: map[string]supervisor.Status{}, gone: map[string]bool{}, dropped: a.sup.DroppedEvents()}
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
// subscription ended. If the supervisor dropped events meanwhile (for
// any subscriber: the count is global), every state is read again when
// asked: a drop happens only while this buffer may be full, and the
// event that would carry its Missed count may never come. A drop always
// leaves events queued, so a waiter wakes up and gets here after it.
func (w *watch) drain() bool {
	for {
		select {
		case ev, ok := <-w.events:
			if !ok {
				return false
			}
			w.apply(ev)
		default:
			if d := w.a.sup.DroppedEvents(); d != w.dropped {
				w.dropped = d
				clear(w.last)
			}
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
