package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/agent/health"
	"github.com/berth-dev/berth/supervisor"
	"golang.org/x/sys/unix"
)

// While the old and the new instance of a socket-mode slot both accept
// on the agent's socket, a probe of the port may be answered by either.
// An attributed probe tells them apart: it sends its GET on a connection
// it dials itself, with keep-alive so that the server keeps the accepted
// socket open after answering, finds that socket in /proc/net/tcp (the
// entry whose local port is the instance's and whose remote end is the
// probe's own address), and looks for its inode among the open files of
// the new instance's process group.

// tcpEntry is one socket of /proc/net/tcp or /proc/net/tcp6.
type tcpEntry struct {
	Local, Remote netip.AddrPort
	Inode         uint64 // 0 while no process holds it (e.g. not accepted yet)
}

// parseProcNetTCP parses the table of /proc/net/tcp or /proc/net/tcp6.
func parseProcNetTCP(r io.Reader) ([]tcpEntry, error) {
	var out []tcpEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 10 {
			return nil, fmt.Errorf("malformed /proc/net/tcp line %q: %d fields, want at least 10", sc.Text(), len(f))
		}
		local, err := parseHexAddrPort(f[1])
		if err != nil {
			return nil, err
		}
		remote, err := parseHexAddrPort(f[2])
		if err != nil {
			return nil, err
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("malformed /proc/net/tcp inode %q", f[9])
		}
		out = append(out, tcpEntry{Local: local, Remote: remote, Inode: inode})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read /proc/net/tcp: %w", err)
	}
	return out, nil
}

// parseHexAddrPort parses "0100007F:1F90" (IPv4) or a 32-digit IPv6
// address and a port. The kernel prints the address as 32-bit words in
// host byte order and the port as a number.
func parseHexAddrPort(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok || len(p) != 4 || (len(h) != 8 && len(h) != 32) {
		return netip.AddrPort{}, fmt.Errorf("malformed /proc/net/tcp address %q", s)
	}
	raw, err := hex.DecodeString(h)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("malformed /proc/net/tcp address %q: %w", s, err)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("malformed /proc/net/tcp port in %q", s)
	}
	ip := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(ip[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// procNetFiles are the socket tables acceptedInode searches.
var procNetFiles = []string{"/proc/net/tcp", "/proc/net/tcp6"}

// acceptedInode returns the inode of the socket the server on port holds
// for the connection from client: 0 when no such entry exists or no
// process holds it yet.
func acceptedInode(port int, client netip.AddrPort) (uint64, error) {
	want := netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	for _, name := range procNetFiles {
		b, err := os.ReadFile(name)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6
		}
		if err != nil {
			return 0, err
		}
		entries, err := parseProcNetTCP(bytes.NewReader(b))
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		for _, e := range entries {
			if int(e.Local.Port()) == port && netip.AddrPortFrom(e.Remote.Addr().Unmap(), e.Remote.Port()) == want && e.Inode != 0 {
				return e.Inode, nil
			}
		}
	}
	return 0, nil
}

// diagInode asks the kernel (NETLINK_SOCK_DIAG, one exact lookup rather
// than a walk of /proc/net/tcp, which holds every TIME_WAIT socket of a
// busy host) for the inode of the TCP socket whose local end is local
// and whose remote end is remote: 0 when there is none or no process
// holds it yet.
func diagInode(local, remote netip.AddrPort) (uint64, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(time.Second.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, fmt.Errorf("sock_diag timeout: %w", err)
	}
	// struct nlmsghdr (16 bytes), then struct inet_diag_req_v2 (56).
	req := make([]byte, 16+56)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], 1)
	body := req[16:]
	la, ra := local.Addr(), remote.Addr()
	if la.Is4In6() && ra.Is4In6() {
		la, ra = la.Unmap(), ra.Unmap()
	}
	body[0] = unix.AF_INET6
	if la.Is4() && ra.Is4() {
		body[0] = unix.AF_INET
	} else if la.Is4() || ra.Is4() {
		return 0, fmt.Errorf("sock_diag: mixed address families %s and %s", local, remote)
	}
	body[1] = unix.IPPROTO_TCP
	ne.PutUint32(body[4:], 0xffffffff) // every state
	id := body[8:]                     // struct inet_diag_sockid
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	la16, ra16 := la.As16(), ra.As16()
	if la.Is4() {
		la4, ra4 := la.As4(), ra.As4()
		copy(id[4:], la4[:])
		copy(id[20:], ra4[:])
	} else {
		copy(id[4:], la16[:])
		copy(id[20:], ra16[:])
	}
	ne.PutUint32(id[40:], 0xffffffff) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], 0xffffffff)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("sock_diag request: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return 0, fmt.Errorf("sock_diag reply: %w", err)
	}
	if n < 16 {
		return 0, fmt.Errorf("sock_diag reply of %d bytes", n)
	}
	switch typ := ne.Uint16(buf[4:]); typ {
	case unix.NLMSG_ERROR:
		if n < 20 {
			return 0, fmt.Errorf("sock_diag error reply of %d bytes", n)
		}
		errno := unix.Errno(-int32(ne.Uint32(buf[16:])))
		if errno == unix.ENOENT {
			return 0, nil // no such connection (any more)
		}
		return 0, fmt.Errorf("sock_diag: %w", errno)
	case unix.SOCK_DIAG_BY_FAMILY:
		// struct inet_diag_msg: idiag_state at offset 1, the ports at 4
		// and 6, idiag_inode at 68.
		msg := buf[16:n]
		if len(msg) < 72 {
			return 0, fmt.Errorf("sock_diag message of %d bytes", len(msg))
		}
		// The kernel's lookup falls back to the listening socket when no
		// connection matches: that is not the one asked for.
		const tcpListen = 10
		if msg[1] == tcpListen || binary.BigEndian.Uint16(msg[4:]) != local.Port() || binary.BigEndian.Uint16(msg[6:]) != remote.Port() {
			return 0, nil
		}
		return uint64(ne.Uint32(msg[68:])), nil
	default:
		return 0, fmt.Errorf("sock_diag reply of type %d", typ)
	}
}

// groupHolds reports whether a process of the process group pgid (its
// leader first, then any worker it forked) holds the socket inode.
func groupHolds(pgid int, inode uint64) bool {
	if pgid <= 0 || inode == 0 {
		return false
	}
	link := "socket:[" + strconv.FormatUint(inode, 10) + "]"
	return pidHolds(pgid, link) || anyInGroup(pgid, func(pid int, _ procStat) bool { return pid != pgid && pidHolds(pid, link) })
}

// pidHolds reports whether one of pid's open files is link.
func pidHolds(pid int, link string) bool {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if l, err := os.Readlink(dir + e.Name()); err == nil && l == link {
			return true
		}
	}
	return false
}

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
	inode, err := diagInode(server, client)
	if err != nil {
		// No sock_diag (an old or restricted kernel): search the tables.
		inode, err = acceptedInode(port, client)
	}
	if err != nil || inode == 0 {
		return r, false
	}
	return r, groupHolds(pgid, inode)
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
