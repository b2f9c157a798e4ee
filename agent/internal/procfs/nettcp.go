package procfs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// TCPEntry is one socket of /proc/net/tcp or /proc/net/tcp6.
type TCPEntry struct {
	Local, Remote netip.AddrPort
	// Inode is the socket's inode: 0 while no process holds it (e.g. a
	// connection not accepted yet, or one in TIME_WAIT).
	Inode uint64
}

// ParseNetTCP parses the table of /proc/net/tcp or /proc/net/tcp6: a
// header line, then one socket a line, both ends of the same family.
// Blank lines are skipped; any other malformed line is an error naming
// it.
func ParseNetTCP(r io.Reader) ([]TCPEntry, error) {
	var out []TCPEntry
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
		if local.Addr().BitLen() != remote.Addr().BitLen() {
			return nil, fmt.Errorf("malformed /proc/net/tcp line %q: IPv4 and IPv6 addresses mixed", sc.Text())
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("malformed /proc/net/tcp inode %q", f[9])
		}
		out = append(out, TCPEntry{Local: local, Remote: remote, Inode: inode})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read /proc/net/tcp: %w", err)
	}
	return out, nil
}

// parseHexAddrPort parses "0100007F:1F90" (IPv4) or a 32-digit IPv6
// address and a port. The kernel prints the address as 32-bit words in
// host byte order and the port as a 4-digit hex number.
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

// netTCPFiles are the socket tables AcceptedInode searches.
var netTCPFiles = []string{"/proc/net/tcp", "/proc/net/tcp6"}

// AcceptedInode returns the inode of the socket the server on port holds
// for the connection from client, searching /proc/net/tcp and tcp6: 0
// when no such entry exists or no process holds it yet. DiagInode finds
// the same in one lookup; this is for kernels without sock_diag.
func AcceptedInode(port int, client netip.AddrPort) (uint64, error) {
	want := netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
	for _, name := range netTCPFiles {
		b, err := os.ReadFile(name)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6
		}
		if err != nil {
			return 0, err
		}
		entries, err := ParseNetTCP(bytes.NewReader(b))
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
