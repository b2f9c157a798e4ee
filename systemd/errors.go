package systemd

import (
	"errors"
	"fmt"
)

// ErrNoCgroup is returned (wrapped, with the reason) by NewCgroups when the
// agent has no writable, delegated cgroup v2 of its own: cgroup2 is not
// mounted, the agent sits in the root cgroup, or its cgroup was not
// delegated to it (no Delegate=yes). The agent then falls back to process
// groups.
var ErrNoCgroup = errors.New("no delegated cgroup v2")

// ErrInvalidUnit is returned (wrapped in a *UnitConfigError) by
// UnitConfig.Validate and Install when a setting cannot go into a unit
// file; nothing is written.
var ErrInvalidUnit = errors.New("invalid unit setting")

// ErrInvalidNotify is returned by Status and Notify when a notification
// would carry a newline or NUL inside a value, which would smuggle extra
// assignments into the message; nothing is sent.
var ErrInvalidNotify = errors.New("invalid notification")

// ErrInvalidName is returned by the Cgroups methods for an instance name
// that cannot be a cgroup (empty, or longer than a file name may be once
// escaped).
var ErrInvalidName = errors.New("invalid instance name")

// ErrInvalidField is returned by SendJournal for a field name journald
// would not accept (it must be upper case letters, digits and underscores,
// not starting with an underscore); nothing is sent.
var ErrInvalidField = errors.New("invalid journal field name")

// UnitConfigError names the UnitConfig field with a bad value and why. It
// wraps ErrInvalidUnit.
type UnitConfigError struct {
	Field  string // "BinaryPath", "Env[FOO]", ...
	Value  string // the offending value; empty for Env values (they may be secrets)
	Reason string
}

// Error names the field, the value when it is safe to show, and the reason.
func (e *UnitConfigError) Error() string {
	if e.Value != "" {
		return fmt.Sprintf("unit setting %s %q: %s", e.Field, e.Value, e.Reason)
	}
	return "unit setting " + e.Field + ": " + e.Reason
}

// Unwrap returns ErrInvalidUnit.
func (e *UnitConfigError) Unwrap() error { return ErrInvalidUnit }
