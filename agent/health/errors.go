package health

import "errors"

// ErrInvalidCheck is returned (wrapped, naming the bad field and value) by
// Check.Validate and Monitor.Run when a check or its target cannot be
// probed: no kind or more than one, a path that is not absolute, a
// negative duration or retry count, a missing port, or an exec check
// without a runner.
var ErrInvalidCheck = errors.New("invalid health check")

// ErrNotReached is what a Target.Dial, or the Close of a connection it
// opened, returns (wrapped) when the probe did not reach the instance:
// another process accepted the connection, or none did. Probe then marks
// its Result Unreached.
var ErrNotReached = errors.New("probe did not reach the instance")

// ErrMonitorRunning is returned by Monitor.Run when the monitor is already
// running.
var ErrMonitorRunning = errors.New("health monitor already running")
