package api

import "errors"

// Error kinds. The agent wraps its errors with one of these (for example
// fmt.Errorf("%w: app %q", api.ErrNotFound, name), or
// fmt.Errorf("%w: %w", api.ErrInvalid, err) around a leaf's error); the
// server maps each kind to an HTTP status, and the client turns the status
// back into the same kind, so errors.Is works on both sides of the socket.
var (
	// ErrInvalid is bad input: a bad name, a corrupt or hostile tarball, a
	// malformed Procfile. HTTP 400.
	ErrInvalid = errors.New("invalid")
	// ErrNotFound is an unknown app, release, instance or process type. HTTP 404.
	ErrNotFound = errors.New("not found")
	// ErrConflict is a request that clashes with the current state: an app
	// that exists already, a digest mismatch, a switch already running. HTTP 409.
	ErrConflict = errors.New("conflict")
	// ErrTooLarge is an upload or archive beyond a limit. HTTP 413.
	ErrTooLarge = errors.New("too large")
	// ErrUnavailable is a request the agent cannot serve now (shutting
	// down, disk full). HTTP 503.
	ErrUnavailable = errors.New("unavailable")
)
