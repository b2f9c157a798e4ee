package procfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DiagSocket is one TCP socket as sock_diag dumps it.
type DiagSocket struct {
	State         uint8 // TCP state (1 established ... 10 listen, 12 new SYN received)
	Local, Remote netip.AddrPort
	// RQueue is, for a listening socket, the length of its accept queue
	// (connections the kernel completed that no accept took yet).
	RQueue uint32
	Inode  uint64 // 0 until a process holds the socket
}

// TCP states of interest to a drain.
const (
	TCPListen    = tcpListen
	TCPTimeWait  = 6
	TCPClose     = 7
	TCPNewSynRcv = 12
)

// DiagDump returns every TCP socket of this network namespace, IPv4 and
// IPv6, in the states of mask (bit 1<<state).
func DiagDump(mask uint32) ([]DiagSocket, error) {
	var out []DiagSocket
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := diagDumpFamily(family, mask)
		if err != nil {
			return nil, err
		}
		out = append(out, socks...)
	}
	return out, nil
}

// diagDumpFamily runs one dump request and reads its multipart reply.
func diagDumpFamily(family uint8, mask uint32) ([]DiagSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(time.Second.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("sock_diag timeout: %w", err)
	}
	req := make([]byte, nlmsgHeaderLen+diagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1)
	body := req[nlmsgHeaderLen:]
	body[0], body[1] = family, unix.IPPROTO_TCP
	ne.PutUint32(body[4:], mask)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag dump request: %w", err)
	}
	var out []DiagSocket
	buf := make([]byte, 32<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("sock_diag dump reply: %w", err)
		}
		var done bool
		out, done, err = ParseDiagDump(buf[:n], out)
		if err != nil || done {
			return out, err
		}
	}
}

// ParseDiagDump appends the sockets of one datagram of a sock_diag dump
// reply to out; done is true once the reply's end (NLMSG_DONE) was seen.
func ParseDiagDump(b []byte, out []DiagSocket) (_ []DiagSocket, done bool, _ error) {
	ne := binary.NativeEndian
	for len(b) > 0 {
		if len(b) < nlmsgHeaderLen {
			return out, false, fmt.Errorf("sock_diag message header of %d bytes", len(b))
		}
		l := ne.Uint32(b[0:])
		if l < nlmsgHeaderLen || uint64(l) > uint64(len(b)) {
			return out, false, fmt.Errorf("sock_diag message of %d bytes says it has %d", len(b), l)
		}
		msg := b[nlmsgHeaderLen:l]
		switch typ := ne.Uint16(b[4:]); typ {
		case unix.NLMSG_DONE:
			return out, true, nil
		case unix.NLMSG_ERROR:
			if len(msg) < 4 {
				return out, false, fmt.Errorf("sock_diag error message of %d bytes", len(msg))
			}
			return out, false, fmt.Errorf("sock_diag dump: %w", unix.Errno(-int32(ne.Uint32(msg))))
		case unix.SOCK_DIAG_BY_FAMILY:
			if len(msg) < diagMsgLen {
				return out, false, fmt.Errorf("sock_diag message of %d bytes", len(msg))
			}
			s := DiagSocket{State: msg[1], RQueue: ne.Uint32(msg[56:]), Inode: uint64(ne.Uint32(msg[68:]))}
			lport, rport := binary.BigEndian.Uint16(msg[4:]), binary.BigEndian.Uint16(msg[6:])
			switch msg[0] {
			case unix.AF_INET:
				s.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(msg[8:12])), lport)
				s.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(msg[24:28])), rport)
			case unix.AF_INET6:
				s.Local = netip.AddrPortFrom(netip.AddrFrom16([16]byte(msg[8:24])), lport)
				s.Remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte(msg[24:40])), rport)
			default:
				return out, false, fmt.Errorf("sock_diag message of family %d", msg[0])
			}
			out = append(out, s)
		default:
			return out, false, fmt.Errorf("sock_diag message of type %d", typ)
		}
		// Messages are aligned to 4 bytes.
		next := (int(l) + 3) &^ 3
		if next >= len(b) {
			break
		}
		b = b[next:]
	}
	return out, false, nil
}

// GroupSockets returns the socket inodes that the processes of the
// process group pgid hold open, each with one pid and fd holding it.
// A process that exits meanwhile is skipped.
func GroupSockets(pgid int) (map[uint64]PIDFD, error) {
	out := map[uint64]PIDFD{}
	add := func(pid int) {
		dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
		entries, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, e := range entries {
			l, err := os.Readlink(dir + e.Name())
			if err != nil || !strings.HasPrefix(l, "socket:[") {
				continue
			}
			inode, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]"), 10, 64)
			fd, ferr := strconv.Atoi(e.Name())
			if err != nil || ferr != nil {
				continue
			}
			if _, ok := out[inode]; !ok {
				out[inode] = PIDFD{PID: pid, FD: fd}
			}
		}
	}
	if pgid <= 0 {
		return nil, errors.New("no process group")
	}
	add(pgid)
	err := Each(func(pid int, st Stat) bool {
		if st.PGID == pgid && pid != pgid {
			add(pid)
		}
		return true
	})
	return out, err
}

// PIDFD names one open file of one process.
type PIDFD struct{ PID, FD int }
