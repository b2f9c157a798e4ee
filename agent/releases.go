package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/rollout"
	"github.com/berth-dev/berth/state"
)

// The operations on releases: Deploy, Releases, Release and Rollback.
// Each runs through do (op.go); the switch itself is activate's
// (switch.go).

// Deploy imports a tarball (a stream: an upload, or an inbox file the
// inbox opened itself; never a path a client names), creates
// the app on its first deploy, records a release of the build with the
// app's config and activates it: release phase, then the app's processes
// are replaced. It returns once the new processes run. A bad tarball
// changes nothing; a failed release phase leaves the old release running.
// The app's lock is taken only once the build is imported, so an upload
// does not hold up other changes to the app.
func (a *Agent) Deploy(ctx context.Context, req api.DeployRequest, progressFn api.ProgressFunc) (api.Release, error) {
	check := func() error {
		if err := state.ValidateAppName(req.App); err != nil {
			return fmt.Errorf("deploy: %w", err)
		}
		if req.Body == nil {
			return fmt.Errorf("%w: deploy: no tarball given", api.ErrInvalid)
		}
		if req.Digest != "" {
			if err := state.ValidateDigest(req.Digest); err != nil {
				return fmt.Errorf("deploy: %w", err)
			}
		}
		return nil
	}
	return do(a, ctx, opts{check: check}, func(ctx context.Context) (api.Release, error) {
		return a.deploy(ctx, req, newProgress(progressFn))
	})
}

func (a *Agent) deploy(ctx context.Context, req api.DeployRequest, p *progress) (api.Release, error) {
	cr := &countingReader{r: req.Body}
	start := time.Now()
	cr.atEOF = func(n int64) { p.step("upload", "received %d bytes", n) }

	// The upload ends early when the client goes away or the agent
	// begins shutting down (ctx ends with both).
	a.gcMu.RLock()
	b, err := a.builds.Import(ctx, cr, req.Digest)
	var unpin func()
	if err == nil {
		unpin = a.pin(b.Digest)
	}
	a.gcMu.RUnlock()
	if err != nil && a.opCtx.Err() != nil {
		return api.Release{}, fmt.Errorf("%w: deploy %s: the upload was cut short", errShuttingDown, req.App)
	}
	if err != nil {
		a.appendEvent(req.App, "failure", fmt.Sprintf("deploy refused: %v", err))
		return api.Release{}, fmt.Errorf("deploy %s: %w", req.App, err)
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
		return api.Release{}, fmt.Errorf("deploy %s: record build: %w", req.App, err)
	}

	unlock, err := a.lockApp(ctx, req.App)
	if err != nil {
		return api.Release{}, err
	}
	defer unlock()
	if _, err := a.store.App(req.App); errors.Is(err, state.ErrAppNotFound) {
		if _, err := a.store.CreateApp(req.App); err != nil && !errors.Is(err, state.ErrAppExists) {
			return api.Release{}, fmt.Errorf("deploy: %w", err)
		}
		a.appendEvent(req.App, "create", "created app "+req.App+" on its first deploy")
	} else if err != nil {
		return api.Release{}, err
	}
	cfg, err := a.store.Config(req.App)
	if err != nil {
		return api.Release{}, err
	}
	formation, err := a.store.Formation(req.App)
	if err != nil {
		return api.Release{}, err
	}
	source := ""
	if req.Source != "" && req.Source != "cli" && req.Source != "api" {
		source = " from " + req.Source
	}
	rel, err := a.store.CreateRelease(req.App, state.NewRelease{
		Build: b.Digest, Config: cfg, Formation: rollout.DefaultFormation(formation, b.Procfile.Types()),
		Description: "Deploy " + shortDigest(b.Digest) + source,
	})
	if err != nil {
		return api.Release{}, fmt.Errorf("deploy %s: %w", req.App, err)
	}
	out, probation, err := a.activate(req.App, rel, b, "deploy", api.WaitsForProbation(ctx), p)
	if err != nil {
		return api.Release{}, err
	}
	res := toAPIRelease(out, false)
	res.Probation = probation
	return res, nil
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

// Releases lists the app's releases, newest first.
func (a *Agent) Releases(ctx context.Context, app string) ([]api.Release, error) {
	return do(a, ctx, opts{app: app, exists: true}, func(context.Context) ([]api.Release, error) {
		rels, err := a.store.Releases(app, 0)
		if err != nil {
			return nil, err
		}
		out := make([]api.Release, 0, len(rels))
		for _, r := range rels {
			out = append(out, a.withUnrecorded(toAPIRelease(r, false)))
		}
		return out, nil
	})
}

// Release returns one release with its config values.
func (a *Agent) Release(ctx context.Context, app string, version int) (api.Release, error) {
	return do(a, ctx, opts{app: app, exists: true}, func(context.Context) (api.Release, error) {
		r, err := a.store.Release(app, version)
		if err != nil {
			return api.Release{}, fmt.Errorf("%s v%d: %w", app, version, err)
		}
		return a.withUnrecorded(toAPIRelease(r, true)), nil
	})
}

// Rollback makes a new release with the build and config of version (0:
// the newest release before the active one that did not fail) and
// activates it. The build must still be on disk.
func (a *Agent) Rollback(ctx context.Context, app string, version int, progressFn api.ProgressFunc) (api.Release, error) {
	check := func() error {
		if version < 0 {
			return fmt.Errorf("%w: rollback: version %d: must be a release number like 3 (v3)", api.ErrInvalid, version)
		}
		return nil
	}
	return do(a, ctx, opts{app: app, exists: true, check: check, lock: true}, func(context.Context) (api.Release, error) {
		return a.rollback(app, version, api.WaitsForProbation(ctx), newProgress(progressFn))
	})
}

func (a *Agent) rollback(app string, version int, wait bool, p *progress) (api.Release, error) {
	active, err := a.store.ActiveRelease(app)
	if err != nil {
		return api.Release{}, fmt.Errorf("%w: rollback %s: nothing is deployed", api.ErrConflict, app)
	}
	var target state.Release
	if version == 0 {
		rels, err := a.store.Releases(app, 0)
		if err != nil {
			return api.Release{}, err
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
			return api.Release{}, fmt.Errorf("rollback %s to v%d: %w", app, version, err)
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
		return api.Release{}, err
	}
	formation, err := a.store.Formation(app)
	if err != nil {
		return api.Release{}, err
	}
	rel, err := a.store.CreateRelease(app, state.NewRelease{Build: target.Build, Config: target.Config,
		Formation: rollout.DefaultFormation(formation, b.Procfile.Types()), Description: fmt.Sprintf("Rollback to v%d", target.Version)})
	if err != nil {
		return api.Release{}, err
	}
	p.step("record", "created v%d with the build and config of v%d", rel.Version, target.Version)
	out, probation, err := a.activate(app, rel, b, "rollback", wait, p)
	if err != nil {
		return api.Release{}, err
	}
	res := toAPIRelease(out, false)
	res.Probation = probation
	return res, nil
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
