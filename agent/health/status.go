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
)

// String returns "starting", "healthy" or "unhealthy", as `berth ps` shows.
func (s Status) String() string {
	switch s {
	case Starting:
		return "starting"
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// tracker applies Docker's HEALTHCHECK rules to a sequence of results. It
// is owned by one goroutine.
type tracker struct {
	check    Check // with defaults
	started  time.Time
	status   Status
	failures int // consecutive counted failures
}

func newTracker(c Check, started time.Time) *tracker {
	return &tracker{check: c.WithDefaults(), started: started}
}

// observe records r and reports whether the status changed. A success makes
// the instance healthy and ends the start period; a failure counts unless
// the instance is still starting within its start period.
func (tr *tracker) observe(r Result) bool {
	before := tr.status
	if r.OK {
		tr.failures = 0
		tr.status = Healthy
		return tr.status != before
	}
	if tr.status == Starting && r.Time.Sub(tr.started) < tr.check.StartPeriod {
		return false
	}
	tr.failures++
	if tr.failures >= tr.check.Retries {
		tr.status = Unhealthy
	}
	return tr.status != before
}
