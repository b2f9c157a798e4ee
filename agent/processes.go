package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/rollout"
	"github.com/berth-dev/berth/state"
)

// The operations on an app's processes: Scale, Processes and Restart.
// Each runs through do (op.go).

// Scale sets the count of the given types and starts or stops only the
// instances that changed. Types must be in the active build's Procfile.
func (a *Agent) Scale(ctx context.Context, app string, formation map[string]int) ([]api.Process, error) {
	check := func() error { return checkFormation(formation) }
	return do(a, ctx, opts{app: app, exists: true, check: check, lock: true}, func(context.Context) ([]api.Process, error) {
		return a.scale(app, formation)
	})
}

// checkFormation refuses an empty scale, a bad type name, the release
// phase and a count out of range.
func checkFormation(formation map[string]int) error {
	if len(formation) == 0 {
		return fmt.Errorf("%w: scale: no process types given", api.ErrInvalid)
	}
	for typ, n := range formation {
		if err := state.ValidateProcessType(typ); err != nil {
			return fmt.Errorf("scale: %w", err)
		}
		if typ == "release" {
			return fmt.Errorf("%w: scale: release is the release phase, not a process type that runs", api.ErrInvalid)
		}
		if n < 0 || n > state.MaxProcessCount {
			return fmt.Errorf("%w: scale: %s=%d: count must be from 0 to %d", api.ErrInvalid, typ, n, state.MaxProcessCount)
		}
	}
	return nil
}

func (a *Agent) scale(app string, formation map[string]int) ([]api.Process, error) {
	rel, b, err := a.activeBuild(app)
	if errors.Is(err, state.ErrNoActiveRelease) {
		return nil, fmt.Errorf("%w: scale %s: nothing is deployed yet", api.ErrConflict, app)
	} else if err != nil {
		return nil, err
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
		return nil, err
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
	return do(a, ctx, opts{app: app, exists: true}, func(context.Context) ([]api.Process, error) {
		return a.processes(app), nil
	})
}

func (a *Agent) processes(app string) []api.Process {
	sts := a.sup.List()
	out := make([]api.Process, 0, len(sts))
	for _, st := range sts {
		in := instanceOf(st.Meta)
		if in == nil || (app != "" && in.App != app) {
			continue
		}
		p := api.Process{App: in.App, Instance: in.Instance, Type: in.Type, State: st.State.String(),
			Release: in.Release, Port: in.Port, Mode: in.Mode, Command: in.Command, Steering: a.steeringOf(in),
			PID: st.PID, StartedAt: st.StartedAt, Restarts: st.Restarts, NextAttempt: st.NextAttempt}
		if in.prober != nil {
			h, _ := in.prober.status(st.PID)
			p.Health = h.String()
		}
		if st.LastExit != nil {
			p.LastExit = st.LastExit.String()
		}
		p.Limits = a.limitsText(in)
		out = append(out, p)
	}
	out = append(out, a.oneOffProcesses(app)...)
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
	return do0(a, ctx, opts{app: app, exists: true, lock: true}, func(ctx context.Context) error {
		return a.restart(ctx, app, target)
	})
}

// restart restarts the app's instances that target names (all, a type
// or one instance), rolling: one at a time, in instance order, each up
// again (healthy with a check, else running for the settle time) before
// the next one is stopped, so the others keep serving. It returns once
// the last one is up; the first that does not come up stops the roll,
// leaving the rest untouched, and the error names it.
func (a *Agent) restart(ctx context.Context, app, target string) error {
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
	slices.SortFunc(names, func(x, y string) int { return rollout.CompareInstances(insts[x].Instance, insts[y].Instance) })
	// Rolling within a type, all types at once: round k restarts the k-th
	// instance of every type together and waits until they are all up
	// (and steered ones back in their groups) before round k+1 stops the
	// next ones. A type's other instances serve meanwhile.
	var rounds [][]string
	nth := map[string]int{}
	for _, name := range names {
		k := nth[insts[name].Type]
		nth[insts[name].Type]++
		if k == len(rounds) {
			rounds = append(rounds, nil)
		}
		rounds[k] = append(rounds[k], name)
	}
	events, unsubscribe := a.sup.Subscribe(4*len(names) + 16)
	defer unsubscribe()
	w := a.newWatch(events)
	cfg := a.config()
	what := target
	if what == "" {
		what = "all processes"
	}
	done := 0
	for _, round := range rounds {
		errs := make([]error, len(round))
		var wg sync.WaitGroup
		for i, name := range round {
			wg.Go(func() { errs[i] = a.sup.Restart(name) })
		}
		wg.Wait()
		err := errors.Join(errs...)
		ins := pick(insts, round)
		if err == nil {
			err = a.waitUp(ctx, cfg, ins, w, true, newProgress(nil))
		}
		if err == nil {
			// Steered ones are back in their groups before the next stop.
			err = a.join(ins)
		}
		if err != nil {
			if done > 0 {
				a.appendEvent(app, "restart", fmt.Sprintf("restarted %s: %d of %d up again, then: %v", what, done, len(names), err))
			}
			return fmt.Errorf("restart %s: not back up (%d of %d restarted before; the rest were left running): %w",
				app, done, len(names), err)
		}
		done += len(round)
	}
	a.appendEvent(app, "restart", fmt.Sprintf("restarted %s (%d), one instance of a type at a time, each up before the next", what, len(names)))
	return nil
}
