// Package supervisor owns process lifecycles: spawn, restart with
// backoff, stop a process group, reap, capture logs and report state
// changes. It knows nothing of releases, bbolt or HTTP.
//
// It must not import other berth packages.
package supervisor
