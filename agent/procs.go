package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/agent/internal/procfs"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/supervisor"
)

// watchSupervisor records every started process in the store (so a
// restarted agent can find and kill it after a kill -9 of this one),
// forgets it when it is gone, and turns crashes into events. It returns
// when done is closed or the subscription ends.
func (a *Agent) watchSupervisor(events <-chan supervisor.Event, done <-chan struct{}) {
	// looping holds the instances whose last exit found them crash-
	// looping: their further crashes are not recorded as events (the
	// supervisor retries them forever, at most Backoff.Max apart), until
	// one exits after running long enough to reset its backoff.
	looping := map[string]bool{}
	for {
		var ev supervisor.Event
		var ok bool
		select {
		case <-done:
			return
		case ev, ok = <-events:
			if !ok {
				return
			}
		}
		if ev.Missed > 0 {
			a.log.Warn("supervisor events were lost; re-reading process states", "missed", ev.Missed)
			a.resyncRecords()
			a.pokeProbers()
		}
		inst := a.instance(ev.Name)
		if inst == nil {
			continue // not an app instance (a one-off command), or already forgotten
		}
		if inst.prober != nil {
			inst.prober.poke()
		}
		// A process that exited after running for the settle time is
		// restarted at once: its event is "starting" with the exit.
		settledExit := ev.State == supervisor.StateStarting && ev.Exit != nil
		switch {
		case ev.PID > 0 && !settledExit && (ev.State == supervisor.StateStarting || ev.State == supervisor.StateRunning):
			if err := a.recordProc(inst, ev.PID); err != nil {
				a.log.Error("record process", "name", ev.Name, "pid", ev.PID, "error", err)
			}
		case settledExit || ev.State == supervisor.StateBackoff || ev.State == supervisor.StateCrashed || ev.State == supervisor.StateStopped:
			a.deleteRecords(ev.Name)
			if ev.State == supervisor.StateStopped {
				delete(looping, ev.Name)
				break
			}
			if ev.Exit == nil {
				break
			}
			msg := fmt.Sprintf("crash %s %s", inst.Instance, ev.Exit)
			switch {
			case ev.State == supervisor.StateCrashed && looping[ev.Name]:
				a.log.Debug("crash-looping instance exited again", "name", ev.Name, "exit", ev.Exit.String())
				msg = ""
			case ev.State == supervisor.StateCrashed:
				msg += "; it is crash-looping and retried with backoff; further crashes are not recorded until it runs again"
			}
			looping[ev.Name] = ev.State == supervisor.StateCrashed
			if msg != "" {
				a.appendEvent(inst.App, "crash", msg)
			}
		}
		a.markChanged()
	}
}

// pokeProbers tells every prober to re-read its instance's process.
func (a *Agent) pokeProbers() {
	a.instMu.Lock()
	defer a.instMu.Unlock()
	for _, in := range a.insts {
		if in.prober != nil {
			in.prober.poke()
		}
	}
}

// resyncRecords brings the process records in line with the supervisor
// after events were lost.
func (a *Agent) resyncRecords() {
	a.instMu.Lock()
	insts := make([]*instance, 0, len(a.insts))
	for _, in := range a.insts {
		insts = append(insts, in)
	}
	a.instMu.Unlock()
	for _, in := range insts {
		if st, err := a.sup.Status(in.Name); err == nil && st.PID > 0 {
			if err := a.recordProc(in, st.PID); err != nil {
				a.log.Error("record process", "name", in.Name, "pid", st.PID, "error", err)
			}
		} else {
			a.deleteRecords(in.Name)
		}
	}
}

// recordProc stores the process record of an instance's process, so a
// restarted agent can find it after a kill -9 of this one. A process that
// is gone already needs no record; one recorded already is not written
// again. Concurrent callers share one bbolt commit (state.PutProc batches).
func (a *Agent) recordProc(inst *instance, pid int) error {
	a.recMu.Lock()
	if a.recorded[inst.Name] == pid {
		a.recMu.Unlock()
		return nil
	}
	a.recMu.Unlock()
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return nil
	}
	err = a.store.PutProc(state.ProcRecord{App: inst.App, Instance: inst.Instance, Name: inst.Name,
		PID: pid, PGID: st.PGID, StartTime: st.StartTime, Release: inst.Release})
	if err == nil {
		a.recMu.Lock()
		a.recorded[inst.Name] = pid
		a.recMu.Unlock()
	}
	return err
}

// recordAll records the current process of each instance concurrently,
// so the writes share commits.
func (a *Agent) recordAll(insts []*instance) {
	var wg sync.WaitGroup
	for _, in := range insts {
		st, err := a.sup.Status(in.Name)
		if err != nil || st.PID == 0 {
			continue
		}
		wg.Go(func() {
			if err := a.recordProc(in, st.PID); err != nil {
				a.log.Error("record process", "name", in.Name, "pid", st.PID, "error", err)
			}
		})
	}
	wg.Wait()
}

// deleteRecords removes the process records of the named instances,
// concurrently so the writes share commits; names without a record cost
// nothing.
func (a *Agent) deleteRecords(names ...string) {
	a.recMu.Lock()
	var del []string
	for _, name := range names {
		if _, ok := a.recorded[name]; ok {
			delete(a.recorded, name)
			del = append(del, name)
		}
	}
	a.recMu.Unlock()
	var wg sync.WaitGroup
	for _, name := range del {
		wg.Go(func() {
			if err := a.store.DeleteProc(name); err != nil {
				a.log.Error("forget process record", "name", name, "error", err)
			}
		})
	}
	wg.Wait()
}

// instance returns the instance the agent runs under a supervisor name.
func (a *Agent) instance(name string) *instance {
	a.instMu.Lock()
	defer a.instMu.Unlock()
	return a.insts[name]
}

// appInstances returns the app's instances by supervisor name.
func (a *Agent) appInstances(app string) map[string]*instance {
	a.instMu.Lock()
	defer a.instMu.Unlock()
	out := map[string]*instance{}
	for name, inst := range a.insts {
		if inst.App == app {
			out[name] = inst
		}
	}
	return out
}

// forget drops stopped instances and their process records.
func (a *Agent) forget(names ...string) {
	var gone []*instance
	a.instMu.Lock()
	for _, name := range names {
		if in, ok := a.insts[name]; ok {
			gone = append(gone, in)
		}
		delete(a.insts, name)
	}
	a.instMu.Unlock()
	stopProbers(gone)
	a.deleteRecords(names...)
	a.markChanged()
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
		st, err := procfs.ReadStat(rec.PID)
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
	err := procfs.Each(func(pid int, st procfs.Stat) bool {
		if st.State == 'Z' || st.PGID <= 1 || st.PGID == own {
			return true
		}
		env, err := procfs.Environ(pid)
		if err != nil {
			return true
		}
		var app, tmp string
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, "BERTH_APP="); ok {
				app = v
			} else if v, ok := strings.CutPrefix(kv, "TMPDIR="); ok {
				tmp = v
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
	if err := procfs.WaitGroupGone(ctx, pgid, 10*time.Second); err != nil {
		a.log.Error("leftover process group did not go away", "pgid", pgid, "error", err)
	}
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
