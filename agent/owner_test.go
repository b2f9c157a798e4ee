package agent

import (
	"context"
	"net"
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
