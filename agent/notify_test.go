package agent

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestAgent_NotifiesSystemd ensures the agent tells systemd READY=1 only
// once the apps' processes run and the socket serves, reports counts in
// STATUS=, and says STOPPING=1 when it stops.
func TestAgent_NotifiesSystemd(t *testing.T) {
	cfg := testConfig(dataDir(t))
	cfg.NoSocket = false
	first := startAgent(t, cfg)
	first.mustDeploy(t, "hello", webApp(t, ""))
	if err := first.stop(); err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	ta := startAgent(t, cfg)

	read := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
	var msgs []string
	for !strings.Contains(strings.Join(msgs, "\n"), "READY=1") {
		msgs = append(msgs, read())
	}
	// READY=1 came after the app was started and the socket served.
	if n := len(appProcs(t, cfg.DataDir, "hello")); n != 1 {
		t.Fatalf("READY=1 with %d processes of hello running", n)
	}
	c, err := net.Dial("unix", cfg.SocketPath)
	if err != nil {
		t.Fatalf("READY=1 before the socket serves: %v", err)
	}
	c.Close()
	for !strings.Contains(strings.Join(msgs, "\n"), "STATUS=") {
		msgs = append(msgs, read())
	}
	if !strings.Contains(strings.Join(msgs, "\n"), "STATUS=1 apps, 1 of 1 processes running") {
		t.Errorf("status lines = %q", msgs)
	}
	// The watchdog is fed while the main loop answers.
	for strings.Count(strings.Join(msgs, "\n"), "WATCHDOG=1") < 2 {
		msgs = append(msgs, read())
	}
	if err := ta.stop(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(strings.Join(msgs, "\n"), "STOPPING=1") {
		msgs = append(msgs, read())
	}
}
