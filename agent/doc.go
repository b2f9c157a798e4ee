// Package agent is the berth daemon's use cases: Deploy, Activate,
// Rollback, SetConfig, Scale and Status. It turns a state.Release into
// supervisor specs, reconciles the desired state (active release and
// formation) with the running processes, and watches the inbox.
//
// It is the only package that wires state, state/build, supervisor and
// systemd together. *Agent implements api.Backend; the socket server in
// agent/api calls it.
//
// # Life cycle
//
// New checks the configuration and starts nothing. Run opens the store
// (failing at once, having started nothing, when another agent holds the
// data dir), opens the build store, starts the supervisor, kills the
// processes a previous agent left behind (found by the process records in
// the store: pid, process group and start time), marks releases left
// pending by an interrupted switch failed, starts every app on its active
// release and formation, serves the socket, tells systemd it is ready and
// watches the inbox. When its context ends it stops every app process
// gracefully and returns nil.
//
// # Switching
//
// Every change to an app (deploy, config, rollback, scale, restart, user,
// destroy) takes the app's lock: one change per app at a time, a second
// one waits, other apps are not affected. A switch records the release,
// runs the release phase (a failure marks the release failed and leaves
// the old processes alone), activates the release in the store before it
// touches any process (so a crash from then on ends with the new release
// coming up at the next start), swaps apps/<app>/current, stops the old
// instances and starts the new ones, and returns once they all run. From
// the moment the release is recorded the switch no longer depends on the
// client's request: only the agent's shutdown cuts it short.
//
// # Locks
//
// Lock order: an app's lock, then any of cfgMu, instMu, recMu, opMu (never
// two of these at once). gcMu is read-locked by a deploy between its
// upload and the pin of its build, and try-locked by garbage collection.
package agent
