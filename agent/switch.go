package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/state/build"
	"github.com/berth-dev/berth/supervisor"
)

// progress reports the steps of a long operation with the time each took.
type progress struct {
	fn   api.ProgressFunc
	last time.Time
}

func newProgress(fn api.ProgressFunc) *progress {
	return &progress{fn: fn, last: time.Now()}
}

// step reports a finished step; its Elapsed is the time since the
// previous step (or mark).
func (p *progress) step(step, format string, args ...any) {
	now := time.Now()
	if p.fn != nil {
		p.fn(api.Progress{Time: now, Step: step, Message: fmt.Sprintf(format, args...), Elapsed: now.Sub(p.last)})
	}
	p.last = now
}

// mark starts timing the next step.
func (p *progress) mark() { p.last = time.Now() }

// shortDigest is the first 7 characters of a digest, as git shows them.
func shortDigest(d string) string {
	if len(d) > 7 {
		return d[:7]
	}
	return d
}

// defaultFormation returns the formation to record for a build: the
// app's formation plus 1 for each type of the Procfile it does not have
// yet (except the release phase).
func defaultFormation(cur map[string]int, pf build.Procfile) map[string]int {
	f := maps.Clone(cur)
	if f == nil {
		f = map[string]int{}
	}
	for _, t := range pf.Types() {
		if _, ok := f[t]; !ok && t != "release" {
			f[t] = 1
		}
	}
	return f
}

// desiredInstances lists the instances ("web.1") a build runs under a
// formation: the formation's count for each Procfile type (1 for a type
// the formation does not name), never the release phase; types of the
// formation the build does not have are skipped.
func desiredInstances(formation map[string]int, pf build.Procfile) []string {
	var out []string
	for _, t := range pf.Types() {
		if t == "release" {
			continue
		}
		n, ok := formation[t]
		if !ok {
			n = 1
		}
		for i := 1; i <= n; i++ {
			out = append(out, t+"."+strconv.Itoa(i))
		}
	}
	slices.SortFunc(out, compareInstances)
	return out
}

// compareInstances orders "web.2" before "web.10".
func compareInstances(a, b string) int {
	at, an := splitInstance(a)
	bt, bn := splitInstance(b)
	if c := strings.Compare(at, bt); c != 0 {
		return c
	}
	return an - bn
}

func splitInstance(inst string) (string, int) {
	t, n, _ := strings.Cut(inst, ".")
	i, _ := strconv.Atoi(n)
	return t, i
}

// appDir returns $DATA/apps/<app>/<elem...>.
func (a *Agent) appDir(app string, elem ...string) string {
	return a.config().path(append([]string{"apps", app}, elem...)...)
}

// prepareAppDirs creates apps/<app>/ (0755), its logs/ (0750, written by
// the agent) and the app's TMPDIR (0700, owned by the app's user).
func (a *Agent) prepareAppDirs(app string, who runAs) (tmp string, err error) {
	if err := os.MkdirAll(a.appDir(app), 0o755); err != nil {
		return "", fmt.Errorf("create app dir: %w", err)
	}
	if err := os.MkdirAll(a.appDir(app, "logs"), 0o750); err != nil {
		return "", fmt.Errorf("create log dir: %w", err)
	}
	tmp = a.appDir(app, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", fmt.Errorf("create TMPDIR: %w", err)
	}
	if who.Cred != nil {
		if err := os.Lchown(tmp, who.UID, who.GID); err != nil {
			return "", fmt.Errorf("hand TMPDIR to user %s: %w", who.Name, err)
		}
	}
	return tmp, nil
}

// swapCurrent points apps/<app>/current at dir atomically: a new link
// under a temporary name is renamed over the old one, and the directory
// is fsynced so the swap survives a power cut.
func (a *Agent) swapCurrent(app, dir string) error {
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	if err := os.MkdirAll(a.appDir(app), 0o755); err != nil {
		return fmt.Errorf("swap current: %w", err)
	}
	tmp := a.appDir(app, "current.tmp-"+hex.EncodeToString(rnd[:]))
	if err := os.Symlink(dir, tmp); err != nil {
		return fmt.Errorf("swap current: %w", err)
	}
	if err := os.Rename(tmp, a.appDir(app, "current")); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("swap current: %w", err)
	}
	return syncDir(a.appDir(app))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// specFor turns one instance of a release into what the supervisor runs.
func (a *Agent) specFor(cfg Config, app string, rel state.Release, b *build.Build, inst string, who runAs, tmp string) (supervisor.Spec, *instance, error) {
	typ, _ := splitInstance(inst)
	command, ok := b.Procfile.Command(typ)
	if !ok {
		return supervisor.Spec{}, nil, fmt.Errorf("%w: process type %q is not in the Procfile of build %s", api.ErrNotFound, typ, shortDigest(b.Digest))
	}
	port, err := a.store.Port(app, inst, cfg.BasePort)
	if err != nil {
		return supervisor.Spec{}, nil, mapErr(fmt.Errorf("allocate port: %w", err))
	}
	pm := b.Manifest.Processes[typ]
	sig, err := parseSignal(pm.StopSignal)
	if err != nil {
		return supervisor.Spec{}, nil, fmt.Errorf("%w: manifest of %s: %w", api.ErrInvalid, typ, err)
	}
	stopTimeout := cfg.StopTimeout
	if pm.StopTimeout > 0 {
		stopTimeout = time.Duration(pm.StopTimeout)
	}
	name := app + "/" + inst
	logPath := a.appDir(app, "logs", inst+".log")
	spec := supervisor.Spec{
		Name:    name,
		Command: command,
		Env: processEnv(envParams{Config: rel.Config, App: app, Version: rel.Version, Instance: inst,
			Build: rel.Build, Port: port, TmpDir: tmp, Allow: cfg.AllowEnv}),
		Dir:         b.Dir,
		Credential:  who.Cred,
		StopSignal:  sig,
		StopTimeout: stopTimeout,
		Backoff:     cfg.Backoff,
		Log: supervisor.LogConfig{
			Path: logPath, MaxSize: cfg.LogMaxSize, MaxFiles: cfg.LogMaxFiles,
			Fields: map[string]string{"BERTH_APP": app, "BERTH_PROCESS": inst, "BERTH_RELEASE": "v" + strconv.Itoa(rel.Version)},
		},
	}
	return spec, &instance{Name: name, App: app, Instance: inst, Type: typ, Release: rel.Version,
		Build: rel.Build, Port: port, Command: command, Mode: "bind", LogPath: logPath}, nil
}

// converge makes the app's processes match rel under the app's current
// formation. With restart, every instance is replaced (a release
// switch: stop the old ones, then start the new ones); without, only
// missing instances are started and surplus ones stopped (scale). It
// returns once every started instance runs.
func (a *Agent) converge(ctx context.Context, app string, rel state.Release, b *build.Build, restart bool, p *progress) error {
	cfg := a.config()
	appRec, err := a.store.App(app)
	if err != nil {
		return mapErr(err)
	}
	formation, err := a.store.Formation(app)
	if err != nil {
		return mapErr(err)
	}
	want := desiredInstances(formation, b.Procfile)
	have := a.appInstances(app)

	var stop []string
	for name, inst := range have {
		if restart || inst.Release != rel.Version || !slices.Contains(want, inst.Instance) {
			stop = append(stop, name)
		}
	}
	var start []string
	for _, inst := range want {
		cur := have[app+"/"+inst]
		if restart || cur == nil || cur.Release != rel.Version {
			start = append(start, inst)
		}
	}
	slices.Sort(stop)

	// Everything that can fail on bad input (user, ports, manifest) is
	// checked before any old process is touched.
	var specs []supervisor.Spec
	var insts []*instance
	if len(start) > 0 {
		who, err := resolveUser(appRec.User, cfg.DefaultUser)
		if err != nil {
			return fmt.Errorf("%w: app %s: %w", api.ErrInvalid, app, err)
		}
		tmp, err := a.prepareAppDirs(app, who)
		if err != nil {
			return err
		}
		for _, inst := range start {
			spec, in, err := a.specFor(cfg, app, rel, b, inst, who, tmp)
			if err != nil {
				return err
			}
			specs = append(specs, spec)
			insts = append(insts, in)
		}
	}

	if len(stop) > 0 {
		p.mark()
		// Stop forgets an instance even when it fails (its group is
		// killed when ctx ends), so forget them all either way.
		err := a.sup.StopMany(ctx, stop)
		a.forget(stop...)
		if ctx.Err() != nil {
			return fmt.Errorf("stop old instances: %w", ctx.Err())
		}
		if err != nil {
			a.log.Warn("stopping old instances", "app", app, "error", err)
		}
		p.step("stop", "stopped %d old instance(s)", len(stop))
	}
	if len(specs) == 0 {
		return nil
	}

	p.mark()
	events, unsubscribe := a.sup.Subscribe(4 * len(specs))
	defer unsubscribe()
	a.instMu.Lock()
	for _, in := range insts {
		a.insts[in.Name] = in
	}
	a.instMu.Unlock()
	a.markChanged()
	var startErrs []error
	names := make([]string, 0, len(specs))
	for _, spec := range specs {
		names = append(names, spec.Name)
		err := a.sup.Start(spec)
		if errors.Is(err, supervisor.ErrExists) {
			// Supervised but not ours (a previous start whose record
			// we lost): replace it.
			if _, serr := a.sup.Stop(ctx, spec.Name); serr == nil || errors.Is(serr, supervisor.ErrNotFound) {
				err = a.sup.Start(spec)
			}
		}
		var spawn *supervisor.SpawnError
		switch {
		case errors.As(err, &spawn):
			// Supervised and retried with backoff, but the switch failed.
			startErrs = append(startErrs, err)
		case err != nil:
			// Not supervised at all: forget it.
			a.forget(spec.Name)
			startErrs = append(startErrs, fmt.Errorf("start %s: %w", spec.Name, err))
		}
	}
	if err := errors.Join(startErrs...); err != nil {
		return err
	}
	if err := a.waitUp(ctx, cfg, names, events); err != nil {
		return err
	}
	// The supervisor events record the processes too; doing it here as
	// well means a switch reports done only once its records are durable.
	a.recordAll(insts)
	p.step("start", "%d instance(s) of v%d running", len(names), rel.Version)
	return nil
}

// waitUp waits until every named instance is up: running, and healthy
// through a.healthy when that is set. It fails when an instance crash-
// loops or Config.StartTimeout passes.
func (a *Agent) waitUp(ctx context.Context, cfg Config, names []string, events <-chan supervisor.Event) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	pending := map[string]bool{}
	for _, name := range names {
		pending[name] = true
	}
	check := func(name string, st supervisor.State, exit *supervisor.Exit) error {
		switch st {
		case supervisor.StateRunning:
			delete(pending, name)
		case supervisor.StateCrashed:
			msg := "no exit status"
			if exit != nil {
				msg = exit.String()
			} else if st, err := a.sup.Status(name); err == nil && st.LastError != "" {
				msg = st.LastError
			}
			_, inst := splitName(name)
			return fmt.Errorf("%w: %s keeps exiting (%s); see berth logs", ErrCrashed, inst, msg)
		}
		return nil
	}
	// Status catches up with what the events cannot tell: changes before
	// the subscription, and events lost when its buffer was full.
	catchUp := func() error {
		for name := range pending {
			st, err := a.sup.Status(name)
			if err != nil {
				continue
			}
			if err := check(name, st.State, st.LastExit); err != nil {
				return err
			}
		}
		return nil
	}
	if err := catchUp(); err != nil {
		return err
	}
	for len(pending) > 0 {
		select {
		case ev, ok := <-events:
			if !ok {
				return fmt.Errorf("wait for instances: %w", supervisor.ErrClosed)
			}
			if ev.Missed > 0 {
				if err := catchUp(); err != nil {
					return err
				}
			}
			if !pending[ev.Name] {
				continue
			}
			if err := check(ev.Name, ev.State, ev.Exit); err != nil {
				return err
			}
		case <-ctx.Done():
			left := slices.Sorted(maps.Keys(pending))
			if ctx.Err() == context.DeadlineExceeded {
				return fmt.Errorf("%w: %s not running after %s", ErrStartTimeout, strings.Join(left, ", "), cfg.StartTimeout)
			}
			return fmt.Errorf("wait for %s: %w", strings.Join(left, ", "), ctx.Err())
		}
	}
	if a.healthy == nil {
		return nil
	}
	var wg sync.WaitGroup
	errs := make([]error, len(names))
	for i, name := range names {
		inst := a.instance(name)
		if inst == nil {
			continue
		}
		wg.Go(func() { errs[i] = a.healthy(ctx, inst) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// runReleasePhase runs the Procfile's release command once, with the new
// release's env, as the app's user, in the build dir, bounded by
// Config.ReleasePhaseTimeout. It returns a *ReleasePhaseError when the
// command fails.
func (a *Agent) runReleasePhase(ctx context.Context, app string, rel state.Release, b *build.Build, command string) (output string, err error) {
	cfg := a.config()
	appRec, err := a.store.App(app)
	if err != nil {
		return "", mapErr(err)
	}
	who, err := resolveUser(appRec.User, cfg.DefaultUser)
	if err != nil {
		return "", fmt.Errorf("%w: app %s: %w", api.ErrInvalid, app, err)
	}
	tmp, err := a.prepareAppDirs(app, who)
	if err != nil {
		return "", err
	}
	spec := supervisor.Spec{
		Name:    fmt.Sprintf("%s/release.v%d", app, rel.Version),
		Command: command,
		Env: processEnv(envParams{Config: rel.Config, App: app, Version: rel.Version, Instance: "release",
			Build: rel.Build, TmpDir: tmp, Allow: cfg.AllowEnv}),
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
// active, points current at its build, and replaces the app's processes.
// The caller holds the app's lock. kind names the event ("deploy",
// "config", "rollback").
func (a *Agent) activate(app string, rel state.Release, b *build.Build, kind string, p *progress) (state.Release, error) {
	// Once the release is recorded the switch goes on even if the client
	// goes away (a Ctrl-C of `berth deploy` must not leave a release
	// phase half run); only shutdown cuts it short.
	sctx := a.opCtx
	if command, ok := b.Procfile.Command("release"); ok {
		p.mark()
		out, err := a.runReleasePhase(sctx, app, rel, b, command)
		if err != nil {
			var rpe *ReleasePhaseError
			reason := err.Error()
			if errors.As(err, &rpe) {
				reason = "release phase: " + rpe.Reason
			}
			if merr := a.store.MarkFailed(app, rel.Version, reason, out); merr != nil {
				a.log.Error("mark release failed", "app", app, "version", rel.Version, "error", merr)
			}
			a.appendEvent(app, "failure", fmt.Sprintf("v%d %s; v%d not activated", rel.Version, reason, rel.Version))
			return state.Release{}, err
		}
		p.step("release-phase", "release phase of v%d succeeded", rel.Version)
	}

	// The store first: after a crash from here on, the agent brings the
	// app up on this release.
	p.mark()
	if _, err := a.store.Activate(app, rel.Version); err != nil {
		return state.Release{}, mapErr(err)
	}
	if cur, err := a.store.Formation(app); err == nil {
		add := map[string]int{}
		for t, n := range defaultFormation(cur, b.Procfile) {
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

	if err := a.converge(sctx, app, rel, b, true, p); err != nil {
		a.appendEvent(app, "failure", fmt.Sprintf("v%d: %v", rel.Version, err))
		return state.Release{}, fmt.Errorf("v%d is active but its processes did not all start: %w", rel.Version, err)
	}
	a.appendEvent(app, kind, fmt.Sprintf("v%d %s", rel.Version, rel.Description))
	a.collectGarbage()
	out, err := a.store.Release(app, rel.Version)
	if err != nil {
		return state.Release{}, mapErr(err)
	}
	p.step("done", "v%d %s", out.Version, out.Description)
	return out, nil
}

// collectGarbage removes the builds no retained release references
// (state.ReferencedBuilds) and that no deploy in flight uses, with their
// records.
func (a *Agent) collectGarbage() {
	cfg := a.config()
	if !a.gcMu.TryLock() {
		return // an import is between upload and release record; next time
	}
	defer a.gcMu.Unlock()
	refs, err := a.store.ReferencedBuilds(cfg.Retention)
	if err != nil {
		a.log.Error("garbage collection", "error", err)
		return
	}
	removed, err := a.builds.GC(func(d string) bool { return refs[d] || a.pinned(d) })
	for _, d := range removed {
		if err := a.store.DeleteBuild(d); err != nil && !errors.Is(err, state.ErrBuildNotFound) {
			a.log.Error("delete build record", "digest", d, "error", err)
		}
	}
	if err != nil {
		a.log.Error("garbage collection", "error", err)
	}
	if len(removed) > 0 {
		a.log.Info("removed old builds", "count", len(removed))
	}
}

// mapErr wraps a leaf's error with the api kind that fits, once.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	for _, k := range []error{api.ErrInvalid, api.ErrNotFound, api.ErrConflict, api.ErrTooLarge, api.ErrUnavailable} {
		if errors.Is(err, k) {
			return err
		}
	}
	var kind error
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("%w: disk full: %w", api.ErrUnavailable, err)
	case errors.Is(err, state.ErrAppNotFound), errors.Is(err, state.ErrReleaseNotFound),
		errors.Is(err, state.ErrBuildNotFound), errors.Is(err, build.ErrNotFound):
		kind = api.ErrNotFound
	case errors.Is(err, state.ErrAppExists), errors.Is(err, state.ErrBadTransition),
		errors.Is(err, state.ErrNoActiveRelease), errors.Is(err, build.ErrDigestMismatch):
		kind = api.ErrConflict
	case errors.Is(err, build.ErrLimit):
		kind = api.ErrTooLarge
	case errors.Is(err, state.ErrInvalid), errors.Is(err, build.ErrUnsafeEntry), errors.Is(err, build.ErrCorrupt),
		errors.Is(err, build.ErrNoProcfile), errors.Is(err, build.ErrProcfile), errors.Is(err, build.ErrManifest),
		errors.Is(err, build.ErrInvalidDigest), errors.Is(err, supervisor.ErrInvalidSpec):
		kind = api.ErrInvalid
	case errors.Is(err, state.ErrPortsExhausted):
		kind = api.ErrUnavailable
	default:
		return err
	}
	return &kindError{kind: kind, err: err}
}

// kindError gives a leaf's error an api kind without changing its
// message.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }
