// Package agent is the berth daemon's use cases: Deploy, Activate,
// Rollback, SetConfig, Scale and Status. It turns a state.Release into
// supervisor specs, reconciles the desired state (active release and
// formation) with the running processes, and watches the inbox.
//
// It is the only package that wires state, state/build, supervisor and
// systemd together.
package agent
