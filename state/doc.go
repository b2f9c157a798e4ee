// Package state is berth's store and single source of truth: apps,
// builds, releases, config, formation, instance ports, app uids, process
// records and events in one bbolt file, with a schema version and
// migrations run at open (see migrate.go for the layout).
//
// Every write is one bbolt transaction, fsynced before it returns, so a
// kill -9 or power cut loses no acknowledged record and never leaves half
// of one. Release versions are allocated in the transaction that writes
// the release, so they are unique, contiguous and never reused under
// concurrent writers. Records are JSON under big-endian numeric keys, so
// cursors list them in order. Values are copied out of the transaction
// that read them.
//
// It must not import process, network or other berth packages.
package state
