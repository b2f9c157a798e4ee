package procfs

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Sizes of the sock_diag messages: struct nlmsghdr, struct
// inet_diag_req_v2, and the part of struct inet_diag_msg read here (up to
// and including idiag_inode).
const (
	nlmsgHeaderLen = 16
	diagReqLen     = 56
	diagMsgLen     = 72
)

// tcpListen is the TCP state of a listening socket (TCP_LISTEN).
const tcpListen = 10

// DiagInode asks the kernel (NETLINK_SOCK_DIAG: one exact lookup rather
// than a walk of /proc/net/tcp, which holds every TIME_WAIT socket of a
// busy host) for the inode of the TCP socket whose local end is local
// and whose remote end is remote: 0 when there is none or no process
// holds it yet. An error means the lookup itself failed (no sock_diag on
// this kernel, say), not that the socket is missing.
func DiagInode(local, remote netip.AddrPort) (uint64, error) {
	req, err := diagRequest(local, remote)
	if err != nil {
		return 0, err
	}
	reply, err := diagExchange(req)
	if err != nil {
		return 0, err
	}
	return ParseDiagReply(reply, local, remote)
}

// diagRequest builds the SOCK_DIAG_BY_FAMILY request for one TCP
// connection: struct nlmsghdr, then struct inet_diag_req_v2. IPv4-mapped
// IPv6 addresses on both ends are asked for as IPv4.
func diagRequest(local, remote netip.AddrPort) ([]byte, error) {
	req := make([]byte, nlmsgHeaderLen+diagReqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], 1)
	body := req[nlmsgHeaderLen:]
	la, ra := local.Addr(), remote.Addr()
	if la.Is4In6() && ra.Is4In6() {
		la, ra = la.Unmap(), ra.Unmap()
	}
	switch {
	case la.Is4() && ra.Is4():
		body[0] = unix.AF_INET
	case la.Is6() && ra.Is6():
		body[0] = unix.AF_INET6
	default:
		return nil, fmt.Errorf("sock_diag: mixed or invalid address families %s and %s", local, remote)
	}
	body[1] = unix.IPPROTO_TCP
	ne.PutUint32(body[4:], 0xffffffff) // every state
	id := body[8:]                     // struct inet_diag_sockid
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	if la.Is4() {
		la4, ra4 := la.As4(), ra.As4()
		copy(id[4:], la4[:])
		copy(id[20:], ra4[:])
	} else {
		la16, ra16 := la.As16(), ra.As16()
		copy(id[4:], la16[:])
		copy(id[20:], ra16[:])
	}
	ne.PutUint32(id[40:], 0xffffffff) // INET_DIAG_NOCOOKIE
	ne.PutUint32(id[44:], 0xffffffff)
	return req, nil
}

// diagExchange sends req on a NETLINK_SOCK_DIAG socket and returns the
// reply, waiting at most a second for it.
func diagExchange(req []byte) ([]byte, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(time.Second.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("sock_diag timeout: %w", err)
	}
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag request: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return nil, fmt.Errorf("sock_diag reply: %w", err)
	}
	return buf[:n], nil
}

// ParseDiagReply parses the kernel's reply to the sock_diag request for
// the connection from local to remote (see DiagInode): the socket's inode,
// 0 when the kernel knows no such connection (ENOENT) or answered with
// another socket (its lookup falls back to the listening socket when no
// connection matches). A malformed reply, or an error other than ENOENT,
// is an error.
func ParseDiagReply(b []byte, local, remote netip.AddrPort) (uint64, error) {
	if len(b) < nlmsgHeaderLen {
		return 0, fmt.Errorf("sock_diag reply of %d bytes", len(b))
	}
	ne := binary.NativeEndian
	l := ne.Uint32(b[0:])
	if l < nlmsgHeaderLen || uint64(l) > uint64(len(b)) {
		return 0, fmt.Errorf("sock_diag reply of %d bytes says it has %d", len(b), l)
	}
	b = b[:l]
	switch typ := ne.Uint16(b[4:]); typ {
	case unix.NLMSG_ERROR:
		if len(b) < nlmsgHeaderLen+4 {
			return 0, fmt.Errorf("sock_diag error reply of %d bytes", len(b))
		}
		errno := unix.Errno(-int32(ne.Uint32(b[nlmsgHeaderLen:])))
		if errno == unix.ENOENT {
			return 0, nil // no such connection (any more)
		}
		return 0, fmt.Errorf("sock_diag: %w", errno)
	case unix.SOCK_DIAG_BY_FAMILY:
		// struct inet_diag_msg: idiag_state at offset 1, the ports at 4
		// and 6 (network byte order), idiag_inode at 68.
		msg := b[nlmsgHeaderLen:]
		if len(msg) < diagMsgLen {
			return 0, fmt.Errorf("sock_diag message of %d bytes", len(msg))
		}
		if msg[1] == tcpListen || binary.BigEndian.Uint16(msg[4:]) != local.Port() || binary.BigEndian.Uint16(msg[6:]) != remote.Port() {
			return 0, nil
		}
		return uint64(ne.Uint32(msg[68:])), nil
	default:
		return 0, fmt.Errorf("sock_diag reply of type %d", typ)
	}
}
