package agent

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/state/build"
	"github.com/berth-dev/berth/supervisor"
)

// Sentinel errors of the agent. Errors returned through api.Backend also
// wrap one of the api error kinds (api.ErrInvalid, api.ErrNotFound, ...).
var (
	// ErrNotRunning is returned by Backend methods called before Run has
	// opened the store. It comes wrapped in api.ErrUnavailable.
	ErrNotRunning = errors.New("agent is not running")

	// ErrShuttingDown is returned by Backend methods called once the
	// agent began shutting down, and by operations it cut short: a switch
	// abandoned in its release phase or while waiting for its instances
	// (recorded as interrupted; the previous release stays active). It
	// comes wrapped in api.ErrUnavailable.
	ErrShuttingDown = errors.New("the agent is shutting down")

	// ErrReleasePhase is wrapped by *ReleasePhaseError: the release phase
	// of a new release failed, the release was marked failed and the
	// previous release keeps running.
	ErrReleasePhase = errors.New("release phase failed")

	// ErrStartTimeout is wrapped by the error of a switch whose new
	// instances did not all run within Config.StartTimeout (a switch
	// then rolls back: see SwitchError), and of a scale whose new
	// instances did not (they keep being retried).
	ErrStartTimeout = errors.New("instances did not start in time")

	// ErrCrashed is returned by a switch when a new instance crash-loops
	// instead of running, or exits during the probation window.
	ErrCrashed = errors.New("instance crashed")

	// ErrUnhealthy is returned by a switch when a new instance fails its
	// health check (Retries failures after its start period), does not
	// pass it before its deadline, or turns unhealthy during probation.
	ErrUnhealthy = errors.New("instance is not healthy")

	// ErrRolledBack is wrapped by *SwitchError: a switch failed and the
	// new release was marked failed and rolled back.
	ErrRolledBack = errors.New("release failed and was rolled back")
)

// SwitchError reports a switch whose new instances did not come up
// healthy, or crashed during probation: the new release was marked
// failed with Reason and Output, and the app went back to RolledBackTo
// (0: there was no earlier release, so none of the app's processes run).
// It unwraps to ErrRolledBack and to the cause (ErrUnhealthy, ErrCrashed
// or ErrStartTimeout).
type SwitchError struct {
	App          string
	Version      int
	RolledBackTo int
	Reason       string // the cause, naming the instance and the last check's output
	Output       string // the failing instance's last log lines
	Err          error  // the cause
}

// Error implements error.
func (e *SwitchError) Error() string {
	if e.RolledBackTo == 0 {
		return fmt.Sprintf("%s v%d failed: %s; v%d marked failed and its processes stopped (no earlier release to roll back to)",
			e.App, e.Version, e.Reason, e.Version)
	}
	return fmt.Sprintf("%s v%d failed: %s; rolled back to v%d, v%d marked failed",
		e.App, e.Version, e.Reason, e.RolledBackTo, e.Version)
}

// Unwrap returns ErrRolledBack and the cause.
func (e *SwitchError) Unwrap() []error { return []error{ErrRolledBack, e.Err} }

// APIKind is conflict: the request was valid and carried out, but the
// release it made did not come up, so a client should not retry it as is.
func (e *SwitchError) APIKind() string { return api.KindConflict }

// ReleasePhaseError reports a failed release phase: the release's version,
// how the command ended and the tail of its output.
type ReleasePhaseError struct {
	App     string
	Version int
	Reason  string // "exit 1", "timed out after 10m0s"
	Output  string // the last bytes of the combined output
}

// Error implements error.
func (e *ReleasePhaseError) Error() string {
	return fmt.Sprintf("release phase of %s v%d failed (%s); v%d marked failed, the previous release keeps running",
		e.App, e.Version, e.Reason, e.Version)
}

// Unwrap returns ErrReleasePhase.
func (e *ReleasePhaseError) Unwrap() error { return ErrReleasePhase }

// APIKind is conflict, as for SwitchError: the release phase of a valid
// request failed.
func (e *ReleasePhaseError) APIKind() string { return api.KindConflict }

// mapErr wraps a leaf's error with the api kind that fits, once.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	for _, k := range []error{api.ErrInvalid, api.ErrNotFound, api.ErrConflict, api.ErrTooLarge, api.ErrUnavailable} {
		if errors.Is(err, k) {
			return err
		}
	}
	var kind error
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("%w: disk full: %w", api.ErrUnavailable, err)
	case errors.Is(err, state.ErrAppNotFound), errors.Is(err, state.ErrReleaseNotFound),
		errors.Is(err, state.ErrBuildNotFound), errors.Is(err, build.ErrNotFound):
		kind = api.ErrNotFound
	case errors.Is(err, state.ErrAppExists), errors.Is(err, state.ErrBadTransition),
		errors.Is(err, state.ErrNoActiveRelease), errors.Is(err, build.ErrDigestMismatch):
		kind = api.ErrConflict
	case errors.Is(err, build.ErrLimit):
		kind = api.ErrTooLarge
	case errors.Is(err, state.ErrInvalid), errors.Is(err, build.ErrUnsafeEntry), errors.Is(err, build.ErrCorrupt),
		errors.Is(err, build.ErrNoProcfile), errors.Is(err, build.ErrProcfile), errors.Is(err, build.ErrManifest),
		errors.Is(err, build.ErrInvalidDigest), errors.Is(err, supervisor.ErrInvalidSpec):
		kind = api.ErrInvalid
	case errors.Is(err, state.ErrPortsExhausted):
		kind = api.ErrUnavailable
	default:
		return err
	}
	return &kindError{kind: kind, err: err}
}

// kindError gives a leaf's error an api kind without changing its
// message.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }
