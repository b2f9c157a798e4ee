package procfs

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The seed corpora in testdata/seed are real data of a Linux machine;
// `go test -run TestCaptureSeeds -capture` reads them anew from this one.
var capture = flag.Bool("capture", false, "write the fuzz seeds in testdata/seed from this machine's /proc and sock_diag")

// seeds returns the files of testdata/seed/<dir>.
func seeds(f *testing.F, dir string) [][]byte {
	f.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "seed", dir, "*"))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no seeds in testdata/seed/%s: %v", dir, err)
	}
	var out [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzParseStat ensures ParseStat never panics, that what it accepts has
// a state letter and a process group that is not negative, and that the
// fields it read are read back the same from a stat line written with
// them after any command name.
func FuzzParseStat(f *testing.F) {
	for _, b := range seeds(f, "stat") {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseStat(b)
		if err != nil {
			return
		}
		if !isLetter(st.State) || st.PGID < 0 {
			t.Fatalf("ParseStat(%q) = %+v: state or process group out of bounds", b, st)
		}
		i := bytes.LastIndexByte(b, ')')
		line := formatStat(string(b[:i+1]), st)
		again, err := ParseStat([]byte(line))
		if err != nil || again != st {
			t.Fatalf("ParseStat(%q) = %+v, %v; want %+v", line, again, err, st)
		}
	})
}

// formatStat writes a /proc/<pid>/stat line with st's fields after head
// (the pid and the command name in parentheses).
func formatStat(head string, st Stat) string {
	f := make([]string, 50)
	for i := range f {
		f[i] = "0"
	}
	f[0], f[2], f[19] = string(st.State), strconv.Itoa(st.PGID), strconv.FormatUint(st.StartTime, 10)
	return head + " " + strings.Join(f, " ") + "\n"
}

// FuzzParseNetTCP ensures ParseNetTCP never panics, that every entry it
// returns has valid IPv4 or IPv6 addresses of the same family on both
// ends, and that the entries written back as a table parse the same.
func FuzzParseNetTCP(f *testing.F) {
	for _, b := range seeds(f, "nettcp") {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := ParseNetTCP(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, e := range entries {
			l, r := e.Local.Addr(), e.Remote.Addr()
			if !l.IsValid() || !r.IsValid() || l.Zone() != "" || l.BitLen() != r.BitLen() {
				t.Fatalf("entry %+v: addresses out of bounds", e)
			}
		}
		table := formatNetTCP(entries)
		again, err := ParseNetTCP(strings.NewReader(table))
		if err != nil || len(again) != len(entries) {
			t.Fatalf("ParseNetTCP(%q) = %+v, %v; want %+v", table, again, err, entries)
		}
		for i := range entries {
			if again[i] != entries[i] {
				t.Fatalf("entry %d read back as %+v, want %+v", i, again[i], entries[i])
			}
		}
	})
}

// formatNetTCP writes entries as the kernel writes /proc/net/tcp.
func formatNetTCP(entries []TCPEntry) string {
	var b strings.Builder
	b.WriteString("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
	for i, e := range entries {
		fmt.Fprintf(&b, "%4d: %s %s 01 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000000000 20 4 30 10 -1\n",
			i, formatHexAddrPort(e.Local), formatHexAddrPort(e.Remote), e.Inode)
	}
	return b.String()
}

// formatHexAddrPort is the inverse of parseHexAddrPort.
func formatHexAddrPort(ap netip.AddrPort) string {
	raw := ap.Addr().AsSlice()
	out := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(out[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	return fmt.Sprintf("%s:%04X", strings.ToUpper(hex.EncodeToString(out)), ap.Port())
}

// FuzzParseDiag ensures ParseDiagReply never panics, that it finds an
// inode only in a SOCK_DIAG_BY_FAMILY message long enough to hold one,
// not of a listening socket and with the ports asked for, and that a
// reply built from that inode and those ports parses to the same inode.
func FuzzParseDiag(f *testing.F) {
	for _, b := range seeds(f, "diag") {
		// The seeds were asked for with the ports in the message itself.
		local, remote := uint16(0), uint16(0)
		if len(b) >= nlmsgHeaderLen+8 {
			local = binary.BigEndian.Uint16(b[nlmsgHeaderLen+4:])
			remote = binary.BigEndian.Uint16(b[nlmsgHeaderLen+6:])
		}
		f.Add(b, local, remote)
	}
	f.Fuzz(func(t *testing.T, b []byte, lport, rport uint16) {
		local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), lport)
		remote := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), rport)
		inode, err := ParseDiagReply(b, local, remote)
		if err != nil || inode == 0 {
			return
		}
		ne := binary.NativeEndian
		msg := b[nlmsgHeaderLen:]
		if ne.Uint16(b[4:]) != unix.SOCK_DIAG_BY_FAMILY || int(ne.Uint32(b)) > len(b) || len(msg) < diagMsgLen ||
			msg[1] == tcpListen || binary.BigEndian.Uint16(msg[4:]) != lport || binary.BigEndian.Uint16(msg[6:]) != rport {
			t.Fatalf("ParseDiagReply(%x) = inode %d from a message that names none", b, inode)
		}
		reply := diagReply(1, lport, rport, uint32(inode))
		if again, err := ParseDiagReply(reply, local, remote); err != nil || again != inode {
			t.Fatalf("ParseDiagReply(%x) = %d, %v; want %d", reply, again, err, inode)
		}
	})
}

// diagReply builds a SOCK_DIAG_BY_FAMILY reply for one IPv4 socket.
func diagReply(state byte, lport, rport uint16, inode uint32) []byte {
	b := make([]byte, nlmsgHeaderLen+diagMsgLen)
	ne := binary.NativeEndian
	ne.PutUint32(b, uint32(len(b)))
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	msg := b[nlmsgHeaderLen:]
	msg[0], msg[1] = unix.AF_INET, state
	binary.BigEndian.PutUint16(msg[4:], lport)
	binary.BigEndian.PutUint16(msg[6:], rport)
	ne.PutUint32(msg[68:], inode)
	return b
}

// TestCaptureSeeds writes the seed corpora from this machine (with
// -capture): the stat of this process, of init and of a kernel thread;
// the head of /proc/net/tcp and tcp6; and sock_diag replies for an
// accepted connection, for one that does not exist, and for the
// listening socket.
func TestCaptureSeeds(t *testing.T) {
	if !*capture {
		t.Skip("run with -capture to write testdata/seed")
	}
	write := func(dir, name string, b []byte) {
		t.Helper()
		d := filepath.Join("testdata", "seed", dir)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, pid := range map[string]int{"self": os.Getpid(), "init": 1, "kthreadd": 2} {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil {
			write("stat", name, b)
		}
	}

	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, network := range []string{"tcp4", "tcp6"} {
		host := map[string]string{"tcp4": "127.0.0.1", "tcp6": "::1"}[network]
		conn, srv := dialAccept(t, ln, network, host)
		client := netip.MustParseAddrPort(conn.LocalAddr().String())
		server := netip.MustParseAddrPort(srv.LocalAddr().String())
		for name, remote := range map[string]netip.AddrPort{
			"accepted": client,
			"none":     netip.AddrPortFrom(client.Addr(), client.Port()+1),
			"listener": netip.AddrPortFrom(client.Addr(), 0),
		} {
			req, err := diagRequest(server, remote)
			if err != nil {
				t.Fatal(err)
			}
			reply, err := diagExchange(req)
			if err != nil {
				t.Fatal(err)
			}
			write("diag", network+"-"+name, reply)
		}
	}
	for _, name := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile("/proc/net/" + name)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitAfter(string(b), "\n")
		write("nettcp", name, []byte(strings.Join(lines[:min(len(lines), 12)], "")))
	}
}
