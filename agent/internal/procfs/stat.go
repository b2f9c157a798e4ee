package procfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Stat is what the agent needs from /proc/<pid>/stat.
type Stat struct {
	// State is the process state letter (field 3): 'R', 'S', 'Z' ...
	State byte
	// PGID is the process group (field 5), never negative.
	PGID int
	// StartTime is the start in clock ticks after boot (field 22); with
	// the pid it names one process, since pids are reused.
	StartTime uint64
}

// Zombie reports whether the process has exited and waits to be reaped
// (or is being reaped): it runs no more.
func (s Stat) Zombie() bool { return s.State == 'Z' || s.State == 'X' }

// ParseStat parses the contents of /proc/<pid>/stat. The command name
// (field 2) may contain spaces and parentheses, so fields are counted
// from the last ')'.
func ParseStat(b []byte) (Stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, errors.New("malformed /proc stat: no ')'")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), f[2] field 5 (pgrp), f[19] field 22 (starttime).
	if len(f) < 20 {
		return Stat{}, fmt.Errorf("malformed /proc stat: %d fields", len(f)+2)
	}
	if len(f[0]) != 1 || !isLetter(f[0][0]) {
		return Stat{}, fmt.Errorf("malformed /proc stat state %q", f[0])
	}
	pgid, err := strconv.Atoi(f[2])
	if err != nil || pgid < 0 {
		return Stat{}, fmt.Errorf("malformed /proc stat pgrp %q", f[2])
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("malformed /proc stat starttime %q", f[19])
	}
	return Stat{State: f[0][0], PGID: pgid, StartTime: start}, nil
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// ReadStat reads and parses /proc/<pid>/stat; a process that is gone is
// an error matching os.ErrNotExist.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, err
	}
	return ParseStat(b)
}

// Each calls fn with each process in /proc and its stat, until fn
// returns false. Processes that go away meanwhile are skipped.
func Each(fn func(pid int, st Stat) bool) error {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := ReadStat(pid); err == nil && !fn(pid, st) {
			return nil
		}
	}
	return nil
}

// AnyInGroup reports whether match holds for a process of the process
// group pgid, walking /proc.
func AnyInGroup(pgid int, match func(pid int, st Stat) bool) bool {
	found := false
	Each(func(pid int, st Stat) bool {
		found = st.PGID == pgid && match(pid, st)
		return !found
	})
	return found
}

// GroupAlive reports whether any live (not zombie) process is in the
// process group.
func GroupAlive(pgid int) bool {
	return AnyInGroup(pgid, func(_ int, st Stat) bool { return !st.Zombie() })
}

// WaitGroupGone waits until no live process is in the process group. The
// processes need not be the caller's children (their parent may have
// died), so there is nothing to wait4 on: it polls /proc, bounded by
// timeout, with a delay that grows from 1 ms to 50 ms.
func WaitGroupGone(ctx context.Context, pgid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	delay := time.Millisecond
	for {
		if !GroupAlive(pgid) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process group %d still alive after %s", pgid, timeout)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// Environ returns the environment pid was started with
// (/proc/<pid>/environ), one "KEY=value" a string.
func Environ(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return nil, err
	}
	var out []string
	for kv := range bytes.SplitSeq(b, []byte{0}) {
		if len(kv) > 0 {
			out = append(out, string(kv))
		}
	}
	return out, nil
}
