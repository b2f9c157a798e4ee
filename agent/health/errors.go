package health

import (
	"errors"
	"fmt"
)

// ErrInvalidCheck is returned (wrapped, naming the bad field and value) by
// Check.Validate, WaitHealthy and Monitor.Run when a check or its target
// cannot be probed: no kind or more than one, a path that is not absolute,
// a negative duration or retry count, a missing port, or an exec check
// without a runner.
var ErrInvalidCheck = errors.New("invalid health check")

// ErrUnhealthy is matched (errors.Is) by every *UnhealthyError.
var ErrUnhealthy = errors.New("unhealthy")

// ErrMonitorRunning is returned by Monitor.Run when the monitor is already
// running.
var ErrMonitorRunning = errors.New("health monitor already running")

// UnhealthyError is returned by WaitHealthy when an instance does not
// become healthy: Reason says which limit was reached and Last is the last
// probe's result (its Output is what an operator needs to see).
type UnhealthyError struct {
	Last   Result
	Reason string
}

func (e *UnhealthyError) Error() string {
	if e.Last.Output == "" {
		return fmt.Sprintf("unhealthy: %s", e.Reason)
	}
	return fmt.Sprintf("unhealthy: %s; last check: %s", e.Reason, firstLine(e.Last.Output))
}

// Is makes errors.Is(err, ErrUnhealthy) true.
func (e *UnhealthyError) Is(target error) bool { return target == ErrUnhealthy }
