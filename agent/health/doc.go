// Package health runs the health checks a release declares in berth.json:
// an HTTP GET on the instance's port, a TCP connect, or a command. It
// follows Docker's HEALTHCHECK semantics: failures during the start period
// do not count, Retries consecutive failures make an instance unhealthy,
// and one success makes it healthy.
//
// Probe runs one check, a Tracker applies those rules to a process's
// results, and a Monitor probes a running instance and tracks it. A
// Target may bring its own dialer (Target.Dial): the agent's dialer tells
// whether the instance or another process sharing its socket answered,
// and a probe the instance did not answer counts as neither a success nor
// a failure (Result.Unreached).
//
// It is a leaf: it must not import other berth packages. Commands run
// through Target.RunExec, which the agent routes through its supervisor
// so that one reaper owns every child.
package health
