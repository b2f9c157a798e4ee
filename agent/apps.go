package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/state/build"
)

// The operations on apps and on the agent itself: Info, Apps, CreateApp,
// DestroyApp and SetAppUser. Each runs through do (op.go).

var _ api.Backend = (*Agent)(nil)

// Info describes the agent.
func (a *Agent) Info(ctx context.Context) (api.AgentInfo, error) {
	return do(a, ctx, opts{}, func(context.Context) (api.AgentInfo, error) {
		apps, err := a.store.Apps()
		if err != nil {
			return api.AgentInfo{}, err
		}
		n := len(a.appInstances(""))
		cfg := a.config()
		return api.AgentInfo{Version: cfg.Version, PID: os.Getpid(), DataDir: cfg.DataDir,
			StartedAt: a.startedAt, Apps: len(apps), Processes: n}, nil
	})
}

// Apps lists the apps.
func (a *Agent) Apps(ctx context.Context) ([]api.App, error) {
	return do(a, ctx, opts{}, func(context.Context) ([]api.App, error) {
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
	})
}

// CreateApp creates an app with no release.
func (a *Agent) CreateApp(ctx context.Context, name string) (api.App, error) {
	return do(a, ctx, opts{}, func(context.Context) (api.App, error) {
		app, err := a.store.CreateApp(name)
		if err != nil {
			return api.App{}, err
		}
		a.appendEvent(name, "create", "created app "+name)
		a.markChanged()
		return a.apiApp(app)
	})
}

// DestroyApp stops the app's processes and deletes it: its releases,
// config, formation, ports and apps/<app>/ directory. Its builds stay
// until garbage collection finds them unreferenced.
func (a *Agent) DestroyApp(ctx context.Context, name string) error {
	return do0(a, ctx, opts{app: name, exists: true, lock: true}, func(context.Context) error {
		insts := a.appInstances(name)
		names := slices.Collect(maps.Keys(insts))
		a.stopOneOffs(name)
		err := a.sup.StopMany(a.opCtx, names)
		a.forget(pick(insts, names)...)
		a.resteerStopped(name, pick(insts, names))
		a.closeSockets(name)
		if err != nil {
			a.log.Warn("stopping processes of a destroyed app", "app", name, "error", err)
		}
		if err := a.store.DeleteApp(name); err != nil {
			return fmt.Errorf("destroy %s: %w", name, err)
		}
		if err := os.RemoveAll(a.appDir(name)); err != nil {
			a.log.Error("remove app dir", "app", name, "error", err)
		}
		// Its uid is free again: the next app to get it must not
		// inherit its builds.
		a.pruneBuildAccess()
		a.appendEvent(name, "destroy", fmt.Sprintf("destroyed app %s (%d processes stopped)", name, len(names)))
		a.collectGarbage()
		return nil
	})
}

// SetAppUser sets the user the app's processes run as and restarts them.
func (a *Agent) SetAppUser(ctx context.Context, name, user string) (api.App, error) {
	check := func() error {
		if err := state.ValidateUser(user); err != nil {
			return err
		}
		cfg := a.config()
		if user == "" && cfg.DefaultUser == "" && os.Geteuid() == 0 {
			return nil // its own uid
		}
		if _, err := resolveUser(user, cfg.DefaultUser); err != nil {
			return fmt.Errorf("%w: app %s: %w", api.ErrInvalid, name, err)
		}
		return nil
	}
	return do(a, ctx, opts{app: name, exists: true, check: check, lock: true}, func(context.Context) (api.App, error) {
		app, err := a.store.SetAppUser(name, user)
		if err != nil {
			return api.App{}, err
		}
		shown := user
		if shown == "" {
			shown = "the default user (its own uid as root, unless --default-user is set)"
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
	})
}

func (a *Agent) apiApp(app state.App) (api.App, error) {
	f, err := a.store.Formation(app.Name)
	if err != nil {
		return api.App{}, err
	}
	return api.App{Name: app.Name, User: app.User, CreatedAt: app.CreatedAt, ActiveRelease: app.ActiveRelease, Formation: f}, nil
}

// appendEvent records an event and wakes the event followers. A store
// error is logged: the operation it describes has happened anyway.
func (a *Agent) appendEvent(app, kind, msg string) {
	if _, err := a.store.AppendEvent(app, kind, msg); err != nil {
		a.log.Error("record event", "app", app, "kind", kind, "error", err)
		return
	}
	a.events.Notify()
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
