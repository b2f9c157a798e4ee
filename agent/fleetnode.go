package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
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

func (a *Agent) applyFleet(ctx context.Context, r fleet.Release) error {
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
	if _, err := a.store.App(r.App); errors.Is(err, state.ErrAppNotFound) {
		if _, err := a.store.CreateApp(r.App); err != nil && !errors.Is(err, state.ErrAppExists) {
			return fmt.Errorf("fleet: %w", err)
		}
		a.appendEvent(r.App, "create", "created app "+r.App+" for fleet v"+strconv.Itoa(r.Version))
	} else if err != nil {
		return err
	}
	if active, err := a.store.ActiveRelease(r.App); err == nil && fleetVersion(active) == r.Version &&
		active.Build == r.Build && maps.Equal(active.Config, r.Config) {
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
