// Package state is berth's store: apps, builds, releases, config,
// formation and events in one bbolt file, with a schema version and
// migrations run at open.
//
// It must not import process, network or other berth packages.
package state
