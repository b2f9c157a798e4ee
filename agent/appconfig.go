package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
)

// The operations on an app's config: Config and SetConfig. Each runs
// through do (op.go).

// Config returns the app's config: that of its active release, or what
// was set before the first deploy.
func (a *Agent) Config(ctx context.Context, app string) (map[string]string, error) {
	return do(a, ctx, opts{app: app, exists: true}, func(context.Context) (map[string]string, error) {
		cfg, err := a.store.Config(app)
		if cfg == nil && err == nil {
			cfg = map[string]string{}
		}
		return cfg, err
	})
}

// SetConfig sets and unsets config vars in one new release ("Set FOO,
// BAR; unset BAZ") with the active build, and restarts the app's
// processes on it. A change that changes nothing (values already set,
// names already unset) makes no release and restarts nothing: it returns
// the active release as it is, so scripts can apply a config
// idempotently. Before the first deploy the config is only stored.
// Names follow state.ValidateEnvName; PORT, TMPDIR and BERTH_* are set
// by berth and cannot be configured.
func (a *Agent) SetConfig(ctx context.Context, app string, change api.ConfigChange, progressFn api.ProgressFunc) (api.Release, error) {
	check := func() error { return checkConfigChange(change) }
	return do(a, ctx, opts{app: app, exists: true, check: check, lock: true}, func(context.Context) (api.Release, error) {
		return a.setConfig(app, change, api.WaitsForProbation(ctx), newProgress(progressFn))
	})
}

// checkConfigChange refuses a change that sets or unsets nothing, a bad
// or reserved name, a value with a NUL byte, and a name both set and
// unset.
func checkConfigChange(change api.ConfigChange) error {
	if len(change.Set) == 0 && len(change.Unset) == 0 {
		return fmt.Errorf("%w: config: nothing to set or unset", api.ErrInvalid)
	}
	for _, name := range slices.Concat(slices.Collect(maps.Keys(change.Set)), change.Unset) {
		if err := state.ValidateEnvName(name); err != nil {
			return (fmt.Errorf("config: %w", err))
		}
		if reservedEnv(name) {
			return fmt.Errorf("%w: config: %s is set by berth for every process and cannot be configured", api.ErrInvalid, name)
		}
	}
	for name, v := range change.Set {
		if strings.IndexByte(v, 0) >= 0 {
			return fmt.Errorf("%w: config: the value of %s holds a NUL byte", api.ErrInvalid, name)
		}
		if slices.Contains(change.Unset, name) {
			return fmt.Errorf("%w: config: %s is both set and unset", api.ErrInvalid, name)
		}
	}
	return nil
}

func (a *Agent) setConfig(app string, change api.ConfigChange, wait bool, p *progress) (api.Release, error) {
	cur, err := a.store.Config(app)
	if err != nil {
		return api.Release{}, err
	}
	next := maps.Clone(cur)
	if next == nil {
		next = map[string]string{}
	}
	var set, unset []string
	for name, v := range change.Set {
		if old, ok := next[name]; !ok || old != v {
			set = append(set, name)
		}
		next[name] = v
	}
	for _, name := range change.Unset {
		if _, ok := next[name]; ok {
			unset = append(unset, name)
			delete(next, name)
		}
	}
	slices.Sort(set)
	slices.Sort(unset)
	active, aerr := a.store.ActiveRelease(app)
	if len(set) == 0 && len(unset) == 0 {
		p.step("done", "config unchanged; no new release")
		if aerr != nil {
			// Nothing is deployed yet: no release to show, only the
			// names (never the values: no other path returns them).
			return api.Release{App: app, ConfigKeys: slices.Sorted(maps.Keys(next)), Formation: map[string]int{}}, nil
		}
		return toAPIRelease(active, false), nil
	}
	var desc []string
	if len(set) > 0 {
		desc = append(desc, "Set "+strings.Join(set, ", "))
	}
	if len(unset) > 0 {
		desc = append(desc, "Unset "+strings.Join(unset, ", "))
	}
	description := strings.Join(desc, "; ")
	if errors.Is(aerr, state.ErrNoActiveRelease) {
		if err := a.store.PutConfig(app, next); err != nil {
			return api.Release{}, err
		}
		a.appendEvent(app, "config", description+" (applies from the first deploy)")
		p.step("done", "config saved; it applies from the first deploy")
		return api.Release{App: app, Description: description,
			ConfigKeys: slices.Sorted(maps.Keys(next)), Formation: map[string]int{}}, nil
	} else if aerr != nil {
		return api.Release{}, aerr
	}
	if !a.builds.Has(active.Build) {
		return api.Release{}, fmt.Errorf("build %s of the active v%d is missing from the build store", shortDigest(active.Build), active.Version)
	}
	b, err := a.builds.Get(active.Build)
	if err != nil {
		return api.Release{}, err
	}
	formation, err := a.store.Formation(app)
	if err != nil {
		return api.Release{}, err
	}
	rel, err := a.store.CreateRelease(app, state.NewRelease{Build: active.Build, Config: next,
		Formation: formation, Description: description})
	if err != nil {
		return api.Release{}, err
	}
	p.step("record", "created v%d", rel.Version)
	out, probation, err := a.activate(app, rel, b, "config", wait, p)
	if err != nil {
		return api.Release{}, err
	}
	res := toAPIRelease(out, false)
	res.Probation = probation
	return res, nil
}
