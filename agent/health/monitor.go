package health

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Monitor probes a running instance every Interval (liveness) and reports
// status transitions.
type Monitor struct {
	check    Check // with defaults
	target   Target
	onChange func(Status, Result)
	running  atomic.Bool

	mu     sync.Mutex // guards status and last
	status Status
	last   Result
}

// NewMonitor returns a monitor for check on target; it starts nothing.
// onChange, which may be nil, is called from Run's goroutine on every
// status transition with the result that caused it; it must not block for
// long, since the next probe waits for it.
func NewMonitor(c Check, t Target, onChange func(Status, Result)) *Monitor {
	if onChange == nil {
		onChange = func(Status, Result) {}
	}
	return &Monitor{check: c.WithDefaults(), target: t, onChange: onChange}
}

// Run probes at once and then Interval after each probe ends, until ctx
// ends (it then returns nil; a probe cut short by ctx is not recorded). It
// returns an error wrapping ErrInvalidCheck for a check it cannot run, and
// ErrMonitorRunning if the monitor already runs.
func (m *Monitor) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return ErrMonitorRunning
	}
	defer m.running.Store(false)
	if err := validate(m.check, m.target); err != nil {
		return fmt.Errorf("health monitor: %w", err)
	}
	started := m.target.StartedAt
	if started.IsZero() {
		started = time.Now()
	}
	tr := NewTracker(m.check, started)
	m.mu.Lock()
	tr.status = m.status
	m.mu.Unlock()

	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		r := Probe(ctx, m.check, m.target)
		if ctx.Err() != nil {
			return nil
		}
		status, changed := tr.Observe(r)
		m.mu.Lock()
		m.status, m.last = status, r
		m.mu.Unlock()
		if changed {
			m.onChange(status, r)
		}
		timer.Reset(m.check.Interval)
	}
}

// Last returns the current status and the last probe's result (zero before
// the first probe).
func (m *Monitor) Last() (Status, Result) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status, m.last
}
