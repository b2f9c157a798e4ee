package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/agent/health"
	"github.com/berth-dev/berth/agent/internal/procfs"
	"github.com/berth-dev/berth/supervisor"
)

// While the old and the new instance of a socket-mode slot both accept
// on the agent's socket, a probe of the port may be answered by either.
// An attributed probe tells them apart: it sends its GET on a connection
// it dials itself, with keep-alive so that the server keeps the accepted
// socket open after answering, finds that socket in /proc/net/tcp (the
// entry whose local port is the instance's and whose remote end is the
// probe's own address), and looks for its inode among the open files of
// the new instance's process group.

// attributedProbe runs an HTTP check once against port and reports
// whether the process group pgid answered it (accepted the connection).
// A probe answered by another process is retried after pause, up to
// attempts times; then reached is false and the result says nothing
// about pgid.
func attributedProbe(ctx context.Context, c health.Check, port, pgid, attempts int, pause time.Duration) (r health.Result, reached bool) {
	for i := range attempts {
		if i > 0 {
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return r, false
			case <-t.C:
			}
		}
		if r, reached = probeOnce(ctx, c, port, pgid); reached {
			return r, true
		}
	}
	return r, false
}

// probeOnce sends one GET of c.HTTP to 127.0.0.1:port on a connection of
// its own, bounded by c.Timeout, and says whether pgid accepted it. A
// server that accepted but did not answer in time is attributed too (its
// probe failed).
func probeOnce(ctx context.Context, c health.Check, port, pgid int) (health.Result, bool) {
	c = c.WithDefaults()
	start := time.Now()
	r := health.Result{Time: start}
	defer func() { r.Duration = time.Since(start) }()
	pctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var d net.Dialer
	conn, err := d.DialContext(pctx, "tcp", addr)
	if err != nil {
		r.Output = err.Error()
		return r, false
	}
	defer conn.Close()
	deadline, _ := pctx.Deadline()
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(pctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	r.OK, r.Output = exchange(conn, addr, c.HTTP)
	if ctx.Err() != nil {
		return r, false
	}
	if !r.OK && pctx.Err() != nil {
		r.Output = fmt.Sprintf("timed out after %s: %s", c.Timeout, r.Output)
	}
	client, err := netip.ParseAddrPort(conn.LocalAddr().String())
	if err != nil {
		return r, false
	}
	server, err := netip.ParseAddrPort(conn.RemoteAddr().String())
	if err != nil {
		return r, false
	}
	inode, err := procfs.DiagInode(server, client)
	if err != nil {
		// No sock_diag (an old or restricted kernel): search the tables.
		inode, err = procfs.AcceptedInode(port, client)
	}
	if err != nil || inode == 0 {
		return r, false
	}
	return r, procfs.GroupHolds(pgid, inode)
}

// exchange writes a keep-alive GET of path and reads the answer: a 2xx
// or 3xx status is healthy; the output is the status line and the start
// of the body, as health.Probe reports it.
func exchange(conn net.Conn, host, path string) (bool, string) {
	req, err := http.NewRequest(http.MethodGet, "http://"+host+path, nil)
	if err != nil {
		return false, fmt.Sprintf("GET %s: %v", path, err)
	}
	req.Header.Set("User-Agent", "berth-health")
	if err := req.Write(conn); err != nil {
		return false, err.Error()
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	var out strings.Builder
	fmt.Fprintf(&out, "%s %s\n", resp.Proto, resp.Status)
	body, _ := io.ReadAll(io.LimitReader(resp.Body, health.MaxOutput))
	out.Write(body)
	s := out.String()
	if len(s) > health.MaxOutput {
		s = s[:health.MaxOutput]
	}
	return resp.StatusCode >= 200 && resp.StatusCode < 400, s
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

// verifyShared runs in's HTTP check with health.Check's semantics (a
// success makes it healthy; after the start period, Retries failures in
// a row make it unhealthy) while the old instance of its slot still
// accepts on the same socket, counting only the probes the new instance
// answered. It fails with an *instanceError when the new instance is
// unhealthy, crash-loops or is not healthy within healthDeadline, and
// returns verifyUnreached when, past the start period, Retries probes in
// a row (each retried ownerAttempts times) never reached it.
func (a *Agent) verifyShared(ctx context.Context, cfg Config, in *instance) (verifyResult, error) {
	c := *in.Check
	begin := time.Now()
	limit := healthDeadline(c, cfg.StartTimeout)
	deadline := begin.Add(limit)
	var (
		pid              int
		started          time.Time
		failures, misses int
		reachedOnce      bool
	)
	for {
		st, err := a.newStatus(in)
		if err != nil {
			return 0, err
		}
		now := time.Now()
		if !now.Before(deadline) {
			if !reachedOnce && st.State == supervisor.StateRunning {
				return verifyUnreached, nil
			}
			return 0, notHealthyInTime(in, st, limit, in.verified)
		}
		wait := c.Interval
		if st.State == supervisor.StateRunning {
			if st.PID != pid { // a new process starts over
				pid, started, failures, misses = st.PID, st.StartedAt, 0, 0
			}
			r, reached := attributedProbe(ctx, c, in.Port, pid, ownerAttempts, ownerPause)
			if ctx.Err() != nil {
				return 0, fmt.Errorf("wait for %s: %w", in.Instance, ctx.Err())
			}
			inStart := time.Now().Before(started.Add(c.StartPeriod))
			switch {
			case reached && r.OK:
				in.verified = r
				in.upRestarts = st.Restarts
				return verifiedHealthy, nil
			case reached:
				in.verified, reachedOnce, misses = r, true, 0
				if !inStart {
					failures++
				}
				if failures >= c.Retries {
					return 0, unhealthyError(in, r)
				}
			case !inStart:
				misses++
				if misses >= c.Retries {
					return verifyUnreached, nil
				}
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
