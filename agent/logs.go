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

// The operations on an app's output: Logs and FollowLogs. Each runs
// through do (op.go).

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
	check := func() error {
		if n < 0 {
			return fmt.Errorf("%w: logs: line count %d must not be negative", api.ErrInvalid, n)
		}
		if instance != "" {
			return state.ValidateInstance(instance)
		}
		return nil
	}
	return do(a, ctx, opts{app: app, exists: true, check: check}, func(context.Context) ([]api.LogLine, error) {
		return a.logs(app, instance, n)
	})
}

func (a *Agent) logs(app, instance string, n int) ([]api.LogLine, error) {
	insts := a.logInstances(app)
	if instance != "" {
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
	check := func() error {
		if instance != "" {
			return state.ValidateInstance(instance)
		}
		return nil
	}
	return do0(a, ctx, opts{app: app, exists: true, check: check}, func(ctx context.Context) error {
		return a.followLogs(ctx, app, instance, send)
	})
}

func (a *Agent) followLogs(ctx context.Context, app, instance string, send func(api.LogLine) error) error {
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
			return a.followEnd()
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
