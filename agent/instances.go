package agent

import (
	"sync"
	"sync/atomic"

	"github.com/berth-dev/berth/agent/health"
	"github.com/berth-dev/berth/agent/internal/procfs"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/supervisor"
)

// processMarkers are the variables of a process's environment that
// together name one instance of one release of one app of this data dir
// (TMPDIR is under it): the supervisor finds by them, in /proc, what an
// instance started that left its process group (setsid), to stop it with
// the instance. killStrays uses two of them at start for the same end.
var processMarkers = []string{"BERTH_APP", "BERTH_PROCESS", "BERTH_RELEASE", "TMPDIR"}

// What runs is the supervisor's list, and only that. Each app instance
// the agent starts carries its *instance as the spec's Meta, so the
// supervisor's Status, List and Event hand it back: the agent keeps no
// list of its own to synchronise. Its process records in the store (for
// the next agent after a kill -9) are written from the supervisor's
// events, and each instance remembers which pid it recorded.

// instance is what the agent knows of one app process it runs, beyond
// what the supervisor knows: which app, release, port and check it
// belongs to. It is fixed when the instance is started; only the fields
// marked otherwise change.
type instance struct {
	Name     string // supervisor name: "app/web.1", or "app/web.1@v8" in socket mode
	App      string
	Instance string // web.1
	Type     string
	Release  int
	Build    string
	Port     int
	Command  string
	Mode     string // "socket" (agent-owned socket, start-then-stop) or "bind" (stop-then-start)
	LogPath  string

	// steer is set for an instance the agent steers connections to
	// (steer.go); nil otherwise.
	steer *steerInst

	// Check is the type's health check; nil when it has none.
	Check *health.Check
	// prober runs Check while the instance lives; nil without a check.
	prober *prober
	// spec is what the supervisor runs (exec checks use its env, dir
	// and user).
	spec supervisor.Spec

	// recorded is the pid whose process record is in the store (0:
	// none); only recordProc and forgetRecord change it.
	recorded atomic.Int64

	// upRestarts is the supervisor's restart count when the switch found
	// the instance up; probation fails on any restart after it. Only the
	// switch that started the instance (holding the app's lock) uses it.
	upRestarts int
	// verified is the last check of the instance made on a socket it
	// shared with the old instance of its slot (the probes it answered);
	// only the switch that started it uses it.
	verified health.Result
}

// slot is the instance's place in the formation, shared by the
// instances of successive releases: "app/web.1".
func (in *instance) slot() string { return in.App + "/" + in.Instance }

// instanceOf returns the agent's instance a supervisor status or event
// carries; nil for what is not an app instance.
func instanceOf(meta any) *instance {
	in, _ := meta.(*instance)
	return in
}

// appInstances returns the instances the supervisor runs for app (""
// for every app), by supervisor name.
func (a *Agent) appInstances(app string) map[string]*instance {
	out := map[string]*instance{}
	for _, st := range a.sup.List() {
		if in := instanceOf(st.Meta); in != nil && (app == "" || in.App == app) {
			out[st.Name] = in
		}
	}
	return out
}

// pick returns the instances of have named in names.
func pick(have map[string]*instance, names []string) []*instance {
	out := make([]*instance, 0, len(names))
	for _, name := range names {
		if in := have[name]; in != nil {
			out = append(out, in)
		}
	}
	return out
}

// watchSupervisor records every started process in the store (so a
// restarted agent can find and kill it after a kill -9 of this one),
// drops the record when the process is gone, and turns crashes into
// events. It returns when done is closed or the subscription ends.
func (a *Agent) watchSupervisor(events <-chan supervisor.Event, done <-chan struct{}) {
	// looping holds the instances whose last exit found them crash-
	// looping: their further crashes are not recorded as events (the
	// supervisor retries them forever, at most Backoff.Max apart), until
	// one exits after running long enough to reset its backoff.
	looping := map[string]bool{}
	for {
		a.releaseIfSettled(events)
		var ev supervisor.Event
		var ok bool
		select {
		case <-done:
			return
		case <-a.changesEnded:
			continue
		case ev, ok = <-events:
			if !ok {
				return
			}
		}
		if ev.Missed > 0 {
			a.log.Warn("supervisor events were lost; re-reading process states", "missed", ev.Missed)
			a.resyncRecords()
		}
		inst := instanceOf(ev.Meta)
		if inst == nil {
			continue // not an app instance (a one-off command)
		}
		if inst.prober != nil {
			inst.prober.poke()
		}
		a.steerEvent(inst, ev.State == supervisor.StateRunning)
		// A process that exited after running for the settle time, or
		// that a failed health check restarted, is started again at
		// once: its event is "starting" with the exit.
		restarted := ev.State == supervisor.StateStarting && ev.Exit != nil
		switch {
		case ev.PID > 0 && !restarted && (ev.State == supervisor.StateStarting || ev.State == supervisor.StateRunning):
			if err := a.recordProc(inst, ev.PID); err != nil {
				a.log.Error("record process", "name", ev.Name, "pid", ev.PID, "error", err)
			}
		case restarted || ev.State == supervisor.StateBackoff || ev.State == supervisor.StateCrashed || ev.State == supervisor.StateStopped:
			a.forgetRecords(inst)
			if ev.State == supervisor.StateStopped {
				delete(looping, ev.Name)
				break
			}
			if ev.Exit == nil || ev.Cause == supervisor.CauseUnhealthy {
				// The prober recorded the "unhealthy" event already.
				break
			}
			if ev.Exit.OOMKill {
				a.countOOMKill(inst)
			}
			kind, msg := exitEvent(inst, ev.Exit)
			switch {
			case ev.State == supervisor.StateCrashed && looping[ev.Name]:
				a.log.Debug("crash-looping instance exited again", "name", ev.Name, "exit", ev.Exit.String())
				msg = ""
			case ev.State == supervisor.StateCrashed:
				msg += "; it is crash-looping and retried with backoff; further crashes are not recorded until it runs again"
			}
			looping[ev.Name] = ev.State == supervisor.StateCrashed
			if msg != "" {
				a.appendEvent(inst.App, kind, msg)
			}
		}
		a.markChanged()
	}
}

// releaseIfSettled wakes the main loop to release the memory of the
// changes that ended (releaseDue) once no change is in flight and no
// event is waiting: the records an event writes make garbage too, and at
// 1,000 instances the events of a deploy are still being handled when it
// returns. The watcher itself goes on handling events meanwhile.
func (a *Agent) releaseIfSettled(events <-chan supervisor.Event) {
	if len(events) == 0 && a.changing.Load() == 0 && a.releaseDue.Swap(false) {
		select {
		case a.settled <- struct{}{}:
		default:
		}
	}
}

// resyncRecords brings the process records in line with the supervisor
// after events were lost, and tells every prober to look again.
func (a *Agent) resyncRecords() {
	for _, st := range a.sup.List() {
		in := instanceOf(st.Meta)
		if in == nil {
			continue
		}
		if in.prober != nil {
			in.prober.poke()
		}
		if st.PID > 0 {
			if err := a.recordProc(in, st.PID); err != nil {
				a.log.Error("record process", "name", in.Name, "pid", st.PID, "error", err)
			}
		} else {
			a.forgetRecords(in)
		}
	}
}

// recordProc stores the process record of an instance's process, so a
// restarted agent can find it after a kill -9 of this one. A process that
// is gone already needs no record; one recorded already is not written
// again. Concurrent callers share one bbolt commit (state.PutProc batches).
func (a *Agent) recordProc(in *instance, pid int) error {
	if in.recorded.Load() == int64(pid) {
		return nil
	}
	st, err := procfs.ReadStat(pid)
	if err != nil {
		return nil
	}
	err = a.store.PutProc(state.ProcRecord{App: in.App, Instance: in.Instance, Name: in.Name,
		PID: pid, PGID: st.PGID, StartTime: st.StartTime, Release: in.Release})
	if err == nil {
		in.recorded.Store(int64(pid))
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

// forgetRecords removes the process records of the instances,
// concurrently so the writes share commits; instances without a record
// cost nothing.
func (a *Agent) forgetRecords(insts ...*instance) {
	var wg sync.WaitGroup
	for _, in := range insts {
		if in.recorded.Swap(0) == 0 {
			continue
		}
		wg.Go(func() {
			if err := a.store.DeleteProc(in.Name); err != nil {
				a.log.Error("forget process record", "name", in.Name, "error", err)
			}
		})
	}
	wg.Wait()
}

// forget drops what the agent keeps for instances the supervisor no
// longer runs (it stopped them, or refused to start them): their health
// probers and process records.
func (a *Agent) forget(insts ...*instance) {
	stopProbers(insts)
	for _, in := range insts {
		if in.steer != nil {
			in.steer.closeSock()
		}
	}
	a.forgetRecords(insts...)
	a.markChanged()
}
