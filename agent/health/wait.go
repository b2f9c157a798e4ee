package health

import (
	"context"
	"fmt"
	"time"
)

// WaitHealthy probes t every Interval until the first success, which it
// returns with a nil error. It gives up with an *UnhealthyError when
// Retries consecutive probes fail after the start period (failures inside
// it do not count), or when deadline passes, counted like the start period
// from Target.StartedAt or else from the call (zero: no deadline beyond the
// check's own limits); the error's Last is then the last probe that ran to
// completion. If ctx ends first it returns the last result and ctx's
// error. An invalid check or target is an error wrapping
// ErrInvalidCheck.
func WaitHealthy(ctx context.Context, c Check, t Target, deadline time.Duration) (Result, error) {
	c = c.WithDefaults()
	if err := validate(c, t); err != nil {
		return Result{}, err
	}
	if deadline < 0 {
		return Result{}, fmt.Errorf("%w: deadline %s is negative", ErrInvalidCheck, deadline)
	}
	started := t.StartedAt
	if started.IsZero() {
		started = time.Now()
	}
	dctx := ctx
	if deadline > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithDeadline(ctx, started.Add(deadline))
		defer cancel()
	}
	tr := newTracker(c, started)
	timer := time.NewTimer(0)
	defer timer.Stop()
	var last Result
	for {
		select {
		case <-dctx.Done():
			return last, waitEnded(ctx, c, last, deadline)
		case <-timer.C:
		}
		r := Probe(dctx, c, t)
		if r.OK {
			return r, nil
		}
		if dctx.Err() != nil {
			// A probe cut short by the deadline says less than the last
			// complete one.
			if last.Time.IsZero() {
				last = r
			}
			return last, waitEnded(ctx, c, last, deadline)
		}
		last = r
		tr.observe(last)
		if tr.status == Unhealthy {
			reason := fmt.Sprintf("%d consecutive failed checks (%s)", c.Retries, c)
			if c.StartPeriod > 0 {
				reason += fmt.Sprintf(" after the %s start period", c.StartPeriod)
			}
			return last, &UnhealthyError{Last: last, Reason: reason}
		}
		timer.Reset(c.Interval)
	}
}

// waitEnded is WaitHealthy's error once its context or deadline ended.
func waitEnded(ctx context.Context, c Check, last Result, deadline time.Duration) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("wait for health (%s): %w", c, err)
	}
	return &UnhealthyError{Last: last, Reason: fmt.Sprintf("not healthy within %s (%s)", deadline, c)}
}
