package fleet

import "errors"

var (
	// ErrInvalid is returned for bad input (an app name, a digest, a
	// placement, a wave size); nothing was changed.
	ErrInvalid = errors.New("invalid")
	// ErrRolloutRunning is returned when a rollout of the app is already
	// running: one rollout per app at a time.
	ErrRolloutRunning = errors.New("a rollout of this app is already running")
	// ErrNotFound is returned for an app without a fleet release, or a
	// fleet version that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrBuildUnavailable is returned when no node and no URL gave a
	// build whose SHA-256 matches its digest.
	ErrBuildUnavailable = errors.New("build unavailable")
	// ErrUnauthorized is returned by the build endpoint for a request
	// without the fleet's token.
	ErrUnauthorized = errors.New("unauthorized")
)
