package api

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// peer is the credentials of the process at the other end of a connection.
type peer struct {
	UID, GID, PID int
	Allowed       bool
	Err           error // why the credentials could not be read, if they could not
}

type peerKey struct{}

// peerOf reads the SO_PEERCRED credentials of conn and decides whether the
// peer may use the API: root, the agent's own uid, or a process whose
// primary or supplementary groups contain gid (when gid >= 0).
func peerOf(conn net.Conn, gid int) peer {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return peer{Err: fmt.Errorf("not a unix socket connection: %T", conn)}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peer{Err: err}
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return peer{Err: err}
	}
	if credErr != nil {
		return peer{Err: fmt.Errorf("SO_PEERCRED: %w", credErr)}
	}
	p := peer{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)}
	switch {
	case p.UID == 0, p.UID == os.Geteuid():
		p.Allowed = true
	case gid < 0:
	case p.GID == gid:
		p.Allowed = true
	default:
		groups, err := procGroups(p.PID)
		if err != nil {
			p.Err = err
			break
		}
		for _, g := range groups {
			if g == gid {
				p.Allowed = true
				break
			}
		}
	}
	return p
}

// procGroups returns the supplementary groups of process pid from the
// "Groups:" line of /proc/<pid>/status.
func procGroups(pid int) ([]int, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, fmt.Errorf("read groups of peer: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var groups []int
		for _, field := range strings.Fields(rest) {
			g, err := strconv.Atoi(field)
			if err != nil {
				return nil, fmt.Errorf("read groups of peer %d: bad group %q", pid, field)
			}
			groups = append(groups, g)
		}
		return groups, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read groups of peer %d: %w", pid, err)
	}
	return nil, fmt.Errorf("read groups of peer %d: no Groups line", pid)
}

// withPeer stores the peer of conn in ctx (http.Server.ConnContext).
func withPeer(ctx context.Context, p peer) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// peerFrom returns the peer stored by withPeer.
func peerFrom(ctx context.Context) (peer, bool) {
	p, ok := ctx.Value(peerKey{}).(peer)
	return p, ok
}
