package state

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Every error the store returns for one of these cases
// wraps the sentinel, so callers test with errors.Is and map the kind to
// their own (the agent maps them to api.ErrNotFound, api.ErrConflict, ...).
var (
	// ErrLocked is returned by Open when another process holds the
	// database's lock for longer than Config.LockTimeout: another agent is
	// using the same data directory.
	ErrLocked = errors.New("database is locked")

	// ErrSchemaTooNew is returned by Open when the database was written by
	// a newer berth whose schema this one does not know; the file is left
	// untouched.
	ErrSchemaTooNew = errors.New("database schema is newer than this berth supports")

	// ErrInvalid is wrapped by every *ValidationError: input the store
	// refuses (a bad name, a negative count, a malformed digest). Nothing
	// is written when it is returned.
	ErrInvalid = errors.New("invalid input")

	// ErrInvalidName is wrapped (besides ErrInvalid) by a *ValidationError
	// about a name: an app, env var, process type, instance or user name.
	ErrInvalidName = errors.New("invalid name")

	// ErrAppNotFound is returned for an app that does not exist.
	ErrAppNotFound = errors.New("app not found")

	// ErrAppExists is returned by CreateApp for a name already taken.
	ErrAppExists = errors.New("app already exists")

	// ErrReleaseNotFound is returned for a version the app does not have.
	ErrReleaseNotFound = errors.New("release not found")

	// ErrNoActiveRelease is returned by ActiveRelease for an app with no
	// active release (never deployed, or its active release was marked
	// failed).
	ErrNoActiveRelease = errors.New("app has no active release")

	// ErrBadTransition is returned by Activate and MarkFailed when the
	// release's status does not allow the change (activating a failed
	// release, failing a superseded one). The store is unchanged.
	ErrBadTransition = errors.New("release status does not allow this change")

	// ErrBuildNotFound is returned for a build digest with no record.
	ErrBuildNotFound = errors.New("build not found")

	// ErrPortsExhausted is returned by Port when every port from the base
	// up to 65535 is allocated.
	ErrPortsExhausted = errors.New("no free port")

	// ErrUIDsExhausted is returned by AppUID when every uid of the range
	// is held by an app or taken by a user or group of the host.
	ErrUIDsExhausted = errors.New("no free uid for the app")
)

// ValidationError is input the store refuses. Its message names the
// field, the bad value and the rule, for example
//
//	invalid app name "My_App": must match ^[a-z][a-z0-9-]{0,62}$ (a lowercase letter, then up to 62 lowercase letters, digits or dashes)
//
// It wraps ErrInvalid, and ErrInvalidName when the field is a name.
type ValidationError struct {
	Field string // what was refused: "app name", "env var name", "process count"
	Value string // the refused value, quoted in the message (never a config value)
	Rule  string // the rule the value breaks
	name  bool
}

// Error implements error.
func (e *ValidationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "invalid %s %q: %s", e.Field, e.Value, e.Rule)
	return b.String()
}

// Unwrap returns ErrInvalid, plus ErrInvalidName for names.
func (e *ValidationError) Unwrap() []error {
	if e.name {
		return []error{ErrInvalidName, ErrInvalid}
	}
	return []error{ErrInvalid}
}

func invalidName(field, value, rule string) error {
	return &ValidationError{Field: field, Value: value, Rule: rule, name: true}
}

func invalidValue(field, value, rule string) error {
	return &ValidationError{Field: field, Value: value, Rule: rule}
}
