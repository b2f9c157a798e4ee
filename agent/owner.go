package agent

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/berth-dev/berth/agent/health"
	"github.com/berth-dev/berth/agent/internal/procfs"
	"github.com/berth-dev/berth/supervisor"
)

// While the old and the new instance of a socket-mode slot both accept
// on the agent's socket, a probe of the port may be answered by either.
// An attributed probe tells them apart. It is the ordinary HTTP probe of
// package health with a dialer of its own (attributedDial): health keeps
// the connection alive, so that the server still holds the socket it
// accepted once the answer was read; closing the connection then asks
// the kernel for that socket (sock_diag, else /proc/net/tcp and tcp6:
// the entry whose local port is the instance's and whose remote end is
// the probe's own address) and looks for its inode among the open files
// of the new instance's process group. A probe answered by another
// process is health.Result.Unreached, which the health.Tracker counts as
// neither a success nor a failure.

// attributedDial returns a health.Target.Dial whose connections tell, on
// Close, whether the process group pgid accepted them: if not, Close
// returns an error wrapping health.ErrNotReached. A failed dial is not
// reached either.
func attributedDial(pgid int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", health.ErrNotReached, err)
		}
		return &attributedConn{Conn: c, pgid: pgid}, nil
	}
}

// attributedConn is a probe's connection that, when closed, says whether
// its process group accepted it.
type attributedConn struct {
	net.Conn
	pgid int

	once sync.Once
	err  error // Close's answer, the same for every call
}

// Close finds out who accepted the connection, while both ends are still
// open, and then closes it.
func (c *attributedConn) Close() error {
	c.once.Do(func() {
		c.err = c.attribute()
		if err := c.Conn.Close(); c.err == nil {
			c.err = err
		}
	})
	return c.err
}

// attribute returns nil when the process group holds the socket the
// server accepted for this connection, else an error wrapping
// health.ErrNotReached that says why not. A server that accepted but did
// not answer in time is attributed too (its probe failed).
func (c *attributedConn) attribute() error {
	client := c.LocalAddr().(*net.TCPAddr).AddrPort()
	server := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	inode, err := procfs.DiagInode(server, client)
	if err != nil {
		// No sock_diag (an old or restricted kernel): search the tables.
		inode, err = procfs.AcceptedInode(int(server.Port()), client)
	}
	switch {
	case err != nil:
		return fmt.Errorf("%w: find the socket accepted for %s: %w", health.ErrNotReached, client, err)
	case inode == 0:
		return fmt.Errorf("%w: no process holds the socket of %s", health.ErrNotReached, client)
	case !procfs.GroupHolds(c.pgid, inode):
		return fmt.Errorf("%w: another process accepted %s", health.ErrNotReached, client)
	}
	return nil
}

// attributedProbe runs the HTTP check c against 127.0.0.1:port, counting
// only an answer of the process group pgid. A probe answered by another
// process is retried after pause, up to attempts times; the last one
// then comes back Unreached and says nothing about pgid.
func attributedProbe(ctx context.Context, c health.Check, port, pgid, attempts int, pause time.Duration) health.Result {
	target := health.Target{Port: port, Dial: attributedDial(pgid)}
	var r health.Result
	for i := range attempts {
		if i > 0 {
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return r
			case <-t.C:
			}
		}
		if r = health.Probe(ctx, c, target); !r.Unreached {
			return r
		}
	}
	return r
}

// Bounds of the retries of a probe the old instance answered: a few
// milliseconds apart, so that the accepts of both processes get a turn.
const (
	ownerAttempts = 20
	ownerPause    = 5 * time.Millisecond
)

// verifyResult is how the check of a new instance on a shared socket
// ended.
type verifyResult int

const (
	verifiedHealthy verifyResult = iota
	// verifyUnreached: no probe reached the new instance (the old one
	// accepted them all); the switch falls back to stopping the old one
	// first.
	verifyUnreached
)

// verifyShared runs in's HTTP check, through attributedProbe, while the
// old instance of its slot still accepts on the same socket, and applies
// a health.Tracker to the results of each of its processes in turn (a
// restarted process starts over): a success makes it healthy; after the
// start period, Retries failures in a row make it unhealthy, and Retries
// probes in a row (each retried ownerAttempts times) that never reached
// it make it unreached. It fails with an *instanceError when the new
// instance is unhealthy, crash-loops or is not healthy within
// healthDeadline, and returns verifyUnreached when it is unreached, or
// when no probe ever reached it by the deadline.
func (a *Agent) verifyShared(ctx context.Context, cfg Config, in *instance) (verifyResult, error) {
	c := *in.Check
	limit := healthDeadline(c, cfg.StartTimeout)
	deadline := time.Now().Add(limit)
	var (
		pid         int
		tr          *health.Tracker
		reachedOnce bool
	)
	for {
		st, err := a.newStatus(in)
		if err != nil {
			return 0, err
		}
		if !time.Now().Before(deadline) {
			if !reachedOnce && st.State == supervisor.StateRunning {
				return verifyUnreached, nil
			}
			return 0, notHealthyInTime(in, st, limit, in.verified)
		}
		wait := c.Interval
		if st.State == supervisor.StateRunning {
			if tr == nil || st.PID != pid { // a new process starts over
				pid, tr = st.PID, health.NewTracker(c, st.StartedAt)
			}
			r := attributedProbe(ctx, c, in.Port, pid, ownerAttempts, ownerPause)
			if ctx.Err() != nil {
				return 0, fmt.Errorf("wait for %s: %w", in.Instance, ctx.Err())
			}
			if !r.Unreached {
				in.verified, reachedOnce = r, true
			}
			switch status, _ := tr.Observe(r); status {
			case health.Healthy:
				in.upRestarts = st.Restarts
				return verifiedHealthy, nil
			case health.Unhealthy:
				return 0, unhealthyError(in, r)
			case health.Unreached:
				return verifyUnreached, nil
			}
		} else {
			// Not running yet (backoff after an exit): look again soon.
			wait = min(c.Interval, 50*time.Millisecond)
		}
		t := time.NewTimer(min(wait, max(time.Until(deadline), 0)))
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("wait for %s: %w", in.Instance, ctx.Err())
		case <-t.C:
		}
	}
}
