package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/rollout"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/supervisor"
)

// startAll brings every app to its active release and formation; run at
// start-up. An app that cannot start is logged and recorded as an event;
// the others start anyway.
func (a *Agent) startAll(ctx context.Context) {
	apps, err := a.store.Apps()
	if err != nil {
		a.log.Error("list apps", "error", err)
		return
	}
	for _, app := range apps {
		if app.ActiveRelease == 0 {
			continue
		}
		unlock, err := a.lockApp(ctx, app.Name)
		if err != nil {
			return
		}
		err = a.startApp(app.Name)
		unlock()
		if err != nil {
			a.log.Error("start app", "app", app.Name, "error", err)
			a.appendEvent(app.Name, "failure", fmt.Sprintf("start at boot: %v", err))
		}
	}
}

func (a *Agent) startApp(app string) error {
	rel, b, err := a.activeBuild(app)
	if err != nil {
		return err
	}
	if err := a.swapCurrent(app, b.Dir); err != nil {
		a.log.Error("swap current link", "app", app, "error", err)
	}
	insts, err := a.converge(a.opCtx, app, rel, b, false, false, newProgress(nil))
	setLive(insts)
	if err != nil {
		return err
	}
	a.log.Info("app started", "app", app, "release", rel.Version)
	return nil
}

// Scale sets the count of the given types and starts or stops only the
// instances that changed. Types must be in the active build's Procfile.
func (a *Agent) Scale(ctx context.Context, app string, formation map[string]int) ([]api.Process, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
	defer a.end()
	if _, err := a.checkApp(app); err != nil {
		return nil, err
	}
	if len(formation) == 0 {
		return nil, fmt.Errorf("%w: scale: no process types given", api.ErrInvalid)
	}
	for typ, n := range formation {
		if err := state.ValidateProcessType(typ); err != nil {
			return nil, mapErr(fmt.Errorf("scale: %w", err))
		}
		if typ == "release" {
			return nil, fmt.Errorf("%w: scale: release is the release phase, not a process type that runs", api.ErrInvalid)
		}
		if n < 0 || n > state.MaxProcessCount {
			return nil, fmt.Errorf("%w: scale: %s=%d: count must be from 0 to %d", api.ErrInvalid, typ, n, state.MaxProcessCount)
		}
	}
	unlock, err := a.lockApp(ctx, app)
	if err != nil {
		return nil, err
	}
	defer unlock()
	rel, b, err := a.activeBuild(app)
	if errors.Is(err, state.ErrNoActiveRelease) {
		return nil, fmt.Errorf("%w: scale %s: nothing is deployed yet", api.ErrConflict, app)
	} else if err != nil {
		return nil, mapErr(err)
	}
	known := b.Procfile.Types()
	known = slices.DeleteFunc(known, func(t string) bool { return t == "release" })
	for typ := range formation {
		if !slices.Contains(known, typ) {
			return nil, fmt.Errorf("%w: scale %s: no process type %q in the Procfile of v%d (it has %s)",
				api.ErrNotFound, app, typ, rel.Version, strings.Join(known, ", "))
		}
	}
	if _, err := a.store.SetFormation(app, formation); err != nil {
		return nil, mapErr(err)
	}
	insts, err := a.converge(a.opCtx, app, rel, b, false, true, newProgress(nil))
	setLive(insts)
	if err != nil {
		return nil, fmt.Errorf("scale %s: %w", app, err)
	}
	var parts []string
	for _, t := range slices.Sorted(maps.Keys(formation)) {
		parts = append(parts, fmt.Sprintf("%s=%d", t, formation[t]))
	}
	a.appendEvent(app, "scale", "scaled "+strings.Join(parts, " "))
	return a.processes(app), nil
}

// Processes lists the instances of an app ("" for every app).
func (a *Agent) Processes(ctx context.Context, app string) ([]api.Process, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
	defer a.end()
	if app != "" {
		if _, err := a.checkApp(app); err != nil {
			return nil, err
		}
	}
	return a.processes(app), nil
}

func (a *Agent) processes(app string) []api.Process {
	statuses := map[string]supervisor.Status{}
	for _, st := range a.sup.List() {
		statuses[st.Name] = st
	}
	a.instMu.Lock()
	insts := make([]*instance, 0, len(a.insts))
	for _, in := range a.insts {
		if app == "" || in.App == app {
			insts = append(insts, in)
		}
	}
	a.instMu.Unlock()
	out := make([]api.Process, 0, len(insts))
	for _, in := range insts {
		p := api.Process{App: in.App, Instance: in.Instance, Type: in.Type, State: "stopped",
			Release: in.Release, Port: in.Port, Mode: in.Mode, Command: in.Command}
		if st, ok := statuses[in.Name]; ok {
			if in.prober != nil {
				h, _ := in.prober.status(st.PID)
				p.Health = h.String()
			}
			p.State = st.State.String()
			p.PID = st.PID
			p.StartedAt = st.StartedAt
			p.Restarts = st.Restarts
			p.NextAttempt = st.NextAttempt
			if st.LastExit != nil {
				p.LastExit = st.LastExit.String()
			}
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].App != out[j].App {
			return out[i].App < out[j].App
		}
		return rollout.CompareInstances(out[i].Instance, out[j].Instance) < 0
	})
	return out
}

// Restart restarts all the app's processes (target ""), those of a type
// ("web") or one instance ("web.1"), each with its stop signal and stop
// timeout, on the same release.
func (a *Agent) Restart(ctx context.Context, app, target string) error {
	if err := a.begin(); err != nil {
		return err
	}
	defer a.end()
	if _, err := a.checkApp(app); err != nil {
		return err
	}
	unlock, err := a.lockApp(ctx, app)
	if err != nil {
		return err
	}
	defer unlock()
	insts := a.appInstances(app)
	var names []string
	for name, in := range insts {
		if target == "" || target == in.Type || target == in.Instance {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		if target == "" {
			return fmt.Errorf("%w: restart %s: no processes are running", api.ErrConflict, app)
		}
		var have []string
		for _, in := range insts {
			have = append(have, in.Instance)
		}
		slices.SortFunc(have, rollout.CompareInstances)
		return fmt.Errorf("%w: restart %s: no process type or instance %q (running: %s)", api.ErrNotFound, app, target, strings.Join(have, ", "))
	}
	slices.SortFunc(names, rollout.CompareInstances)
	// One at a time: a rolling restart keeps the other instances serving.
	errs := make([]error, len(names))
	for i, name := range names {
		errs[i] = a.sup.Restart(name)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restart %s: %w", app, err)
	}
	what := target
	if what == "" {
		what = "all processes"
	}
	a.appendEvent(app, "restart", fmt.Sprintf("restarted %s (%d)", what, len(names)))
	return nil
}

// splitName turns a supervisor name "app/web.1" or "app/web.1@v8" into
// app and instance ("web.1").
func splitName(name string) (app, inst string) {
	app, inst, _ = strings.Cut(name, "/")
	inst, _, _ = strings.Cut(inst, "@")
	return app, inst
}

// supervisorNames returns the supervisor names of the app's instances in
// a slot ("web.1"), newest release last; app/web.1 when none runs.
func (a *Agent) supervisorNames(app, inst string) []string {
	var ins []*instance
	for _, in := range a.appInstances(app) {
		if in.Instance == inst {
			ins = append(ins, in)
		}
	}
	if len(ins) == 0 {
		return []string{app + "/" + inst}
	}
	slices.SortFunc(ins, func(x, y *instance) int { return x.Release - y.Release })
	out := make([]string, len(ins))
	for i, in := range ins {
		out[i] = in.Name
	}
	return out
}

func toAPILine(l supervisor.LogLine) api.LogLine {
	app, inst := splitName(l.Name)
	return api.LogLine{Time: l.Time, App: app, Instance: inst, Stream: l.Stream, Text: l.Text, Missed: l.Missed}
}

// logInstances lists the instances of an app that have output: those the
// agent runs and those with a log file.
func (a *Agent) logInstances(app string) []string {
	set := map[string]bool{}
	for _, in := range a.appInstances(app) {
		set[in.Instance] = true
	}
	files, _ := filepath.Glob(a.appDir(app, "logs", "*.log"))
	for _, f := range files {
		set[strings.TrimSuffix(filepath.Base(f), ".log")] = true
	}
	out := slices.Collect(maps.Keys(set))
	slices.SortFunc(out, rollout.CompareInstances)
	return out
}

// Logs returns the last n lines of one instance, or of all the app's
// instances merged by time: from memory for running instances, else from
// the log files.
func (a *Agent) Logs(ctx context.Context, app, instance string, n int) ([]api.LogLine, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
	defer a.end()
	if _, err := a.checkApp(app); err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, fmt.Errorf("%w: logs: line count %d must not be negative", api.ErrInvalid, n)
	}
	insts := a.logInstances(app)
	if instance != "" {
		if err := state.ValidateInstance(instance); err != nil {
			return nil, mapErr(err)
		}
		if !slices.Contains(insts, instance) {
			return nil, fmt.Errorf("%w: logs: app %s has no instance %s (it has %s)", api.ErrNotFound, app, instance, strings.Join(insts, ", "))
		}
		insts = []string{instance}
	}
	var out []api.LogLine
	for _, inst := range insts {
		for _, name := range a.supervisorNames(app, inst) {
			lines, err := a.sup.Tail(name, n)
			if errors.Is(err, supervisor.ErrNotFound) {
				lines, err = supervisor.ReadLogFile(a.appDir(app, "logs", inst+".log"), n)
				if errors.Is(err, os.ErrNotExist) {
					continue
				}
				for i := range lines {
					lines[i].Name = name
				}
			}
			if err != nil {
				return nil, fmt.Errorf("logs of %s: %w", name, err)
			}
			for _, l := range lines {
				out = append(out, toAPILine(l))
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	if n > 0 && len(out) > n {
		out = out[len(out)-n:]
	}
	if out == nil {
		out = []api.LogLine{}
	}
	return out, nil
}

// FollowLogs sends the app's new output lines (of one instance, or all)
// as they come, until ctx ends or send fails.
func (a *Agent) FollowLogs(ctx context.Context, app, instance string, send func(api.LogLine) error) error {
	if err := a.begin(); err != nil {
		return err
	}
	defer a.end()
	if _, err := a.checkApp(app); err != nil {
		return err
	}
	if instance != "" {
		if err := state.ValidateInstance(instance); err != nil {
			return mapErr(err)
		}
	}
	prefix := app + "/"
	lines, cancel := a.sup.FollowLogs(func(name string) bool {
		if instance != "" {
			return name == prefix+instance || strings.HasPrefix(name, prefix+instance+"@")
		}
		return strings.HasPrefix(name, prefix)
	}, 256)
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.opCtx.Done():
			return errShuttingDown
		case l, ok := <-lines:
			if !ok {
				return nil
			}
			if err := send(toAPILine(l)); err != nil {
				return err
			}
		}
	}
}

func toAPIEvent(e state.Event) api.Event {
	return api.Event{Seq: e.Seq, Time: e.Time, App: e.App, Kind: e.Kind, Message: e.Message}
}

// Events returns events after since, oldest first (limit 0: all).
func (a *Agent) Events(ctx context.Context, app string, since uint64, limit int) ([]api.Event, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
	defer a.end()
	if app != "" {
		if err := state.ValidateAppName(app); err != nil {
			return nil, mapErr(err)
		}
	}
	evs, err := a.store.Events(app, since, limit)
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]api.Event, 0, len(evs))
	for _, e := range evs {
		out = append(out, toAPIEvent(e))
	}
	return out, nil
}

// FollowEvents sends events after since as they are recorded, until ctx
// ends or send fails. It wakes on every append; it does not poll.
func (a *Agent) FollowEvents(ctx context.Context, app string, since uint64, send func(api.Event) error) error {
	if err := a.begin(); err != nil {
		return err
	}
	defer a.end()
	if app != "" {
		if err := state.ValidateAppName(app); err != nil {
			return mapErr(err)
		}
	}
	for {
		// Take the wake-up channel before reading, so an append between
		// the read and the wait is not missed.
		woken := a.events.wait()
		evs, err := a.store.Events(app, since, 1000)
		if err != nil {
			return mapErr(err)
		}
		for _, e := range evs {
			if err := send(toAPIEvent(e)); err != nil {
				return err
			}
			since = e.Seq
		}
		if len(evs) == 1000 {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-a.opCtx.Done():
			return errShuttingDown
		case <-woken:
		}
	}
}
