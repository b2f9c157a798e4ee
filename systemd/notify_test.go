package systemd

import (
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// notifySocket listens on a real unixgram socket and points NOTIFY_SOCKET
// at it, as systemd does for a Type=notify service.
func notifySocket(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return conn
}

// recv reads one notification, failing the test after a few seconds.
func recv(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("read notification: %v", err)
	}
	return string(buf[:n])
}

// TestNotify_States ensures each helper sends the exact assignment systemd
// expects on the notification socket.
func TestNotify_States(t *testing.T) {
	conn := notifySocket(t)
	for _, tc := range []struct {
		send func() error
		want string
	}{
		{Ready, "READY=1"},
		{Stopping, "STOPPING=1"},
		{func() error { return Status("2 apps, 3 processes running") }, "STATUS=2 apps, 3 processes running"},
	} {
		if err := tc.send(); err != nil {
			t.Fatalf("send %q: %v", tc.want, err)
		}
		if got := recv(t, conn); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	sent, err := Notify("EXTEND_TIMEOUT_USEC=1000000")
	if !sent || err != nil {
		t.Fatalf("Notify = %v, %v; want true, nil", sent, err)
	}
	if got := recv(t, conn); got != "EXTEND_TIMEOUT_USEC=1000000" {
		t.Errorf("got %q", got)
	}
}

// TestNotify_Reloading ensures RELOADING=1 carries MONOTONIC_USEC, the
// CLOCK_MONOTONIC time of the reload that systemd 253+ requires.
func TestNotify_Reloading(t *testing.T) {
	conn := notifySocket(t)
	var before, after unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &before)
	if err := Reloading(); err != nil {
		t.Fatal(err)
	}
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &after)
	got := recv(t, conn)
	lines := strings.Split(got, "\n")
	if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("got %q, want RELOADING=1 and MONOTONIC_USEC", got)
	}
	usec, err := strconv.ParseInt(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if usec < before.Nano()/1000 || usec > after.Nano()/1000 {
		t.Errorf("MONOTONIC_USEC=%d not within [%d, %d]", usec, before.Nano()/1000, after.Nano()/1000)
	}
}

// TestNotify_NoSocket ensures that without NOTIFY_SOCKET nothing is sent
// and nothing fails (the agent run by hand).
func TestNotify_NoSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	sent, err := Notify("READY=1")
	if sent || err != nil {
		t.Fatalf("Notify = %v, %v; want false, nil", sent, err)
	}
	if err := Ready(); err != nil {
		t.Fatal(err)
	}
}

// TestNotify_DeadSocket ensures a NOTIFY_SOCKET nobody listens on is an
// error that names the notification.
func TestNotify_DeadSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone.sock"))
	_, err := Notify("READY=1")
	if err == nil || !strings.Contains(err.Error(), "READY=1") {
		t.Fatalf("err = %v, want an error naming READY=1", err)
	}
}

// TestStatus_RefusesLineBreak ensures a status cannot smuggle another
// assignment (such as READY=1) into the message, and nothing is sent.
func TestStatus_RefusesLineBreak(t *testing.T) {
	conn := notifySocket(t)
	err := Status("ok\nREADY=1")
	if !errors.Is(err, ErrInvalidNotify) || !strings.Contains(err.Error(), `"ok\nREADY=1"`) {
		t.Fatalf("err = %v, want ErrInvalidNotify naming the status", err)
	}
	if err := Status("after"); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, conn); got != "STATUS=after" {
		t.Fatalf("first message = %q; the refused status was sent", got)
	}
}
