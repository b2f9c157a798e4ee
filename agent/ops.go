package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/state/build"
)

var _ api.Backend = (*Agent)(nil)

// appendEvent records an event and wakes the event followers. A store
// error is logged: the operation it describes has happened anyway.
func (a *Agent) appendEvent(app, kind, msg string) {
	if _, err := a.store.AppendEvent(app, kind, msg); err != nil {
		a.log.Error("record event", "app", app, "kind", kind, "error", err)
		return
	}
	a.events.notify()
}

// checkApp validates the name and returns the app.
func (a *Agent) checkApp(name string) (state.App, error) {
	if err := state.ValidateAppName(name); err != nil {
		return state.App{}, mapErr(err)
	}
	app, err := a.store.App(name)
	return app, mapErr(err)
}

// Info describes the agent.
func (a *Agent) Info(ctx context.Context) (api.AgentInfo, error) {
	if err := a.begin(); err != nil {
		return api.AgentInfo{}, err
	}
	defer a.end()
	apps, err := a.store.Apps()
	if err != nil {
		return api.AgentInfo{}, err
	}
	a.instMu.Lock()
	n := len(a.insts)
	a.instMu.Unlock()
	cfg := a.config()
	return api.AgentInfo{Version: cfg.Version, PID: os.Getpid(), DataDir: cfg.DataDir,
		StartedAt: a.startedAt, Apps: len(apps), Processes: n}, nil
}

func (a *Agent) apiApp(app state.App) (api.App, error) {
	f, err := a.store.Formation(app.Name)
	if err != nil {
		return api.App{}, mapErr(err)
	}
	return api.App{Name: app.Name, User: app.User, CreatedAt: app.CreatedAt, ActiveRelease: app.ActiveRelease, Formation: f}, nil
}

// Apps lists the apps.
func (a *Agent) Apps(ctx context.Context) ([]api.App, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
	defer a.end()
	apps, err := a.store.Apps()
	if err != nil {
		return nil, err
	}
	out := make([]api.App, 0, len(apps))
	for _, app := range apps {
		x, err := a.apiApp(app)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, nil
}

// CreateApp creates an app with no release.
func (a *Agent) CreateApp(ctx context.Context, name string) (api.App, error) {
	if err := a.begin(); err != nil {
		return api.App{}, err
	}
	defer a.end()
	app, err := a.store.CreateApp(name)
	if err != nil {
		return api.App{}, mapErr(err)
	}
	a.appendEvent(name, "create", "created app "+name)
	a.markChanged()
	return a.apiApp(app)
}

// DestroyApp stops the app's processes and deletes it: its releases,
// config, formation, ports and apps/<app>/ directory. Its builds stay
// until garbage collection finds them unreferenced.
func (a *Agent) DestroyApp(ctx context.Context, name string) error {
	if err := a.begin(); err != nil {
		return err
	}
	defer a.end()
	if _, err := a.checkApp(name); err != nil {
		return err
	}
	unlock, err := a.lockApp(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	names := slices.Collect(maps.Keys(a.appInstances(name)))
	err = a.sup.StopMany(a.opCtx, names)
	a.forget(names...)
	a.closeSockets(name)
	if err != nil {
		a.log.Warn("stopping processes of a destroyed app", "app", name, "error", err)
	}
	if err := a.store.DeleteApp(name); err != nil {
		return mapErr(fmt.Errorf("destroy %s: %w", name, err))
	}
	if err := os.RemoveAll(a.appDir(name)); err != nil {
		a.log.Error("remove app dir", "app", name, "error", err)
	}
	a.appendEvent(name, "destroy", fmt.Sprintf("destroyed app %s (%d processes stopped)", name, len(names)))
	a.collectGarbage()
	return nil
}

// SetAppUser sets the user the app's processes run as and restarts them.
func (a *Agent) SetAppUser(ctx context.Context, name, user string) (api.App, error) {
	if err := a.begin(); err != nil {
		return api.App{}, err
	}
	defer a.end()
	if _, err := a.checkApp(name); err != nil {
		return api.App{}, err
	}
	if err := state.ValidateUser(user); err != nil {
		return api.App{}, mapErr(err)
	}
	if _, err := resolveUser(user, a.config().DefaultUser); err != nil {
		return api.App{}, fmt.Errorf("%w: app %s: %w", api.ErrInvalid, name, err)
	}
	unlock, err := a.lockApp(ctx, name)
	if err != nil {
		return api.App{}, err
	}
	defer unlock()
	app, err := a.store.SetAppUser(name, user)
	if err != nil {
		return api.App{}, mapErr(err)
	}
	shown := user
	if shown == "" {
		shown = "the default user"
	}
	a.appendEvent(name, "user", "processes run as "+shown)
	if rel, b, err := a.activeBuild(name); err == nil {
		insts, err := a.converge(a.opCtx, name, rel, b, true, true, newProgress(nil))
		setLive(insts)
		if err != nil {
			return api.App{}, fmt.Errorf("user set, but restarting %s failed: %w", name, err)
		}
	} else if !errors.Is(err, state.ErrNoActiveRelease) {
		return api.App{}, err
	}
	return a.apiApp(app)
}

// activeBuild returns the app's active release and its build.
func (a *Agent) activeBuild(app string) (state.Release, *build.Build, error) {
	rel, err := a.store.ActiveRelease(app)
	if err != nil {
		return state.Release{}, nil, err
	}
	b, err := a.builds.Get(rel.Build)
	if err != nil {
		return state.Release{}, nil, fmt.Errorf("build %s of %s v%d: %w", shortDigest(rel.Build), app, rel.Version, err)
	}
	return rel, b, nil
}

// countingReader reports the end of the upload.
type countingReader struct {
	r     io.Reader
	n     int64
	atEOF func(n int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err == io.EOF && c.atEOF != nil {
		c.atEOF(c.n)
		c.atEOF = nil
	}
	return n, err
}

// Deploy imports a tarball (an upload or a file on this host), creates
// the app on its first deploy, records a release of the build with the
// app's config and activates it: release phase, then the app's processes
// are replaced. It returns once the new processes run. A bad tarball
// changes nothing; a failed release phase leaves the old release running.
func (a *Agent) Deploy(ctx context.Context, req api.DeployRequest, progressFn api.ProgressFunc) (api.Release, error) {
	if err := a.begin(); err != nil {
		return api.Release{}, err
	}
	defer a.end()
	if err := state.ValidateAppName(req.App); err != nil {
		return api.Release{}, mapErr(fmt.Errorf("deploy: %w", err))
	}
	if (req.Body == nil) == (req.Path == "") {
		return api.Release{}, fmt.Errorf("%w: deploy: give exactly one of an upload and a path", api.ErrInvalid)
	}
	if req.Digest != "" {
		if err := state.ValidateDigest(req.Digest); err != nil {
			return api.Release{}, mapErr(fmt.Errorf("deploy: %w", err))
		}
	}
	if req.Path != "" && !filepath.IsAbs(req.Path) {
		return api.Release{}, fmt.Errorf("%w: deploy: path %q is not absolute", api.ErrInvalid, req.Path)
	}
	p := newProgress(progressFn)
	body := req.Body
	if req.Path != "" {
		f, err := os.Open(req.Path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return api.Release{}, fmt.Errorf("%w: deploy: tarball %s does not exist on the agent's host", api.ErrNotFound, req.Path)
			}
			return api.Release{}, fmt.Errorf("%w: deploy: %w", api.ErrInvalid, err)
		}
		defer f.Close()
		body = f
	}
	cr := &countingReader{r: body}
	start := time.Now()
	cr.atEOF = func(n int64) { p.step("upload", "received %d bytes", n) }

	a.gcMu.RLock()
	b, err := a.builds.Import(ctx, cr, req.Digest)
	var unpin func()
	if err == nil {
		unpin = a.pin(b.Digest)
	}
	a.gcMu.RUnlock()
	if err != nil {
		a.appendEvent(req.App, "failure", fmt.Sprintf("deploy refused: %v", err))
		return api.Release{}, mapErr(fmt.Errorf("deploy %s: %w", req.App, err))
	}
	defer unpin()
	if b.Existed {
		p.step("unpack", "build %s already imported", shortDigest(b.Digest))
	} else {
		p.step("unpack", "unpacked build %s: %d files, %d bytes in %s", shortDigest(b.Digest), b.Files, b.Size, time.Since(start).Round(time.Millisecond))
	}
	rec := state.BuildRecord{Digest: b.Digest, Size: b.Size, Files: b.Files, ImportedAt: time.Now().UTC(), Types: b.Procfile.Types()}
	if old, err := a.store.Build(b.Digest); err == nil {
		rec.ImportedAt = old.ImportedAt
	}
	if err := a.store.PutBuild(rec); err != nil {
		return api.Release{}, mapErr(fmt.Errorf("deploy %s: record build: %w", req.App, err))
	}

	unlock, err := a.lockApp(ctx, req.App)
	if err != nil {
		return api.Release{}, err
	}
	defer unlock()
	if _, err := a.store.App(req.App); errors.Is(err, state.ErrAppNotFound) {
		if _, err := a.store.CreateApp(req.App); err != nil && !errors.Is(err, state.ErrAppExists) {
			return api.Release{}, mapErr(fmt.Errorf("deploy: %w", err))
		}
		a.appendEvent(req.App, "create", "created app "+req.App+" on its first deploy")
	} else if err != nil {
		return api.Release{}, mapErr(err)
	}
	cfg, err := a.store.Config(req.App)
	if err != nil {
		return api.Release{}, mapErr(err)
	}
	formation, err := a.store.Formation(req.App)
	if err != nil {
		return api.Release{}, mapErr(err)
	}
	source := ""
	if req.Source != "" && req.Source != "cli" && req.Source != "api" {
		source = " from " + req.Source
	}
	rel, err := a.store.CreateRelease(req.App, state.NewRelease{
		Build: b.Digest, Config: cfg, Formation: defaultFormation(formation, b.Procfile),
		Description: "Deploy " + shortDigest(b.Digest) + source,
	})
	if err != nil {
		return api.Release{}, mapErr(fmt.Errorf("deploy %s: %w", req.App, err))
	}
	out, err := a.activate(req.App, rel, b, "deploy", p)
	if err != nil {
		return api.Release{}, err
	}
	return toAPIRelease(out, false), nil
}

// toAPIRelease converts a release; config values only when withConfig.
func toAPIRelease(r state.Release, withConfig bool) api.Release {
	out := api.Release{App: r.App, Version: r.Version, Build: r.Build, Description: r.Description,
		Status: string(r.Status), Reason: r.Reason, CreatedAt: r.CreatedAt,
		ConfigKeys: slices.Sorted(maps.Keys(r.Config)), Formation: r.Formation, Output: r.Output}
	if out.ConfigKeys == nil {
		out.ConfigKeys = []string{}
	}
	if out.Formation == nil {
		out.Formation = map[string]int{}
	}
	if withConfig {
		out.Config = maps.Clone(r.Config)
		if out.Config == nil {
			out.Config = map[string]string{}
		}
	}
	return out
}

// Releases lists the app's releases, newest first.
func (a *Agent) Releases(ctx context.Context, app string) ([]api.Release, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
	defer a.end()
	if _, err := a.checkApp(app); err != nil {
		return nil, err
	}
	rels, err := a.store.Releases(app, 0)
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]api.Release, 0, len(rels))
	for _, r := range rels {
		out = append(out, toAPIRelease(r, false))
	}
	return out, nil
}

// Release returns one release with its config values.
func (a *Agent) Release(ctx context.Context, app string, version int) (api.Release, error) {
	if err := a.begin(); err != nil {
		return api.Release{}, err
	}
	defer a.end()
	if _, err := a.checkApp(app); err != nil {
		return api.Release{}, err
	}
	r, err := a.store.Release(app, version)
	if err != nil {
		return api.Release{}, mapErr(fmt.Errorf("%s v%d: %w", app, version, err))
	}
	return toAPIRelease(r, true), nil
}

// Rollback makes a new release with the build and config of version (0:
// the newest release before the active one that did not fail) and
// activates it. The build must still be on disk.
func (a *Agent) Rollback(ctx context.Context, app string, version int, progressFn api.ProgressFunc) (api.Release, error) {
	if err := a.begin(); err != nil {
		return api.Release{}, err
	}
	defer a.end()
	if _, err := a.checkApp(app); err != nil {
		return api.Release{}, err
	}
	if version < 0 {
		return api.Release{}, fmt.Errorf("%w: rollback: version %d: must be a release number like 3 (v3)", api.ErrInvalid, version)
	}
	p := newProgress(progressFn)
	unlock, err := a.lockApp(ctx, app)
	if err != nil {
		return api.Release{}, err
	}
	defer unlock()
	active, err := a.store.ActiveRelease(app)
	if err != nil {
		return api.Release{}, fmt.Errorf("%w: rollback %s: nothing is deployed", api.ErrConflict, app)
	}
	var target state.Release
	if version == 0 {
		rels, err := a.store.Releases(app, 0)
		if err != nil {
			return api.Release{}, mapErr(err)
		}
		for _, r := range rels {
			if r.Version < active.Version && (r.Status == state.StatusSuperseded || r.Status == state.StatusActive) {
				target = r
				break
			}
		}
		if target.Version == 0 {
			return api.Release{}, fmt.Errorf("%w: rollback %s: no release before the active v%d to roll back to", api.ErrNotFound, app, active.Version)
		}
	} else {
		target, err = a.store.Release(app, version)
		if err != nil {
			return api.Release{}, mapErr(fmt.Errorf("rollback %s to v%d: %w", app, version, err))
		}
		if target.Status == state.StatusFailed || target.Status == state.StatusPending {
			return api.Release{}, fmt.Errorf("%w: rollback %s to v%d: v%d is %s (%s); roll back to a release that ran", api.ErrConflict, app, version, version, target.Status, target.Reason)
		}
	}
	if !a.builds.Has(target.Build) {
		return api.Release{}, fmt.Errorf("%w: rollback %s to v%d: its build %s was garbage-collected (only the builds of the newest %d releases are kept); deploy that tarball again",
			api.ErrConflict, app, target.Version, shortDigest(target.Build), a.config().Retention)
	}
	b, err := a.builds.Get(target.Build)
	if err != nil {
		return api.Release{}, mapErr(err)
	}
	formation, err := a.store.Formation(app)
	if err != nil {
		return api.Release{}, mapErr(err)
	}
	rel, err := a.store.CreateRelease(app, state.NewRelease{Build: target.Build, Config: target.Config,
		Formation: defaultFormation(formation, b.Procfile), Description: fmt.Sprintf("Rollback to v%d", target.Version)})
	if err != nil {
		return api.Release{}, mapErr(err)
	}
	p.step("record", "created v%d with the build and config of v%d", rel.Version, target.Version)
	out, err := a.activate(app, rel, b, "rollback", p)
	if err != nil {
		return api.Release{}, err
	}
	return toAPIRelease(out, false), nil
}

// Config returns the app's config: that of its active release, or what
// was set before the first deploy.
func (a *Agent) Config(ctx context.Context, app string) (map[string]string, error) {
	if err := a.begin(); err != nil {
		return nil, err
	}
	defer a.end()
	if _, err := a.checkApp(app); err != nil {
		return nil, err
	}
	cfg, err := a.store.Config(app)
	if cfg == nil && err == nil {
		cfg = map[string]string{}
	}
	return cfg, mapErr(err)
}

// SetConfig sets and unsets config vars in one new release ("Set FOO,
// BAR; unset BAZ") with the active build, and restarts the app's
// processes on it. A change that changes nothing (values already set,
// names already unset) makes no release and restarts nothing: it returns
// the active release as it is, so scripts can apply a config
// idempotently. Before the first deploy the config is only stored, and
// the release returned has no version. Whatever the path, the release
// returned names the config's keys, never its values.
// Names follow state.ValidateEnvName; PORT, TMPDIR and BERTH_* are set
// by berth and cannot be configured.
func (a *Agent) SetConfig(ctx context.Context, app string, change api.ConfigChange, progressFn api.ProgressFunc) (api.Release, error) {
	if err := a.begin(); err != nil {
		return api.Release{}, err
	}
	defer a.end()
	if _, err := a.checkApp(app); err != nil {
		return api.Release{}, err
	}
	if len(change.Set) == 0 && len(change.Unset) == 0 {
		return api.Release{}, fmt.Errorf("%w: config: nothing to set or unset", api.ErrInvalid)
	}
	for _, name := range slices.Concat(slices.Collect(maps.Keys(change.Set)), change.Unset) {
		if err := state.ValidateEnvName(name); err != nil {
			return api.Release{}, mapErr(fmt.Errorf("config: %w", err))
		}
		if reservedEnv(name) {
			return api.Release{}, fmt.Errorf("%w: config: %s is set by berth for every process and cannot be configured", api.ErrInvalid, name)
		}
	}
	for name, v := range change.Set {
		if strings.IndexByte(v, 0) >= 0 {
			return api.Release{}, fmt.Errorf("%w: config: the value of %s holds a NUL byte", api.ErrInvalid, name)
		}
		if slices.Contains(change.Unset, name) {
			return api.Release{}, fmt.Errorf("%w: config: %s is both set and unset", api.ErrInvalid, name)
		}
	}
	p := newProgress(progressFn)
	unlock, err := a.lockApp(ctx, app)
	if err != nil {
		return api.Release{}, err
	}
	defer unlock()
	cur, err := a.store.Config(app)
	if err != nil {
		return api.Release{}, mapErr(err)
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
			return toAPIRelease(state.Release{App: app, Config: next}, false), nil
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
			return api.Release{}, mapErr(err)
		}
		a.appendEvent(app, "config", description+" (applies from the first deploy)")
		p.step("done", "config saved; it applies from the first deploy")
		return toAPIRelease(state.Release{App: app, Description: description, Config: next}, false), nil
	} else if aerr != nil {
		return api.Release{}, mapErr(aerr)
	}
	if !a.builds.Has(active.Build) {
		return api.Release{}, fmt.Errorf("build %s of the active v%d is missing from the build store", shortDigest(active.Build), active.Version)
	}
	b, err := a.builds.Get(active.Build)
	if err != nil {
		return api.Release{}, mapErr(err)
	}
	formation, err := a.store.Formation(app)
	if err != nil {
		return api.Release{}, mapErr(err)
	}
	rel, err := a.store.CreateRelease(app, state.NewRelease{Build: active.Build, Config: next,
		Formation: formation, Description: description})
	if err != nil {
		return api.Release{}, mapErr(err)
	}
	p.step("record", "created v%d", rel.Version)
	out, err := a.activate(app, rel, b, "config", p)
	if err != nil {
		return api.Release{}, err
	}
	return toAPIRelease(out, false), nil
}
