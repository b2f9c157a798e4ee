// Probation in the agent: a switch returns to its caller once the new
// instances are up, and the agent keeps watching them for the rest of
// Config.Probation. An exit or a turn to unhealthy in that window rolls
// the release back exactly as a failure before the return would (the
// release marked failed, the previous one active again, a "rollback"
// event), only without a client to tell. A caller that asked to wait
// (api.WithProbationWait, `--wait`) gets the answer after the probation
// instead, from the switch itself.
//
// The next change to the app (any holder of its lock: a switch, scale,
// restart, user change, destroy) ends the watch: its instances are about
// to be replaced or were chosen by the operator after the switch, so a
// failure of them is no longer this release's to undo. A shutdown ends
// it too, leaving the release active: its client was told it was
// released.

package agent

import (
	"context"
	"sync/atomic"

	"github.com/berth-dev/berth/state"
)

// probationRun is the probation of an app's last switch, running in the
// agent after the switch returned.
type probationRun struct {
	version int
	cancel  context.CancelFunc
	// superseded is set (under probMu, with the app's lock held) by the
	// next change to the app: the run then does not roll back.
	superseded atomic.Bool
}

// watchProbation runs the probation of the switch to rel (prev is the
// release active before it) in a goroutine the shutdown waits for, and
// returns at once. It takes over w's subscription (unsubscribe ends
// it). The caller holds the app's lock and is an operation in flight.
func (a *Agent) watchProbation(app string, rel, prev state.Release, insts []*instance, w *watch, unsubscribe func()) {
	ctx, cancel := context.WithCancel(a.opCtx)
	run := &probationRun{version: rel.Version, cancel: cancel}
	a.probMu.Lock()
	if old := a.probations[app]; old != nil { // ended by lockApp already; be sure
		old.superseded.Store(true)
		old.cancel()
	}
	a.probations[app] = run
	a.probMu.Unlock()
	// The switch that calls this is counted in a.ops, so the count is
	// not zero here and shutdown's Wait sees this one too.
	a.ops.Add(1)
	release := a.trimmer.hold()
	go func() {
		defer a.ops.Done()
		defer cancel()
		defer release()
		err := a.probation(ctx, a.config(), insts, w, newProgress(nil))
		unsubscribe()
		switch {
		case run.superseded.Load():
			// A scale or restart may keep these instances: their failing
			// checks restart them from now on, as after any probation.
			setLive(insts)
			return
		case err == nil:
			a.dropProbation(app, run)
			setLive(insts)
			a.log.Debug("probation passed", "app", app, "version", rel.Version)
			return
		case a.opCtx.Err() != nil:
			a.dropProbation(app, run)
			a.log.Info("probation cut short by shutdown; the release stays active", "app", app, "version", rel.Version)
			return
		}
		// A failure: roll back under the app's lock, unless a change
		// that came first ended this run meanwhile.
		unlock, lerr := a.acquireApp(a.opCtx, app)
		if lerr != nil {
			a.dropProbation(app, run)
			a.log.Error("probation failed but the rollback could not start", "app", app, "version", rel.Version, "failure", err, "error", lerr)
			return
		}
		defer unlock()
		if !a.dropProbation(app, run) {
			return
		}
		a.log.Warn("new instances failed in probation after the switch returned", "app", app, "version", rel.Version, "error", err)
		a.countRollback(app)
		a.rollBack(app, rel, prev, err, newProgress(nil)) // records the failure and a "rollback" event
	}()
}

// dropProbation forgets run as the app's running probation; false when
// a change to the app superseded it first.
func (a *Agent) dropProbation(app string, run *probationRun) bool {
	a.probMu.Lock()
	defer a.probMu.Unlock()
	if run.superseded.Load() {
		return false
	}
	if a.probations[app] == run {
		delete(a.probations, app)
	}
	return true
}

// endProbation ends the app's running probation, if any: a change to
// the app (the caller, holding its lock) supersedes it.
func (a *Agent) endProbation(app string) {
	a.probMu.Lock()
	defer a.probMu.Unlock()
	if run := a.probations[app]; run != nil {
		run.superseded.Store(true)
		run.cancel()
		delete(a.probations, app)
		a.log.Debug("probation ended by a newer change", "app", app, "version", run.version)
	}
}
