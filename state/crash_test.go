package state

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestStore_CrashKill9 runs a child process (the test binary in the
// crash-writer helper mode) that creates, activates and logs releases in a
// loop, and SIGKILLs it at a random moment, again and again on the same
// file. After each kill the database must open, pass bbolt's consistency
// check, hold versions 1..N without a gap, hold every release and event
// the child reported as committed (fsync before the report), and have
// exactly one active release, the one the app record points at. The next
// child must carry on at N+1: nothing committed is lost or reused.
func TestStore_CrashKill9(t *testing.T) {
	const kills = 24
	path := filepath.Join(t.TempDir(), "berth.db")
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	verified := 0   // versions present after the previous kill
	unreported := 0 // rounds killed between a commit and its report
	for round := range kills {
		cmd := helperCommand("crash-writer", path)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill at a random moment after the first commit: mostly in the
		// middle of a transaction or its fsync. Every fourth round counts
		// from the start instead, so some kills land in start-up and Open.
		delay := time.Duration(rng.IntN(25_000)) * time.Microsecond
		var timer *time.Timer
		if round%4 == 3 {
			timer = time.AfterFunc(delay, func() { cmd.Process.Signal(syscall.SIGKILL) })
		}
		var created, activated int
		var event uint64
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var n uint64
			switch line := sc.Text(); {
			case scan(line, "created %d", &n):
				if created == 0 && int(n) != verified+1 {
					t.Errorf("round %d: first new version %d, want %d (after %d verified)", round, n, verified+1, verified)
				} else if created != 0 && int(n) != created+1 {
					t.Errorf("round %d: version %d after %d", round, n, created)
				}
				created = int(n)
			case scan(line, "activated %d", &n):
				activated = int(n)
			case scan(line, "event %d", &n):
				event = n
			default:
				t.Fatalf("round %d: child said %q", round, line)
			}
			if timer == nil {
				timer = time.AfterFunc(delay, func() { cmd.Process.Signal(syscall.SIGKILL) })
			}
		}
		err = cmd.Wait()
		if timer != nil {
			timer.Stop()
		}
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child ended with %v, not SIGKILL; stderr:\n%s", round, err, stderr.Bytes())
		}
		n := verifyAfterCrash(t, round, path, created, activated, event)
		if n > max(created, verified) {
			unreported++
		}
		verified = n
	}
	t.Logf("%d kills, %d releases survived, %d kills landed between a commit and its report", kills, verified, unreported)
}

// scan reports whether line matches format exactly.
func scan(line, format string, n *uint64) bool {
	var rest string
	c, _ := fmt.Sscanf(line+" .", format+" %s", n, &rest)
	return c == 2 && rest == "."
}

// verifyAfterCrash opens the database the killed child left and checks it,
// returning the number of releases.
func verifyAfterCrash(t *testing.T, round int, path string, created, activated int, event uint64) int {
	t.Helper()
	s, err := Open(Config{Path: path, LockTimeout: 5 * time.Second, MaxEvents: 50}, nil)
	if err != nil {
		t.Fatalf("round %d: open after kill: %v", round, err)
	}
	defer s.Close()
	if err := s.Check(); err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	rs, err := s.Releases("crash", 0)
	if err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	n := len(rs)
	active := 0
	for i, r := range rs {
		if r.Version != n-i {
			t.Fatalf("round %d: releases[%d] is v%d with %d releases: versions not contiguous", round, i, r.Version, n)
		}
		if r.Status == StatusActive {
			active++
		}
	}
	if n < created {
		t.Fatalf("round %d: %d releases, but the child reported v%d committed", round, n, created)
	}
	a, err := s.App("crash")
	if err != nil {
		t.Fatal(err)
	}
	if activated > 0 || a.ActiveRelease > 0 {
		if active != 1 || a.ActiveRelease < activated || rs[n-a.ActiveRelease].Status != StatusActive {
			t.Fatalf("round %d: %d active releases, app points at v%d, child activated v%d", round, active, a.ActiveRelease, activated)
		}
	}
	last, err := s.LastEventSeq()
	if err != nil || last < event {
		t.Fatalf("round %d: last event %d, %v; child reported %d committed", round, last, err, event)
	}
	evs, err := s.Events("", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range evs {
		if e.Seq != last-uint64(len(evs)-1-i) {
			t.Fatalf("round %d: event sequence numbers not contiguous up to %d: %v", round, last, evs)
		}
	}
	return n
}
