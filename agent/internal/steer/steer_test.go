package steer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// open returns a Steerer, or skips when this kernel lacks sk_lookup or
// BPF: the only case where the tests cannot run. Not being root is no
// such case when the tests run as root, and is a failure otherwise
// reported as what it is.
func open(t *testing.T) *Steerer {
	t.Helper()
	s, err := Open()
	if errors.Is(err, ErrUnsupported) && os.Geteuid() != 0 {
		t.Skipf("not root: %v", err)
	}
	if err != nil {
		if _, statErr := os.Stat("/proc/sys/net/core/bpf_jit_enable"); os.IsNotExist(statErr) {
			t.Skipf("this kernel has no BPF: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// server is a listening socket on an ephemeral loopback port that
// answers every connection with its name and keeps it open until the
// test ends.
type server struct {
	name string
	ln   *net.TCPListener
	fd   int
	done chan struct{}
	// conns receives each accepted connection.
	conns chan net.Conn
}

func newServer(t *testing.T, name string) *server {
	t.Helper()
	// Plain TCP: a sockmap takes no MPTCP socket, and Go listens with
	// MPTCP by default since 1.24.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := ln.(*net.TCPListener)
	rc, err := tl.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{name: name, ln: tl, done: make(chan struct{}), conns: make(chan net.Conn, 100)}
	rc.Control(func(fd uintptr) { s.fd = int(fd) })
	go func() {
		defer close(s.done)
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, name+"\n")
			s.conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-s.done
		close(s.conns)
		for c := range s.conns {
			c.Close()
		}
	})
	return s
}

// freePort returns a loopback port nothing listens on.
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// dial connects to 127.0.0.1:port and returns the connection and the
// name of the server that answered.
func dial(t *testing.T, port uint16) (net.Conn, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp4", "127.0.0.1:"+strconv.Itoa(int(port)), 5*time.Second)
	if err != nil {
		t.Fatalf("dial port %d: %v", port, err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		c.Close()
		t.Fatalf("read from port %d: %v", port, err)
	}
	return c, string(buf[:n-1])
}

// TestSteerer_SwitchMovesNewConnections ensures a connection to a public
// port nothing listens on lands on the socket the group names; that
// pointing the group at another socket moves new connections there;
// that the first socket keeps the connection it accepted (it still
// talks on it); and that removing the group leaves the port to the
// kernel (refused: nothing listens on it).
func TestSteerer_SwitchMovesNewConnections(t *testing.T) {
	s := open(t)
	old, next := newServer(t, "old"), newServer(t, "new")
	public := freePort(t)

	if err := s.Set("app/web", []uint16{public}, []int{old.fd}); err != nil {
		t.Fatal(err)
	}
	c1, got := dial(t, public)
	defer c1.Close()
	if got != "old" {
		t.Fatalf("first connection answered by %q, want old", got)
	}
	accepted := <-old.conns

	if err := s.Set("app/web", []uint16{public}, []int{next.fd}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		c, got := dial(t, public)
		c.Close()
		if got != "new" {
			t.Fatalf("connection %d after the switch answered by %q, want new", i, got)
		}
	}
	// The old socket's established connection is untouched.
	if _, err := io.WriteString(accepted, "still here\n"); err != nil {
		t.Fatalf("old server writes on its connection: %v", err)
	}
	buf := make([]byte, 64)
	n, err := c1.Read(buf)
	if err != nil || string(buf[:n]) != "still here\n" {
		t.Fatalf("client of the old server reads %q, %v", buf[:n], err)
	}

	if err := s.Remove("app/web"); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp4", "127.0.0.1:"+strconv.Itoa(int(public)), 5*time.Second); err == nil {
		c.Close()
		t.Fatal("a connection to the public port was accepted after the group was removed")
	}
}

// TestSteerer_GroupSpreadsConnections ensures a group of three sockets
// shares the connections of two public ports between all three, and
// that a socket that closes is skipped: its connections go to the
// others, none is refused.
func TestSteerer_GroupSpreadsConnections(t *testing.T) {
	s := open(t)
	servers := []*server{newServer(t, "a"), newServer(t, "b"), newServer(t, "c")}
	p1, p2 := freePort(t), freePort(t)
	if err := s.Set("app/web", []uint16{p1, p2}, []int{servers[0].fd, servers[1].fd, servers[2].fd}); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for i := range 120 {
		c, got := dial(t, []uint16{p1, p2}[i%2])
		c.Close()
		seen[got]++
	}
	for _, name := range []string{"a", "b", "c"} {
		if seen[name] == 0 {
			t.Errorf("no connection reached %s: %v", name, seen)
		}
	}

	servers[1].ln.Close()
	<-servers[1].done
	seen = map[string]int{}
	for i := range 60 {
		c, got := dial(t, []uint16{p1, p2}[i%2])
		c.Close()
		seen[got]++
	}
	if seen["b"] != 0 || seen["a"] == 0 || seen["c"] == 0 {
		t.Errorf("after b closed: %v, want a and c only", seen)
	}
}

// TestSteerer_BadInput ensures a group larger than MaxGroup, a port that
// another group holds and a descriptor that is no socket are refused and
// change nothing.
func TestSteerer_BadInput(t *testing.T) {
	s := open(t)
	srv := newServer(t, "a")
	public := freePort(t)
	if err := s.Set("one", []uint16{public}, []int{srv.fd}); err != nil {
		t.Fatal(err)
	}
	if err := s.Set("two", []uint16{public}, []int{srv.fd}); err == nil {
		t.Error("two groups on one port were accepted")
	}
	many := make([]int, MaxGroup+1)
	for i := range many {
		many[i] = srv.fd
	}
	if err := s.Set("one", []uint16{public}, many); err == nil {
		t.Errorf("a group of %d sockets was accepted", len(many))
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := s.Set("one", []uint16{public}, []int{int(f.Fd())}); !errors.Is(err, ErrNotSteerable) {
		t.Errorf("a file that is no socket: %v, want ErrNotSteerable", err)
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(true)
	if mp, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0"); err == nil {
		defer mp.Close()
		rc, _ := mp.(*net.TCPListener).SyscallConn()
		var fd int
		rc.Control(func(s uintptr) { fd = int(s) })
		if err := s.Set("one", []uint16{public}, []int{fd}); !errors.Is(err, ErrNotSteerable) {
			t.Errorf("an MPTCP listener: %v, want ErrNotSteerable", err)
		} else {
			t.Log(err)
		}
	}
	c, got := dial(t, public)
	c.Close()
	if got != "a" || fmt.Sprint(s.Ports("one")) != fmt.Sprint([]uint16{public}) {
		t.Errorf("after refused changes: answered by %q, group ports %v", got, s.Ports("one"))
	}
}

// bpffs mounts a bpffs on a temporary directory for the test.
func bpffs(t *testing.T) string {
	t.Helper()
	open(t) // skips where there is no BPF
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount a bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// refused reports whether a connection to port is refused.
func refused(port uint16) bool {
	c, err := net.DialTimeout("tcp4", "127.0.0.1:"+strconv.Itoa(int(port)), 5*time.Second)
	if err == nil {
		c.Close()
	}
	return err != nil
}

// TestSteerer_PinnedOutlivesClose ensures a pinned Steerer keeps
// steering after Close (its process gone: a crash, an upgrade), that
// the next OpenPinned takes its groups over as orphans that still steer
// until a Set takes their port or DropOrphans drops them, and that Unpin
// then Close detaches the program.
func TestSteerer_PinnedOutlivesClose(t *testing.T) {
	pin := filepath.Join(bpffs(t), "berth")
	a, b := newServer(t, "a"), newServer(t, "b")
	p, q := freePort(t), freePort(t)

	s1, err := OpenPinned(pin)
	if err != nil {
		t.Fatal(err)
	}
	if !s1.Pinned() {
		t.Fatal("OpenPinned gave an unpinned Steerer")
	}
	if err := s1.Set("app/web", []uint16{p}, []int{a.fd}); err != nil {
		t.Fatal(err)
	}
	if err := s1.Set("app/other", []uint16{q}, []int{a.fd}); err != nil {
		t.Fatal(err)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	for _, port := range []uint16{p, q} {
		c, got := dial(t, port)
		c.Close()
		if got != "a" {
			t.Fatalf("port %d after Close answered by %q, want a: a pinned program steers on", port, got)
		}
	}

	s2, err := OpenPinned(pin)
	if err != nil {
		t.Fatal(err)
	}
	if len(s2.orphans) != 2 {
		t.Fatalf("orphans after taking over = %v, want ports %d and %d", s2.orphans, p, q)
	}
	if c, got := dial(t, p); got != "a" {
		t.Fatalf("orphan port answered by %q, want a", got)
	} else {
		c.Close()
	}
	if err := s2.Set("app/web", []uint16{p}, []int{b.fd}); err != nil {
		t.Fatal(err)
	}
	if c, got := dial(t, p); got != "b" {
		t.Fatalf("port taken over answered by %q, want b", got)
	} else {
		c.Close()
	}
	if _, ok := s2.orphans[p]; ok || len(s2.orphans) != 1 {
		t.Fatalf("orphans after the take-over = %v, want only %d", s2.orphans, q)
	}
	s2.DropOrphans()
	if !refused(q) {
		t.Fatalf("port %d still accepted after DropOrphans", q)
	}
	s2.Unpin()
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if !refused(p) {
		t.Fatalf("port %d still accepted after Unpin and Close", p)
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Fatalf("pin directory after Unpin: %v", err)
	}
}

// TestSteerer_PinnedNeedsBPFFS ensures OpenPinned refuses a directory
// that is not on a bpffs, and leaves nothing attached.
func TestSteerer_PinnedNeedsBPFFS(t *testing.T) {
	open(t)
	if _, err := OpenPinned(t.TempDir()); err == nil || !strings.Contains(err.Error(), "not on a bpffs") {
		t.Fatalf("OpenPinned on a plain directory = %v, want a bpffs error", err)
	}
}
