package systemd

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// startActivated starts the test binary as a socket-activated child: the
// given file is its fd 3 and LISTEN_PID is the child's own pid, set by a
// shell that then execs the binary (what systemd-socket-activate does).
func startActivated(t *testing.T, f *os.File, pid string) (string, error) {
	t.Helper()
	if pid == "" {
		pid = "$$"
	}
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=`+pid+` exec "$0"`, os.Args[0])
	cmd.Env = helperEnviron("listeners", "LISTEN_FDS=1", "LISTEN_FDNAMES=berth")
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// helperListeners takes the inherited listener, checks that the
// activation variables are gone, and answers one connection.
func helperListeners() error {
	lns, err := Listeners()
	if err != nil {
		return err
	}
	for _, k := range []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} {
		if v, ok := os.LookupEnv(k); ok {
			return fmt.Errorf("%s=%q still set", k, v)
		}
	}
	fmt.Printf("listeners %d\n", len(lns))
	for _, ln := range lns {
		conn, err := ln.Accept()
		if err != nil {
			return err
		}
		fmt.Fprintf(conn, "hello from %d\n", os.Getpid())
		conn.Close()
		ln.Close()
	}
	return nil
}

// TestListeners_Inherited ensures a listening socket passed as fd 3 with
// LISTEN_FDS=1 is returned as a working listener, and the variables are
// unset.
func TestListeners_Inherited(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := startActivated(t, f, "")
		done <- result{out, err}
	}()
	// The child accepts on its copy of the socket: connect through ours.
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil || !strings.HasPrefix(line, "hello from ") {
		t.Fatalf("read %q, %v; want the child's greeting", line, err)
	}
	r := <-done
	if r.err != nil || !strings.Contains(r.out, "listeners 1") {
		t.Fatalf("child: %v\n%s", r.err, r.out)
	}
}

// TestListeners_OtherPID ensures fds meant for another process (LISTEN_PID
// not ours) are not taken.
func TestListeners_OtherPID(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := startActivated(t, f, "1")
	if err != nil || !strings.Contains(out, "listeners 0") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// TestListeners_NotASocket ensures an fd that is not a listening socket is
// an error naming the fd.
func TestListeners_NotASocket(t *testing.T) {
	f, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := startActivated(t, f, "")
	if err == nil || !strings.Contains(out, "fd 3 (berth) is not a listening socket") {
		t.Fatalf("child: err %v, output:\n%s", err, out)
	}
}

// TestListeners_None ensures no LISTEN_FDS means no listeners and no error.
func TestListeners_None(t *testing.T) {
	t.Setenv("LISTEN_FDS", "")
	t.Setenv("LISTEN_PID", "")
	lns, err := Listeners()
	if lns != nil || err != nil {
		t.Fatalf("Listeners = %v, %v; want nil, nil", lns, err)
	}
}
