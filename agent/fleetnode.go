package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/fleet"
	"github.com/berth-dev/berth/agent/rollout"
	"github.com/berth-dev/berth/state"
)

// fleetNode is the agent as fleet mode sees it (fleet.Node): a fleet
// release becomes a local release described "Fleet vN: ...", switched
// to through the same activate as a deploy, so the release phase,
// health checks, probation and local rollback are the same.
type fleetNode struct{ a *Agent }

var _ fleet.Node = fleetNode{}

// fleetVersionRE finds the fleet version in a local release's
// description.
var fleetVersionRE = regexp.MustCompile(`^Fleet v([0-9]+):`)

// fleetVersion returns the fleet version a local release records (0:
// not a fleet release).
func fleetVersion(r state.Release) int {
	m := fleetVersionRE.FindStringSubmatch(r.Description)
	if m == nil {
		return 0
	}
	v, _ := strconv.Atoi(m[1])
	return v
}

// Apply switches the app to r unless its active release already is r.
// It waits through the probation: a release that fails there is rolled
// back locally and Apply returns the error.
func (n fleetNode) Apply(ctx context.Context, r fleet.Release) error {
	a := n.a
	check := func() error { return checkFleetRelease(r) }
	_, err := do(a, ctx, opts{app: r.App, check: check}, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, a.applyFleet(ctx, r)
	})
	return err
}

// checkFleetRelease refuses a release a local deploy would refuse.
func checkFleetRelease(r fleet.Release) error {
	if r.Version < 1 {
		return fmt.Errorf("%w: fleet release version %d", api.ErrInvalid, r.Version)
	}
	if err := state.ValidateDigest(r.Build); err != nil {
		return fmt.Errorf("fleet v%d: %w", r.Version, err)
	}
	if len(r.Config) > 0 {
		if err := checkConfigChange(api.ConfigChange{Set: r.Config}); err != nil {
			return fmt.Errorf("fleet v%d: %w", r.Version, err)
		}
	}
	if len(r.Formation) > 0 {
		if err := checkFormation(r.Formation); err != nil {
			return fmt.Errorf("fleet v%d: %w", r.Version, err)
		}
	}
	return nil
}

func (a *Agent) applyFleet(ctx context.Context, r fleet.Release) (retErr error) {
	a.gcMu.RLock()
	unpin := a.pin(r.Build)
	a.gcMu.RUnlock()
	defer unpin()
	if !a.builds.Has(r.Build) {
		return fmt.Errorf("fleet v%d: build %s is not imported", r.Version, shortDigest(r.Build))
	}
	b, err := a.builds.Get(r.Build)
	if err != nil {
		return err
	}
	unlock, err := a.lockApp(ctx, r.App)
	if err != nil {
		return err
	}
	defer unlock()
	app, err := a.store.App(r.App)
	if errors.Is(err, state.ErrAppNotFound) {
		if app, err = a.store.CreateApp(r.App); err != nil && !errors.Is(err, state.ErrAppExists) {
			return fmt.Errorf("fleet: %w", err)
		}
		a.appendEvent(r.App, "create", "created app "+r.App+" for fleet v"+strconv.Itoa(r.Version))
	} else if err != nil {
		return err
	}
	active, activeErr := a.store.ActiveRelease(r.App)
	converged := activeErr == nil && fleetVersion(active) == r.Version &&
		active.Build == r.Build && maps.Equal(active.Config, r.Config)
	if app.Stopped {
		// The fleet places the app here again: the counts of the active
		// release come back (those of r with a switch below).
		var f map[string]int
		if activeErr == nil {
			f = active.Formation
		}
		if _, err := a.store.ResumeApp(r.App, f); err != nil {
			return fmt.Errorf("fleet v%d: start %s again: %w", r.Version, r.App, err)
		}
		a.appendEvent(r.App, "scale", "placed on this node again by the fleet: the processes start")
		defer func() {
			if retErr != nil && !converged {
				a.startActive(r.App) // after a switch that failed, what it kept runs
			}
		}()
		if converged {
			insts, err := a.converge(a.opCtx, r.App, active, b, false, true, newProgress(nil))
			setLive(insts)
			if err != nil {
				return fmt.Errorf("fleet v%d: start %s again: %w", r.Version, r.App, err)
			}
			return nil
		}
	}
	if converged {
		return nil // converged already: nothing to do
	}
	formation, err := a.store.Formation(r.App)
	if err != nil {
		return err
	}
	formation = maps.Clone(formation)
	if formation == nil {
		formation = map[string]int{}
	}
	maps.Copy(formation, r.Formation)
	rel, err := a.store.CreateRelease(r.App, state.NewRelease{
		Build: r.Build, Config: r.Config, Formation: rollout.DefaultFormation(formation, b.Procfile.Types()),
		Description: fmt.Sprintf("Fleet v%d: %s", r.Version, r.Description),
	})
	if err != nil {
		return fmt.Errorf("fleet v%d of %s: %w", r.Version, r.App, err)
	}
	if _, _, err := a.activate(r.App, rel, b, "deploy", true, newProgress(nil)); err != nil {
		// The error names the local versions: say which is which.
		return fmt.Errorf("as local release v%d: %w", rel.Version, err)
	}
	return nil
}

// AppStatus returns the fleet version of the app's active release, how
// many of its instances are up (running, and healthy where the type has
// a check), and the newest fleet release after it that failed. An app
// that does not exist has the zero status.
func (n fleetNode) AppStatus(ctx context.Context, app string) (fleet.LocalStatus, error) {
	a := n.a
	if err := a.begin(); err != nil {
		return fleet.LocalStatus{}, err
	}
	defer a.end()
	active, err := a.store.ActiveRelease(app)
	if errors.Is(err, state.ErrAppNotFound) || errors.Is(err, state.ErrNoActiveRelease) {
		return fleet.LocalStatus{}, nil
	} else if err != nil {
		return fleet.LocalStatus{}, err
	}
	ls := fleet.LocalStatus{Version: fleetVersion(active)}
	if rec, err := a.store.App(app); err == nil {
		ls.Stopped = rec.Stopped
	}
	for _, p := range a.processes(app) {
		if p.Mode == "one-off" || p.Release != active.Version {
			continue
		}
		ls.Instances++
		if p.State == "running" && (p.Health == "" || p.Health == "healthy") {
			ls.Healthy++
		}
	}
	// The newest few: failures pile up above the active release only
	// while a rollout keeps failing here.
	rels, err := a.store.Releases(app, 10)
	if err != nil {
		return fleet.LocalStatus{}, err
	}
	for _, r := range rels { // newest first
		if r.Version <= active.Version {
			break
		}
		if v := fleetVersion(r); v > 0 && r.Status == state.StatusFailed {
			ls.Failed, ls.Reason = v, r.Reason
			break
		}
	}
	return ls, nil
}

// Stop scales every process type of a fleet app to 0 and marks it
// stopped in the store, so a restarted agent starts none of its
// processes; its releases, builds, config and ports stay, and Apply
// brings it back with the active release's formation. An app that does
// not exist, has no active release or whose active release is not a
// fleet release (the node's own) is left alone. Stopping again only
// makes sure nothing runs.
func (n fleetNode) Stop(ctx context.Context, app string) error {
	a := n.a
	return do0(a, ctx, opts{app: app, lock: true}, func(context.Context) error {
		return a.stopFleet(app)
	})
}

func (a *Agent) stopFleet(app string) error {
	rel, b, err := a.activeBuild(app)
	if errors.Is(err, state.ErrAppNotFound) || errors.Is(err, state.ErrNoActiveRelease) {
		return nil
	} else if err != nil {
		return err
	}
	if fleetVersion(rel) == 0 {
		return nil // not a fleet app: the node's own
	}
	rec, err := a.store.App(app)
	if err != nil {
		return err
	}
	if !rec.Stopped {
		types := slices.DeleteFunc(b.Procfile.Types(), func(t string) bool { return t == "release" })
		if _, err := a.store.StopApp(app, types); err != nil {
			return fmt.Errorf("stop %s: %w", app, err)
		}
		a.appendEvent(app, "scale", "not placed on this node by the fleet any more: every process type scaled to 0")
	}
	insts, err := a.converge(a.opCtx, app, rel, b, false, true, newProgress(nil))
	setLive(insts)
	if err != nil {
		return fmt.Errorf("stop %s: %w", app, err)
	}
	return nil
}

// startActive starts what the formation says of the app's active
// release, if it has one; errors are logged: the caller already fails.
func (a *Agent) startActive(app string) {
	rel, b, err := a.activeBuild(app)
	if err != nil {
		return
	}
	insts, err := a.converge(a.opCtx, app, rel, b, false, false, newProgress(nil))
	setLive(insts)
	if err != nil {
		a.log.Error("start the active release again", "app", app, "version", rel.Version, "error", err)
	}
}

// HasBuild reports whether the build is imported.
func (n fleetNode) HasBuild(digest string) bool { return n.a.builds.Has(digest) }

// ImportBuild imports a tarball as a deploy does, without a release.
func (n fleetNode) ImportBuild(ctx context.Context, body io.Reader, digest string) error {
	a := n.a
	if err := a.begin(); err != nil {
		return err
	}
	defer a.end()
	a.gcMu.RLock()
	b, err := a.builds.Import(ctx, body, digest)
	a.gcMu.RUnlock()
	if err != nil {
		return fmt.Errorf("import build %s: %w", shortDigest(digest), err)
	}
	rec := state.BuildRecord{Digest: b.Digest, Size: b.Size, Files: b.Files, ImportedAt: time.Now().UTC(), Types: b.Procfile.Types()}
	if old, err := a.store.Build(b.Digest); err == nil {
		rec.ImportedAt = old.ImportedAt
	}
	return a.store.PutBuild(rec)
}
