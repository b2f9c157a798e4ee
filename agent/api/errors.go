package api

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
)

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
	// ErrMediaType is a request body whose Content-Type the endpoint does
	// not take: a JSON body must say application/json. HTTP 415.
	ErrMediaType = errors.New("unsupported media type")
)

// errForbidden is the kind of the server's answer to a peer that may not
// use the API; only ServeHTTP's credential check gives it, so it is not
// exported for backends to wrap.
var errForbidden = errors.New("forbidden")

// ErrSocketInUse is returned by Listen when a live agent already answers
// on the socket path.
var ErrSocketInUse = errors.New("socket in use")

// Kind names as they appear in ErrorBody.Kind.
const (
	KindInvalid     = "invalid"
	KindNotFound    = "not_found"
	KindConflict    = "conflict"
	KindTooLarge    = "too_large"
	KindUnavailable = "unavailable"
	KindInternal    = "internal"
	KindForbidden   = "forbidden"
	KindMediaType   = "unsupported_media_type"
)

// kinds lists the error kinds in the order they are checked: an error
// that wraps two kinds (fmt.Errorf("%w: %w", ErrInvalid, ErrTooLarge))
// gets the more specific one.
var kinds = []struct {
	err    error
	kind   string
	status int
}{
	{ErrTooLarge, KindTooLarge, http.StatusRequestEntityTooLarge},
	{ErrUnavailable, KindUnavailable, http.StatusServiceUnavailable},
	{ErrNotFound, KindNotFound, http.StatusNotFound},
	{ErrConflict, KindConflict, http.StatusConflict},
	{ErrMediaType, KindMediaType, http.StatusUnsupportedMediaType},
	{ErrInvalid, KindInvalid, http.StatusBadRequest},
	{errForbidden, KindForbidden, http.StatusForbidden},
}

// KindedError is an error that names its own ErrorBody kind: a typed
// error of a package this one must not import (the agent's *SwitchError,
// say) implements it to be classified without wrapping a sentinel.
type KindedError interface {
	error
	// APIKind returns one of the Kind constants.
	APIKind() string
}

// KindOf returns the ErrorBody kind of err: the first error kind of this
// package that err wraps, else the kind a KindedError in err's chain
// names (when it is one of the kinds above), else "internal".
func KindOf(err error) string {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.kind
		}
	}
	var ke KindedError
	if errors.As(err, &ke) {
		kind := ke.APIKind()
		for _, k := range kinds {
			if k.kind == kind {
				return kind
			}
		}
	}
	return KindInternal
}

// StatusOf returns the HTTP status for an ErrorBody kind.
func StatusOf(kind string) int {
	for _, k := range kinds {
		if k.kind == kind {
			return k.status
		}
	}
	return http.StatusInternalServerError
}

// Error is an error response from the agent, as the Client returns it.
// errors.Is(err, ErrNotFound) and the like hold when the agent's error
// was of that kind, so callers on both sides of the socket test errors
// the same way.
type Error struct {
	Status int       // HTTP status of the response (for a streamed error, the status its kind maps to)
	Body   ErrorBody // the agent's message and kind
}

// Error returns the agent's message.
func (e *Error) Error() string {
	if e.Body.Error == "" {
		return fmt.Sprintf("agent answered %d %s", e.Status, http.StatusText(e.Status))
	}
	return e.Body.Error
}

// Is reports whether target is the sentinel error of e's kind.
func (e *Error) Is(target error) bool {
	for _, k := range kinds {
		if k.err == target {
			return e.Body.Kind == k.kind
		}
	}
	return false
}

// UnreachableError is returned by the Client when nothing serves the
// socket (it does not exist, or connections are refused) or the caller may
// not connect to it. Its message says where the client looked and how to
// start the agent. It wraps ErrUnavailable and the dial error.
type UnreachableError struct {
	Socket string // the socket path the client dialed
	Err    error  // the dial error
}

// Error says where the client looked and what to do about it.
func (e *UnreachableError) Error() string {
	if errors.Is(e.Err, fs.ErrPermission) {
		return fmt.Sprintf("cannot connect to the berth agent at %s: permission denied\n"+
			"run as root or as a member of the socket's group (usually \"berth\"), "+
			"or point the CLI at another agent with --socket or BERTH_SOCKET", e.Socket)
	}
	return fmt.Sprintf("cannot reach the berth agent at %s: %v\n"+
		"start it with `berth agent` (or `systemctl start berth`), "+
		"or point the CLI at its socket with --socket or BERTH_SOCKET", e.Socket, rootCause(e.Err))
}

// Unwrap returns ErrUnavailable and the dial error.
func (e *UnreachableError) Unwrap() []error { return []error{ErrUnavailable, e.Err} }

// rootCause strips the net package's wrapping ("dial unix /x: connect:")
// so a message names the socket once.
func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}
