package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procStat is what the agent needs from /proc/<pid>/stat.
type procStat struct {
	State     byte
	PGID      int
	StartTime uint64 // clock ticks after boot (field 22)
}

// readProcStat parses /proc/<pid>/stat. The command name (field 2) may
// contain spaces and parentheses, so fields are counted from the last ')'.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(b)
}

func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("malformed /proc stat: no ')'")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), f[2] field 5 (pgrp), f[19] field 22 (starttime).
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("malformed /proc stat: %d fields", len(f)+2)
	}
	pgid, err := strconv.Atoi(f[2])
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat pgrp %q", f[2])
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed /proc stat starttime %q", f[19])
	}
	return procStat{State: f[0][0], PGID: pgid, StartTime: start}, nil
}

// killLeftovers kills the process groups a previous agent recorded and
// that still run (same pid and same start time, so a reused pid is never
// hit), waits until they are gone, and deletes the records. This is what
// makes a kill -9 of the agent followed by a restart end with exactly one
// set of processes.
func (a *Agent) killLeftovers(ctx context.Context) {
	recs, err := a.store.Procs()
	if err != nil {
		a.log.Error("read process records of the previous run", "error", err)
		return
	}
	own := unix.Getpgrp()
	for _, rec := range recs {
		st, err := readProcStat(rec.PID)
		alive := err == nil && st.StartTime == rec.StartTime && st.State != 'Z'
		if alive && rec.PGID > 1 && rec.PGID != own {
			a.log.Warn("killing process left by the previous agent", "name", rec.Name, "pid", rec.PID, "pgid", rec.PGID)
			a.killGroup(ctx, rec.PGID)
		}
		if err := a.store.DeleteProc(rec.Name); err != nil {
			a.log.Error("delete process record", "name", rec.Name, "error", err)
		}
	}
}

// killStrays kills the app processes of this data dir that no record
// names, with their process groups, and waits until they are gone. A
// previous agent killed between starting a process and recording it
// leaves such a stray behind, which killLeftovers cannot know of. A
// process is ours when the environment it was started with has
// BERTH_APP=<app> and the TMPDIR this agent gives that app's processes
// (apps/<app>/tmp under the data dir): processEnv sets both, and neither
// can be configured. Called at start, before any app process runs.
func (a *Agent) killStrays(ctx context.Context) {
	own := unix.Getpgrp()
	groups := map[int]string{} // pgid -> app
	err := eachProc(func(pid int, st procStat) bool {
		if st.State == 'Z' || st.PGID <= 1 || st.PGID == own {
			return true
		}
		env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		if err != nil {
			return true
		}
		var app, tmp string
		for kv := range bytes.SplitSeq(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte("BERTH_APP=")); ok {
				app = string(v)
			} else if v, ok := bytes.CutPrefix(kv, []byte("TMPDIR=")); ok {
				tmp = string(v)
			}
		}
		if app != "" && tmp == a.appDir(app, "tmp") {
			groups[st.PGID] = app
		}
		return true
	})
	if err != nil {
		a.log.Error("look for stray app processes", "error", err)
	}
	for pgid, app := range groups {
		a.log.Warn("killing an app process the previous agent started but did not record", "app", app, "pgid", pgid)
		a.killGroup(ctx, pgid)
	}
}

// killGroup SIGKILLs a process group a previous agent left and waits
// (up to 10 s) until it is gone.
func (a *Agent) killGroup(ctx context.Context, pgid int) {
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		a.log.Error("kill leftover process group", "pgid", pgid, "error", err)
	}
	if err := waitGroupGone(ctx, pgid, 10*time.Second); err != nil {
		a.log.Error("leftover process group did not go away", "pgid", pgid, "error", err)
	}
}

// waitGroupGone waits until no live (non-zombie) process is in the
// process group. The processes are not our children (their parent died),
// so there is nothing to wait4 on: it polls /proc, bounded by timeout.
func waitGroupGone(ctx context.Context, pgid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	delay := time.Millisecond
	for {
		if !groupAlive(pgid) {
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

// groupAlive reports whether any live process is in the process group.
func groupAlive(pgid int) bool {
	return anyInGroup(pgid, func(_ int, st procStat) bool { return st.State != 'Z' && st.State != 'X' })
}

// anyInGroup reports whether match holds for a process of the process
// group pgid, walking /proc.
func anyInGroup(pgid int, match func(pid int, st procStat) bool) bool {
	found := false
	eachProc(func(pid int, st procStat) bool {
		found = st.PGID == pgid && match(pid, st)
		return !found
	})
	return found
}

// eachProc calls fn with each process in /proc and its stat, until fn
// returns false. Processes that go away meanwhile are skipped.
func eachProc(fn func(pid int, st procStat) bool) error {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readProcStat(pid); err == nil && !fn(pid, st) {
			return nil
		}
	}
	return nil
}

// failInterrupted marks the releases a previous agent left pending (a
// switch interrupted before activation) failed. Since the store records
// activation before processes are touched, a pending release never ran.
func (a *Agent) failInterrupted() {
	pending, err := a.store.PendingReleases()
	if err != nil {
		a.log.Error("read pending releases", "error", err)
		return
	}
	for _, rel := range pending {
		const reason = "interrupted: agent stopped before activation"
		if err := a.store.MarkFailed(rel.App, rel.Version, reason, rel.Output); err != nil {
			a.log.Error("mark interrupted release failed", "app", rel.App, "version", rel.Version, "error", err)
			continue
		}
		a.log.Warn("release was interrupted; marked failed", "app", rel.App, "version", rel.Version)
		a.appendEvent(rel.App, "failure", fmt.Sprintf("v%d %s", rel.Version, reason))
	}
}
