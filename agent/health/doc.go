// Package health runs the health checks a release declares in berth.json:
// an HTTP GET on the instance's port, a TCP connect, or a command. It
// follows Docker's HEALTHCHECK semantics: failures during the start period
// do not count, Retries consecutive failures make an instance unhealthy,
// and one success makes it healthy.
//
// Probe runs one check, WaitHealthy gates an activation on the first
// success, and a Monitor probes a running instance for liveness.
//
// It is a leaf: it must not import other berth packages. Commands run
// through Target.RunExec, which the agent routes through its supervisor
// so that one reaper owns every child.
package health
