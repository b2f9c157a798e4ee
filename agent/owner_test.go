package agent

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/health"
)

// TestParseProcNetTCP ensures the socket tables of /proc/net/tcp and
// /proc/net/tcp6 are read right (addresses are 32-bit words in host byte
// order, little-endian on the machines berth runs on) and that a
// malformed line is an error naming the bad value.
func TestParseProcNetTCP(t *testing.T) {
	const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	for _, tc := range []struct {
		name, line string
		want       tcpEntry
		err        string
	}{
		{name: "ipv4 accepted", line: "   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1",
			want: tcpEntry{Local: netip.MustParseAddrPort("127.0.0.1:8080"), Remote: netip.MustParseAddrPort("127.0.0.1:54321"), Inode: 12345}},
		{name: "ipv4 listening", line: "   1: 00000000:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0",
			want: tcpEntry{Local: netip.MustParseAddrPort("0.0.0.0:5000"), Remote: netip.MustParseAddrPort("0.0.0.0:0"), Inode: 777}},
		{name: "ipv4 in accept queue", line: "   2: 0100007F:1F90 0100007F:D432 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1",
			want: tcpEntry{Local: netip.MustParseAddrPort("127.0.0.1:8080"), Remote: netip.MustParseAddrPort("127.0.0.1:54322")}},
		{name: "ipv6 mapped ipv4", line: "   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 424242 1 0000000000000000 20 4 30 10 -1",
			want: tcpEntry{Local: netip.MustParseAddrPort("[::ffff:127.0.0.1]:8080"), Remote: netip.MustParseAddrPort("[::ffff:127.0.0.1]:54321"), Inode: 424242}},
		{name: "ipv6 loopback", line: "   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:A000 01 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 20 4 30 10 -1",
			want: tcpEntry{Local: netip.MustParseAddrPort("[::1]:8080"), Remote: netip.MustParseAddrPort("[::1]:40960"), Inode: 99}},
		{name: "ipv6 global", line: "   2: B80D0120000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0",
			want: tcpEntry{Local: netip.MustParseAddrPort("[2001:db8::1]:80"), Remote: netip.MustParseAddrPort("[::]:0"), Inode: 5}},
		{name: "too few fields", line: "   0: 0100007F:1F90 0100007F:D431 01", err: "4 fields"},
		{name: "odd address length", line: "   0: 0100007:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 1 1", err: `"0100007:1F90"`},
		{name: "not hex", line: "   0: 0100007F:1F90 ZZ00007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 1 1", err: `"ZZ00007F:D431"`},
		{name: "bad port", line: "   0: 0100007F:1FXY 0100007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 1 1", err: `"0100007F:1FXY"`},
		{name: "bad inode", line: "   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 x1 1", err: `inode "x1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcNetTCP(strings.NewReader(header + tc.line + "\n"))
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
	if got, err := parseProcNetTCP(strings.NewReader(header)); err != nil || len(got) != 0 {
		t.Fatalf("parse of an empty table = %+v, %v", got, err)
	}
}

// startShared runs the hello binary on the listening socket f (fd 3) in a
// process group of its own, and returns the group's id. With fork, the
// group's leader is a shell that runs hello as its child (an app that
// forks its workers); without, the leader is hello itself.
func startShared(t *testing.T, f *os.File, fork bool, env ...string) int {
	t.Helper()
	bin := helloBinary(t)
	script := "LISTEN_PID=$$ exec ./hello"
	if fork {
		script = `sh -c 'LISTEN_PID=$$ exec ./hello'; exit 0`
	}
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = filepath.Dir(bin)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "LISTEN_FDS=1", "BERTH_APP=owner"}, env...)
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		syscall.Kill(-pgid, syscall.SIGKILL)
		cmd.Wait()
	})
	return pgid
}

// TestAttributedProbe runs two hello processes on one listening socket,
// one healthy and one answering 503 on /up, and ensures every probe is
// attributed to the process that answered it: a probe counted for the
// healthy one always got its 200, one counted for the failing one its
// 503, one the healthy one did not answer was the failing one's; a
// process group that holds no connection (a forking app's leader alone
// is not enough, so the group's workers are searched too) is never
// credited.
func TestAttributedProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	good := startShared(t, f, true)
	bad := startShared(t, f, false, "HELLO_FAIL_HEALTH=1")
	idle := exec.Command("sleep", "1000")
	idle.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	idle.ExtraFiles = []*os.File{f} // holds the listening socket, accepts nothing
	if err := idle.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idle.Process.Kill(); idle.Wait() })

	check := health.Check{HTTP: "/up", Timeout: 2 * time.Second}
	ctx := context.Background()
	var goodHits, badHits, goodMisses int
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; goodHits < 5 || badHits < 5 || goodMisses < 3; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("after %d probes: %d answered by the healthy process, %d by the failing one, %d not by the healthy one", i, goodHits, badHits, goodMisses)
		}
		pgid := good
		if i%2 == 1 {
			pgid = bad
		}
		r, reached := probeOnce(ctx, check, port, pgid)
		switch {
		case reached && pgid == good:
			goodHits++
			if !r.OK || !strings.Contains(r.Output, "200 OK") {
				t.Fatalf("probe credited to the healthy process got %q", r.Output)
			}
		case reached:
			badHits++
			if r.OK || !strings.Contains(r.Output, "503") {
				t.Fatalf("probe credited to the failing process got %q", r.Output)
			}
		case pgid == good && r.Output != "":
			goodMisses++
			if r.OK || !strings.Contains(r.Output, "503") {
				t.Fatalf("probe not credited to the healthy process got %q, want the failing one's 503", r.Output)
			}
		}
	}
	t.Logf("probes: %d credited to the healthy process, %d to the failing one, %d passed over", goodHits, badHits, goodMisses)

	// The retries of attributedProbe find each process.
	if r, reached := attributedProbe(ctx, check, port, good, 200, time.Millisecond); !reached || !r.OK {
		t.Errorf("attributed probe of the healthy process = %+v, reached %v", r, reached)
	}
	if r, reached := attributedProbe(ctx, check, port, bad, 200, time.Millisecond); !reached || r.OK {
		t.Errorf("attributed probe of the failing process = %+v, reached %v", r, reached)
	}
	// A group that accepts nothing is never credited, however often.
	if r, reached := attributedProbe(ctx, check, port, idle.Process.Pid, 20, time.Millisecond); reached {
		t.Errorf("a probe was credited to a process that accepts nothing: %+v", r)
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
			conn, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			srv, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
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
			if got, err := diagInode(server, client); err != nil || got != st.Ino {
				t.Errorf("sock_diag inode = %d, %v; want %d", got, err, st.Ino)
			}
			if got, err := acceptedInode(port, client); err != nil || got != st.Ino {
				t.Errorf("/proc/net/tcp inode = %d, %v; want %d", got, err, st.Ino)
			}
			gone := netip.AddrPortFrom(client.Addr(), client.Port()+1)
			if got, err := diagInode(server, gone); err != nil || got != 0 {
				t.Errorf("sock_diag inode of no connection = %d, %v; want 0", got, err)
			}
			if got, err := acceptedInode(port, gone); err != nil || got != 0 {
				t.Errorf("/proc/net/tcp inode of no connection = %d, %v; want 0", got, err)
			}
			if !pidHolds(os.Getpid(), "socket:["+strconv.FormatUint(st.Ino, 10)+"]") {
				t.Errorf("this process does not hold socket %d", st.Ino)
			}
		})
	}
}
