package agent

import (
	"errors"
	"fmt"
)

// Sentinel errors of the agent. Errors returned through api.Backend also
// wrap one of the api error kinds (api.ErrInvalid, api.ErrNotFound, ...).
var (
	// ErrNotRunning is returned by Backend methods called before Run has
	// opened the store, or after it started shutting down. It comes
	// wrapped in api.ErrUnavailable.
	ErrNotRunning = errors.New("agent is not running")

	// ErrReleasePhase is wrapped by *ReleasePhaseError: the release phase
	// of a new release failed, the release was marked failed and the
	// previous release keeps running.
	ErrReleasePhase = errors.New("release phase failed")

	// ErrStartTimeout is returned by a switch whose new instances did not
	// all run within Config.StartTimeout. The release stays active and the
	// supervisor keeps retrying the instances.
	ErrStartTimeout = errors.New("instances did not start in time")

	// ErrCrashed is returned by a switch when a new instance crash-loops
	// instead of running.
	ErrCrashed = errors.New("instance crashed on start")
)

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
