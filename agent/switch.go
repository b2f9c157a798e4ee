package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/health"
	"github.com/berth-dev/berth/agent/rollout"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/state/build"
	"github.com/berth-dev/berth/supervisor"
)

// A switch makes a release the app's active one (deploy, config change,
// rollback): it runs the release phase, records the release as active,
// replaces the app's processes (converge, in rollout.go), watches the new
// ones through probation, and rolls back when they fail or records the
// switch as interrupted when the agent shuts down meanwhile. The steps
// are drawn in the package documentation.

// runReleasePhase runs the Procfile's release command once, with the new
// release's env, as the app's user, in the build dir, bounded by
// Config.ReleasePhaseTimeout. It returns a *ReleasePhaseError when the
// command fails.
func (a *Agent) runReleasePhase(ctx context.Context, app string, rel state.Release, b *build.Build, command string) (output string, err error) {
	cfg := a.config()
	who, tmp, err := a.prepare(cfg, app, b)
	if err != nil {
		return "", err
	}
	spec := supervisor.Spec{
		Name:    fmt.Sprintf("%s/release.v%d", app, rel.Version),
		Command: command,
		Env: processEnv(envParams{Config: rel.Config, App: app, Version: rel.Version, Instance: "release",
			Build: rel.Build, TmpDir: tmp, Allow: cfg.AllowEnv}),
		Markers:     processMarkers,
		Dir:         b.Dir,
		Credential:  who.Cred,
		StopTimeout: cfg.StopTimeout,
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.ReleasePhaseTimeout)
	defer cancel()
	exit, out, err := a.sup.RunCommand(ctx, spec)
	output = string(out)
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		return output, &ReleasePhaseError{App: app, Version: rel.Version, Reason: fmt.Sprintf("timed out after %s", cfg.ReleasePhaseTimeout), Output: output}
	case err != nil:
		return output, &ReleasePhaseError{App: app, Version: rel.Version, Reason: err.Error(), Output: output}
	case exit.Code != 0 || exit.Signal != 0:
		return output, &ReleasePhaseError{App: app, Version: rel.Version, Reason: exit.String(), Output: output}
	}
	return output, nil
}

// activate runs the release phase of a pending release, records it as
// active, points current at its build, and replaces the app's processes:
// it returns once the new instances are up, with the probation window
// after the switch going on in the agent (probation.go), or, with wait,
// once it passed; the api.Probation* value says which. If they are not
// up (a failed health check, a crash, a start timeout), or fail while
// activate waits through probation, the release is marked failed, the
// previous one is activated and its processes brought back, and a
// *SwitchError says so. The caller holds the app's lock. kind names the
// event ("deploy", "config", "rollback").
func (a *Agent) activate(app string, rel state.Release, b *build.Build, kind string, wait bool, p *progress) (_ state.Release, _ string, err error) {
	defer a.observeSwitch(app, kind, time.Now(), &err)
	// Once the release is recorded the switch goes on even if the client
	// goes away (a Ctrl-C of `berth deploy` must not leave a release
	// phase half run); only shutdown cuts it short.
	sctx := a.opCtx
	if err := checkManifest(b); err != nil {
		a.failPending(app, rel.Version, err.Error(), "")
		return state.Release{}, "", fmt.Errorf("%w: v%d not activated: %w", api.ErrInvalid, rel.Version, err)
	}
	if command, ok := b.Procfile.Command("release"); ok {
		p.mark()
		out, err := a.runReleasePhase(sctx, app, rel, b, command)
		if err != nil && sctx.Err() != nil {
			return state.Release{}, "", a.interrupt(app, rel, nil, "release phase", out, p)
		}
		if err != nil {
			var rpe *ReleasePhaseError
			reason := err.Error()
			if errors.As(err, &rpe) {
				reason = "release phase: " + rpe.Reason
			}
			a.failPending(app, rel.Version, reason, out)
			return state.Release{}, "", err
		}
		p.step("release-phase", "release phase of v%d succeeded", rel.Version)
		if out != "" {
			// Kept for `releases info`; the switch goes on without it.
			if err := a.store.SetOutput(app, rel.Version, out); err != nil {
				a.log.Error("record release phase output", "app", app, "release", rel.Version, "error", err)
			}
		}
	}

	// The store first: after a crash from here on, the agent brings the
	// app up on this release.
	p.mark()
	prev, err := a.store.Activate(app, rel.Version)
	if err != nil {
		// The store refused the write (a full disk): the release must
		// not stay pending; the active one is untouched and runs on.
		err = mapErr(err)
		a.failPending(app, rel.Version, fmt.Sprintf("activation could not be recorded: %v", err), "")
		return state.Release{}, "", fmt.Errorf("v%d not activated: %w", rel.Version, err)
	}
	if cur, err := a.store.Formation(app); err == nil {
		add := map[string]int{}
		for t, n := range rollout.DefaultFormation(cur, b.Procfile.Types()) {
			if _, ok := cur[t]; !ok {
				add[t] = n
			}
		}
		if len(add) > 0 {
			if _, err := a.store.SetFormation(app, add); err != nil {
				a.log.Error("record default formation", "app", app, "error", err)
			}
		}
	}
	if err := a.swapCurrent(app, b.Dir); err != nil {
		a.log.Error("swap current link", "app", app, "error", err)
	}
	p.step("record", "v%d is the active release", rel.Version)

	events, unsubscribe := a.sup.Subscribe(64)
	handedOver := false
	defer func() {
		if !handedOver {
			unsubscribe()
		}
	}()
	insts, err := a.converge(sctx, app, rel, b, true, true, p)
	w := a.newWatch(events)
	cfg := a.config()
	failedStep := "health"
	if err == nil && wait {
		failedStep = "probation"
		err = a.probation(sctx, cfg, insts, w, p)
	}
	if err != nil {
		if sctx.Err() != nil {
			return state.Release{}, "", a.interrupt(app, rel, &prev, failedStep, "", p)
		}
		// The step that failed, with the time it took.
		p.step(failedStep, "v%d failed: %v", rel.Version, err)
		return state.Release{}, "", a.rollBack(app, rel, prev, err, p)
	}
	probation := api.ProbationPassed
	if wait || cfg.Probation <= 0 || len(insts) == 0 {
		setLive(insts)
	} else {
		handedOver = true
		a.watchProbation(app, rel, prev, insts, w, unsubscribe)
		probation = api.ProbationWatching
		back := "the app has no release to go back to, so it would be stopped"
		if prev.Version != 0 {
			back = fmt.Sprintf("v%d comes back", prev.Version)
		}
		p.step("probation", "the agent watches v%d for %s more: if it exits or turns unhealthy, it is rolled back (%s; `berth events` says so)",
			rel.Version, cfg.Probation, back)
	}
	a.appendEvent(app, kind, fmt.Sprintf("v%d %s", rel.Version, rel.Description))
	a.collectGarbage()
	out, err := a.store.Release(app, rel.Version)
	if err != nil {
		return state.Release{}, "", mapErr(err)
	}
	p.step("done", "v%d %s", out.Version, out.Description)
	return out, probation, nil
}

// interrupt records a switch to rel that the agent's shutdown cut short
// during step: rel is marked failed as interrupted (with the output so
// far), and, when it had been activated already (prev is not nil), the
// release active before it, prev, is active again in the same
// transaction, so the next start brings prev back. Its processes are
// not touched here: shutdown stops every app process next. It returns
// the errShuttingDown that tells the client so.
func (a *Agent) interrupt(app string, rel state.Release, prev *state.Release, step, output string, p *progress) error {
	during := map[string]string{"health": "wait for the new instances to be up", "probation": "probation"}[step]
	if during == "" {
		during = step
	}
	reason := fmt.Sprintf("interrupted: the agent shut down during the %s", during)
	msg := fmt.Sprintf("v%d %s; v%d was not activated", rel.Version, reason, rel.Version)
	if prev != nil {
		if prev.Version != 0 {
			msg = fmt.Sprintf("v%d %s; v%d is the active release again", rel.Version, reason, prev.Version)
		} else {
			msg = fmt.Sprintf("v%d %s; the app has no active release", rel.Version, reason)
		}
		if err := a.store.FailAndActivate(app, rel.Version, reason, output, prev.Version); err != nil {
			a.log.Error("record interrupted switch", "app", app, "version", rel.Version, "error", err)
			msg = fmt.Sprintf("v%d %s, but recording it failed (%v): v%d stays active", rel.Version, reason, err, rel.Version)
		} else if prev.Version != 0 {
			if b, err := a.builds.Get(prev.Build); err == nil {
				if err := a.swapCurrent(app, b.Dir); err != nil {
					a.log.Error("swap current link", "app", app, "error", err)
				}
			}
		}
	} else {
		a.markFailed(app, rel.Version, reason, output) // logged; kept if the store refuses it
	}
	a.log.Warn("switch interrupted by shutdown", "app", app, "version", rel.Version, "step", step)
	a.appendEvent(app, "interrupted", msg)
	p.step(step, "%s", msg)
	return fmt.Errorf("%w: %s", errShuttingDown, msg)
}

// failPending marks a release that was never activated failed, with the
// reason and output, and records a "failure" event; the active release
// is untouched.
func (a *Agent) failPending(app string, version int, reason, output string) {
	a.markFailed(app, version, reason, output) // logged; kept if the store refuses it
	a.appendEvent(app, "failure", fmt.Sprintf("v%d %s; v%d not activated", version, reason, version))
}

// checkManifest refuses, before anything is activated, a manifest
// whose settings the agent cannot apply: a stop signal or health check
// that the build store let through but the agent cannot use.
func checkManifest(b *build.Build) error {
	for _, typ := range slices.Sorted(maps.Keys(b.Manifest.Processes)) {
		pm := b.Manifest.Processes[typ]
		if _, err := parseSignal(pm.StopSignal); err != nil {
			return fmt.Errorf("manifest of %s: %w", typ, err)
		}
		c, err := checkOf(pm.Healthcheck)
		if err != nil {
			return fmt.Errorf("manifest of %s: %w", typ, err)
		}
		if c != nil && c.TCP && pm.SocketActivation {
			return fmt.Errorf("manifest of %s: a tcp health check cannot fail with socket_activation (the agent's socket completes every connect itself); use http or exec", typ)
		}
	}
	return nil
}

// rollBack undoes a failed switch to rel: it marks rel failed with the
// cause and the failing instance's last log lines, activates prev (the
// release active before; none when its Version is 0) and brings its
// processes back, stops what is left of rel's, records an event and
// returns the *SwitchError that says all of it.
func (a *Agent) rollBack(app string, rel, prev state.Release, cause error, p *progress) error {
	serr := &SwitchError{App: app, Version: rel.Version, RolledBackTo: prev.Version, Reason: cause.Error(), Err: cause}
	var ie *instanceError
	if errors.As(cause, &ie) {
		serr.Output = a.failureOutput(ie.inst)
	}
	a.log.Warn("switch failed; rolling back", "app", app, "version", rel.Version, "to", prev.Version, "error", cause)
	// One transaction: a crash can never leave the app with neither
	// release active. If it fails, the db still says rel is active, and
	// rel's processes are left as they are to match it.
	var restoreErr error
	if err := a.store.FailAndActivate(app, rel.Version, serr.Reason, serr.Output, prev.Version); err != nil {
		restoreErr = err
	} else if prev.Version != 0 {
		restoreErr = a.restore(app, prev, p)
	} else {
		names := slices.Collect(maps.Keys(a.appInstances(app)))
		slices.Sort(names)
		restoreErr = a.stopInstances(a.opCtx, app, names)
		a.pruneSockets(app, nil)
	}
	msg := serr.Error()
	if restoreErr != nil {
		msg += fmt.Sprintf(" (but v%d did not come back up: %v)", prev.Version, restoreErr)
		a.log.Error("roll back", "app", app, "to", prev.Version, "error", restoreErr)
	}
	a.appendEvent(app, "rollback", msg)
	p.step("rollback", "%s", msg)
	if restoreErr != nil {
		return fmt.Errorf("%w (and v%d did not come back up: %v)", serr, prev.Version, restoreErr)
	}
	return serr
}

// restore converges the app's processes on prev, which the caller has
// made active again: instances of prev that still run (a socket-mode
// switch fails before it stops them) are kept, the failed release's are
// stopped.
func (a *Agent) restore(app string, prev state.Release, p *progress) error {
	b, err := a.builds.Get(prev.Build)
	if err != nil {
		return fmt.Errorf("build %s of v%d: %w", shortDigest(prev.Build), prev.Version, err)
	}
	if err := a.swapCurrent(app, b.Dir); err != nil {
		a.log.Error("swap current link", "app", app, "error", err)
	}
	insts, err := a.converge(a.opCtx, app, prev, b, false, true, p)
	setLive(insts)
	return err
}

// failureOutput is what a failed release records as its output: the
// failing instance's last log lines and its last health check's output.
func (a *Agent) failureOutput(in *instance) string {
	var sb strings.Builder
	// An exit is reported before its last lines are read: let them in.
	a.sup.WaitOutput(in.Name, time.Second)
	lines, err := a.sup.Tail(in.Name, 20)
	if err != nil {
		lines, _ = supervisor.ReadLogFile(in.LogPath, 20)
	}
	fmt.Fprintf(&sb, "last log lines of %s:\n", in.Instance)
	for _, l := range lines {
		fmt.Fprintf(&sb, "%s %s %s\n", l.Time.Format(time.RFC3339Nano), l.Stream, l.Text)
	}
	if len(lines) == 0 {
		sb.WriteString("(none)\n")
	}
	if in.prober != nil {
		st, _ := a.sup.Status(in.Name)
		last := in.verified
		if _, l := in.prober.status(st.PID); !l.Time.IsZero() {
			last = l
		}
		if !last.Time.IsZero() {
			fmt.Fprintf(&sb, "last health check (%s) at %s, %s:\n%s\n", in.Check, last.Time.Format(time.RFC3339Nano),
				map[bool]string{true: "ok", false: "failed"}[last.OK], strings.TrimRight(last.Output, "\n"))
		}
	}
	return sb.String()
}

// lastExit describes how an instance's last process ended.
func lastExit(st supervisor.Status) string {
	switch {
	case st.LastExit != nil:
		return st.LastExit.String()
	case st.LastError != "":
		return st.LastError
	}
	return "no exit status"
}

// lastOutput is a check result's output for an error message.
func lastOutput(r health.Result) string {
	if r.Time.IsZero() {
		return "none completed"
	}
	if out := strings.TrimSpace(firstLine(r.Output)); out != "" {
		return out
	}
	if r.OK {
		return "ok"
	}
	return "failed without output"
}

// setLive enables liveness restarts of the instances.
func setLive(insts []*instance) {
	for _, in := range insts {
		if in.prober != nil {
			in.prober.setLive()
		}
	}
}
