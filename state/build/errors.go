package build

import (
	"errors"
	"fmt"
)

// ErrUnsafeEntry is returned (wrapped in an *UnsafeEntryError) when a tarball
// entry would land outside the build directory, write through a symlink,
// create a device node or FIFO, or replace an earlier entry in a way that is
// not allowed.
var ErrUnsafeEntry = errors.New("unsafe entry")

// ErrLimit is returned when a tarball exceeds one of the configured Limits:
// total unpacked bytes, entry count, path length, path depth, or the
// decompressed-to-compressed ratio.
var ErrLimit = errors.New("limit exceeded")

// ErrCorrupt is returned when the upload is not a tar, tar.gz or tar.zst
// archive, or when the archive is truncated or malformed.
var ErrCorrupt = errors.New("corrupt archive")

// ErrDigestMismatch is returned by Import when the SHA-256 of the uploaded
// bytes differs from the digest the caller expected.
var ErrDigestMismatch = errors.New("digest mismatch")

// ErrNoProcfile is returned by Import when the tarball has no Procfile at its
// root.
var ErrNoProcfile = errors.New("no Procfile")

// ErrProcfile is returned when a Procfile cannot be parsed; the message
// carries the line number.
var ErrProcfile = errors.New("invalid Procfile")

// ErrManifest is returned when berth.json is not a valid manifest: malformed
// JSON, unknown keys, invalid values, or process types the Procfile does not
// declare.
var ErrManifest = errors.New("invalid manifest")

// ErrNotFound is returned by Get when no build with the digest exists.
var ErrNotFound = errors.New("build not found")

// ErrInvalidDigest is returned when a digest is not 64 lowercase hex
// characters.
var ErrInvalidDigest = errors.New("invalid digest")

// UnsafeEntryError names a tarball entry that was refused and why. It
// matches ErrUnsafeEntry with errors.Is.
type UnsafeEntryError struct {
	// Entry is the entry's name as it appears in the tarball.
	Entry string
	// Reason says what is wrong with it, e.g. "path contains \"..\"".
	Reason string
}

// Error implements error.
func (e *UnsafeEntryError) Error() string {
	return fmt.Sprintf("entry %q: unsafe entry: %s", e.Entry, e.Reason)
}

// Unwrap makes errors.Is(err, ErrUnsafeEntry) true.
func (e *UnsafeEntryError) Unwrap() error { return ErrUnsafeEntry }

// LimitError names the limit a tarball exceeded and, where one is to blame,
// the entry. It matches ErrLimit with errors.Is.
type LimitError struct {
	// Entry is the entry being extracted when the limit was hit; it is empty
	// for limits on the archive as a whole (the compression ratio).
	Entry string
	// Limit names the limit: "MaxBytes", "MaxEntries", "MaxPathLen",
	// "MaxDepth", "MaxRatio" or "name component length".
	Limit string
	// Max is the configured maximum.
	Max int64
}

// Error implements error.
func (e *LimitError) Error() string {
	if e.Entry == "" {
		return fmt.Sprintf("limit exceeded: %s (%d)", e.Limit, e.Max)
	}
	return fmt.Sprintf("entry %q: limit exceeded: %s (%d)", e.Entry, e.Limit, e.Max)
}

// Unwrap makes errors.Is(err, ErrLimit) true.
func (e *LimitError) Unwrap() error { return ErrLimit }
