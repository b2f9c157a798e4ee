package supervisor

import (
	"errors"
	"fmt"
)

// ErrExists is returned by Start when an instance with the same name is
// already supervised.
var ErrExists = errors.New("instance already exists")

// ErrNotFound is returned by Stop, Restart, RestartUnhealthy, Status and
// Tail when no instance with that name is supervised, and by
// RestartUnhealthy when a Stop of the instance came in while it stopped
// the process (the Stop wins: nothing is started again).
var ErrNotFound = errors.New("instance not found")

// ErrStalePID is returned by RestartUnhealthy when the pid it was given
// is no longer the instance's running process: it exited meanwhile (and
// may have been restarted), or it was replaced by a Restart, or it is
// being stopped. Nothing is done: what runs now was not judged.
var ErrStalePID = errors.New("process is no longer the running one")

// ErrInvalidSpec is returned (wrapped in a *SpecError) by Start and
// RunCommand when a Spec field has a bad value; nothing is started.
var ErrInvalidSpec = errors.New("invalid spec")

// ErrClosed is returned by Start, Restart, RestartUnhealthy and
// RunCommand once Run has returned: nothing would reap the process any
// more.
var ErrClosed = errors.New("supervisor closed")

// ErrReaperBusy is returned by Run when another Supervisor is already
// running in this process: children are a process-wide resource and only
// one reaper may own them.
var ErrReaperBusy = errors.New("another supervisor is running in this process")

// SpecError names the Spec field that has a bad value and why. It wraps
// ErrInvalidSpec. Value is left empty for fields that may hold secrets
// (environment values are never echoed).
type SpecError struct {
	Name   string // the instance name, as given; "" from Backoff.WithDefaults
	Field  string // e.g. "Env[3]", "Backoff.Initial"
	Value  string // the offending value, when it is safe to show
	Reason string
}

func (e *SpecError) Error() string {
	msg := e.Field + ": " + e.Reason
	if e.Value != "" {
		msg = fmt.Sprintf("%s %q: %s", e.Field, e.Value, e.Reason)
	}
	if e.Name == "" { // from Backoff.WithDefaults
		return msg
	}
	return fmt.Sprintf("spec %q: %s", e.Name, msg)
}

// Unwrap returns ErrInvalidSpec.
func (e *SpecError) Unwrap() error { return ErrInvalidSpec }

// SpawnError is returned by Start when the first start of the process
// failed (fork or exec: a missing working directory, a bad credential,
// no /bin/sh). The instance stays supervised in state backoff and is
// retried like a crashed process; Stop it to give up.
type SpawnError struct {
	Name string
	Err  error
}

func (e *SpawnError) Error() string { return fmt.Sprintf("start %s: %v", e.Name, e.Err) }

// Unwrap returns the underlying fork/exec error.
func (e *SpawnError) Unwrap() error { return e.Err }
