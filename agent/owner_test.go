package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/health"
)

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
		r := health.Probe(ctx, check, health.Target{Port: port, Dial: attributedDial(pgid)})
		reached := !r.Unreached
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
	if r := attributedProbe(ctx, check, port, good, 200, time.Millisecond); r.Unreached || !r.OK {
		t.Errorf("attributed probe of the healthy process = %+v", r)
	}
	if r := attributedProbe(ctx, check, port, bad, 200, time.Millisecond); r.Unreached || r.OK {
		t.Errorf("attributed probe of the failing process = %+v", r)
	}
	// A group that accepts nothing is never credited, however often.
	if r := attributedProbe(ctx, check, port, idle.Process.Pid, 20, time.Millisecond); !r.Unreached || r.OK {
		t.Errorf("a probe was credited to a process that accepts nothing: %+v", r)
	}
}

// TestAttributedDial ensures the health package's ordinary HTTP probe,
// given attributedDial, counts an answer only when the process group
// asked for accepted the connection: a hello process in a group of its
// own on one loopback port, and an HTTP server in this test process on
// another; each is reached through its own group and unreached (not OK,
// whatever it answered) through the other's.
func TestAttributedDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	childPort := ln.Addr().(*net.TCPAddr).Port
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	child := startShared(t, f, false)

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "this test process")
	}))
	defer srv.Close()
	ownPort := srv.Listener.Addr().(*net.TCPAddr).Port
	own := syscall.Getpgrp()

	check := health.Check{HTTP: "/up", Timeout: 5 * time.Second}
	probe := func(port, pgid int) health.Result {
		return health.Probe(context.Background(), check, health.Target{Port: port, Dial: attributedDial(pgid)})
	}
	// The child may still be starting: its socket queues the connection
	// until it accepts, within the timeout.
	if r := probe(childPort, child); r.Unreached || !r.OK {
		t.Errorf("probe of the child through its group = %+v, want reached and OK", r)
	}
	if r := probe(childPort, own); !r.Unreached || r.OK || !strings.Contains(r.Output, "200 OK") {
		t.Errorf("probe of the child through this process's group = %+v, want unreached with the child's answer", r)
	}
	if r := probe(ownPort, own); r.Unreached || !r.OK || !strings.Contains(r.Output, "this test process") {
		t.Errorf("probe of this process through its group = %+v, want reached and OK", r)
	}
	if r := probe(ownPort, child); !r.Unreached || r.OK {
		t.Errorf("probe of this process through the child's group = %+v, want unreached", r)
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	if r := probe(closedPort, child); !r.Unreached || r.OK {
		t.Errorf("probe of a port nothing listens on = %+v, want unreached", r)
	}
}
