package procfs

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestParseStat ensures the fields after a command name holding
// spaces and parentheses are found, and malformed input (a negative
// process group, a state that is not one letter) is an error.
func TestParseStat(t *testing.T) {
	line := "1234 (we ird) (name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100 18446744073709551615"
	st, err := ParseStat([]byte(line))
	if err != nil || st.State != 'S' || st.PGID != 1234 || st.StartTime != 987654 {
		t.Fatalf("ParseStat = %+v, %v", st, err)
	}
	for _, bad := range []string{"", "1234 no paren S 1", "1 (x) S 1 2", "1 (x) S 1 notanumber 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 9",
		"1 (x) S 1 -5 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 9", "1 (x) 7 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 9", "1 (x) SS 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 9"} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q) accepted", bad)
		}
	}
	self, err := ReadStat(os.Getpid())
	if err != nil || self.PGID != syscall.Getpgrp() || self.StartTime == 0 {
		t.Fatalf("own stat = %+v, %v", self, err)
	}
}

// TestParseNetTCP ensures the socket tables of /proc/net/tcp and
// /proc/net/tcp6 are read right (addresses are 32-bit words in host byte
// order, little-endian on the machines berth runs on) and that a
// malformed line is an error naming the bad value.
func TestParseNetTCP(t *testing.T) {
	const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	for _, tc := range []struct {
		name, line string
		want       TCPEntry
		err        string
	}{
		{name: "ipv4 accepted", line: "   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1",
			want: TCPEntry{Local: netip.MustParseAddrPort("127.0.0.1:8080"), Remote: netip.MustParseAddrPort("127.0.0.1:54321"), Inode: 12345}},
		{name: "ipv4 listening", line: "   1: 00000000:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0",
			want: TCPEntry{Local: netip.MustParseAddrPort("0.0.0.0:5000"), Remote: netip.MustParseAddrPort("0.0.0.0:0"), Inode: 777}},
		{name: "ipv4 in accept queue", line: "   2: 0100007F:1F90 0100007F:D432 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1",
			want: TCPEntry{Local: netip.MustParseAddrPort("127.0.0.1:8080"), Remote: netip.MustParseAddrPort("127.0.0.1:54322")}},
		{name: "ipv6 mapped ipv4", line: "   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 424242 1 0000000000000000 20 4 30 10 -1",
			want: TCPEntry{Local: netip.MustParseAddrPort("[::ffff:127.0.0.1]:8080"), Remote: netip.MustParseAddrPort("[::ffff:127.0.0.1]:54321"), Inode: 424242}},
		{name: "ipv6 loopback", line: "   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:A000 01 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 20 4 30 10 -1",
			want: TCPEntry{Local: netip.MustParseAddrPort("[::1]:8080"), Remote: netip.MustParseAddrPort("[::1]:40960"), Inode: 99}},
		{name: "ipv6 global", line: "   2: B80D0120000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0",
			want: TCPEntry{Local: netip.MustParseAddrPort("[2001:db8::1]:80"), Remote: netip.MustParseAddrPort("[::]:0"), Inode: 5}},
		{name: "too few fields", line: "   0: 0100007F:1F90 0100007F:D431 01", err: "4 fields"},
		{name: "odd address length", line: "   0: 0100007:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 1 1", err: `"0100007:1F90"`},
		{name: "not hex", line: "   0: 0100007F:1F90 ZZ00007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 1 1", err: `"ZZ00007F:D431"`},
		{name: "bad port", line: "   0: 0100007F:1FXY 0100007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 1 1", err: `"0100007F:1FXY"`},
		{name: "mixed families", line: "   0: 00000000000000000000000001000000:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 1 1", err: "mixed"},
		{name: "bad inode", line: "   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 x1 1", err: `inode "x1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseNetTCP(strings.NewReader(header + tc.line + "\n"))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parse = %+v, %v; want an error saying %s", got, err, tc.err)
				}
				return
			}
			if err != nil || len(got) != 1 || got[0] != tc.want {
				t.Fatalf("parse = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	if got, err := ParseNetTCP(strings.NewReader(header)); err != nil || len(got) != 0 {
		t.Fatalf("parse of an empty table = %+v, %v", got, err)
	}
}

// TestSocketInodeLookups ensures both ways of finding the socket a
// server accepted for a connection (sock_diag, and the /proc/net/tcp and
// tcp6 tables) name the inode the server's fd really is, over IPv4 and
// over a dual-stack listener that sees IPv4-mapped addresses, and that a
// connection that does not exist has none.
func TestSocketInodeLookups(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "tcp" {
				addr = ":0"
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			conn, srv := dialAccept(t, ln, "tcp4", "127.0.0.1")
			var st syscall.Stat_t
			raw, err := srv.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			raw.Control(func(fd uintptr) { err = syscall.Fstat(int(fd), &st) })
			if err != nil {
				t.Fatal(err)
			}
			client := netip.MustParseAddrPort(conn.LocalAddr().String())
			server := netip.MustParseAddrPort(srv.LocalAddr().String())
			if got, err := DiagInode(server, client); err != nil || got != st.Ino {
				t.Errorf("sock_diag inode = %d, %v; want %d", got, err, st.Ino)
			}
			if got, err := AcceptedInode(port, client); err != nil || got != st.Ino {
				t.Errorf("/proc/net/tcp inode = %d, %v; want %d", got, err, st.Ino)
			}
			gone := netip.AddrPortFrom(client.Addr(), client.Port()+1)
			if got, err := DiagInode(server, gone); err != nil || got != 0 {
				t.Errorf("sock_diag inode of no connection = %d, %v; want 0", got, err)
			}
			if got, err := AcceptedInode(port, gone); err != nil || got != 0 {
				t.Errorf("/proc/net/tcp inode of no connection = %d, %v; want 0", got, err)
			}
			if !PIDHolds(os.Getpid(), st.Ino) || !GroupHolds(syscall.Getpgrp(), st.Ino) {
				t.Errorf("this process (or its group) does not hold socket %d", st.Ino)
			}
			if GroupHolds(syscall.Getpgrp(), 1<<40) || GroupHolds(0, st.Ino) {
				t.Errorf("a socket this process does not hold, or group 0, is held")
			}
		})
	}
}

// TestEnviron ensures a process's environment is read whole, one
// variable a string.
func TestEnviron(t *testing.T) {
	env, err := Environ(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want := "PATH=" + os.Getenv("PATH")
	found := false
	for _, kv := range env {
		found = found || kv == want
		if kv == "" || !strings.Contains(kv, "=") {
			t.Errorf("entry %q is not KEY=value", kv)
		}
	}
	if !found {
		t.Errorf("environment %q lacks %q", env, want)
	}
}

// TestParseDiagReply ensures the kernel's replies (real ones captured in
// testdata/seed/diag, and built ones) are read right: the inode of an
// accepted connection, none for the listening socket the kernel falls
// back to or for ENOENT, and an error for any other error or a short or
// lying message.
func TestParseDiagReply(t *testing.T) {
	ap := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port) }
	for _, name := range []string{"tcp4-accepted", "tcp6-accepted", "tcp4-none", "tcp6-listener"} {
		b, err := os.ReadFile("testdata/seed/diag/" + name)
		if err != nil {
			t.Fatal(err)
		}
		msg := b[nlmsgHeaderLen:]
		local, remote := ap(binary.BigEndian.Uint16(msg[4:])), ap(binary.BigEndian.Uint16(msg[6:]))
		got, err := ParseDiagReply(b, local, remote)
		if accepted := strings.HasSuffix(name, "accepted"); err != nil || (got != 0) != accepted {
			t.Errorf("%s: inode %d, %v; want one: %v", name, got, err, accepted)
		}
	}
	errReply := func(errno syscall.Errno) []byte {
		b := make([]byte, nlmsgHeaderLen+4)
		binary.NativeEndian.PutUint32(b, uint32(len(b)))
		binary.NativeEndian.PutUint16(b[4:], unix.NLMSG_ERROR)
		binary.NativeEndian.PutUint32(b[nlmsgHeaderLen:], uint32(-int32(errno)))
		return b
	}
	if got, err := ParseDiagReply(errReply(syscall.ENOENT), ap(1), ap(2)); got != 0 || err != nil {
		t.Errorf("ENOENT = %d, %v; want none", got, err)
	}
	if _, err := ParseDiagReply(errReply(syscall.EPERM), ap(1), ap(2)); !errors.Is(err, syscall.EPERM) {
		t.Errorf("EPERM = %v", err)
	}
	if got, err := ParseDiagReply(diagReply(1, 80, 9000, 42), ap(80), ap(9000)); got != 42 || err != nil {
		t.Errorf("built reply = %d, %v; want 42", got, err)
	}
	if got, err := ParseDiagReply(diagReply(1, 80, 9000, 42), ap(80), ap(9001)); got != 0 || err != nil {
		t.Errorf("reply for other ports = %d, %v; want none", got, err)
	}
	long := diagReply(1, 80, 9000, 42)
	binary.NativeEndian.PutUint32(long, uint32(len(long)+1))
	for name, b := range map[string][]byte{"empty": nil, "short": diagReply(1, 80, 9000, 42)[:40], "length past the end": long} {
		if got, err := ParseDiagReply(b, ap(80), ap(9000)); err == nil {
			t.Errorf("%s reply = %d, want an error", name, got)
		}
	}
}

// dialAccept dials ln from host over network and accepts the
// connection: the client's and the server's ends, closed when the test
// ends.
func dialAccept(t *testing.T, ln net.Listener, network, host string) (client, server net.Conn) {
	t.Helper()
	port := ln.Addr().(*net.TCPAddr).Port
	conn, err := net.Dial(network, net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return conn, srv
}

func TestParseRSS(t *testing.T) {
	rss, anon, err := ParseRSS([]byte("Name:\tberth\nVmRSS:\t   14380 kB\nRssAnon:\t    4708 kB\nRssFile:\t    9672 kB\n"))
	if err != nil || rss != 14380<<10 || anon != 4708<<10 {
		t.Fatalf("ParseRSS = %d, %d, %v", rss, anon, err)
	}
	for _, bad := range []string{"", "VmRSS:\t12 kB\n", "VmRSS:\tx kB\nRssAnon:\t1 kB\n", "VmRSS:\t12 MB\nRssAnon:\t1 kB\n", "VmRSS:\t99999999999999999 kB\nRssAnon:\t1 kB\n"} {
		if _, _, err := ParseRSS([]byte(bad)); err == nil {
			t.Errorf("ParseRSS(%q) gives no error", bad)
		}
	}
	rss, anon, err = SelfRSS()
	if err != nil || rss == 0 || anon == 0 || anon > rss {
		t.Fatalf("SelfRSS = %d, %d, %v", rss, anon, err)
	}
}
