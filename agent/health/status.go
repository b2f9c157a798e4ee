package health

import (
	"fmt"
	"time"
)

// Status is an instance's health.
type Status int

const (
	// Starting: no probe has succeeded yet and fewer than Retries failures
	// counted (failures during the start period are not counted).
	Starting Status = iota
	// Healthy: the last probe succeeded, or fewer than Retries have failed
	// since the last success.
	Healthy
	// Unhealthy: Retries consecutive probes failed (after the start period).
	Unhealthy
	// Unreached: Retries consecutive probes did not reach the instance
	// (after the start period; see Result.Unreached), and none has
	// succeeded or made it unhealthy since. Only a Target with a Dial
	// gets there.
	Unreached
)

// String returns "starting", "healthy", "unhealthy" or "unreached", as
// `berth ps` shows.
func (s Status) String() string {
	switch s {
	case Starting:
		return "starting"
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	case Unreached:
		return "unreached"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// Tracker applies Docker's HEALTHCHECK rules to the results of one
// process's probes, in order: a success makes it healthy (and ends the
// start period); a failure counts unless the process is still starting
// within its start period, and Retries counted failures in a row make it
// unhealthy. An unreached result (Result.Unreached) is neither: it is
// counted like a failure, apart from them, and Retries of them in a row
// make it unreached; a result that reached the process starts that count
// over. A Monitor runs one; a caller that probes by itself (the agent,
// while two processes share a socket) drives its own. It is not safe for
// concurrent use.
type Tracker struct {
	check    Check // with defaults
	started  time.Time
	status   Status
	failures int // consecutive counted failures
	misses   int // consecutive counted unreached results
}

// NewTracker returns a tracker of check's rules for a process started at
// started, with status Starting.
func NewTracker(c Check, started time.Time) *Tracker {
	return &Tracker{check: c.WithDefaults(), started: started}
}

// Status returns the status after the results observed so far.
func (tr *Tracker) Status() Status { return tr.status }

// Observe records r and returns the status after it and whether it
// changed.
func (tr *Tracker) Observe(r Result) (Status, bool) {
	before := tr.status
	switch {
	case r.Unreached:
		if tr.inStartPeriod(r) {
			break
		}
		tr.misses++
		if tr.misses >= tr.check.Retries {
			tr.status = Unreached
		}
	case r.OK:
		tr.failures, tr.misses = 0, 0
		tr.status = Healthy
	default:
		tr.misses = 0
		if tr.inStartPeriod(r) {
			break
		}
		tr.failures++
		if tr.failures >= tr.check.Retries {
			tr.status = Unhealthy
		}
	}
	return tr.status, tr.status != before
}

// inStartPeriod reports whether r does not count: the process has not
// passed a check yet and r started within its start period.
func (tr *Tracker) inStartPeriod(r Result) bool {
	return tr.status == Starting && r.Time.Sub(tr.started) < tr.check.StartPeriod
}
