package fleet

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"
)

// Converging: whenever the view changes, the node compares, for every
// app, the release it should run (Target) with the fleet version its
// active local release carries, and applies the target where they
// differ, one app at a time per app, through the agent's own switch. A
// version the node failed stays failed (reported, not retried) until the
// target changes. An app the node runs as a fleet app but is no longer
// placed for is stopped (Node.Stop), only while the node's own record is
// in the view: a node that dropped out of nodes/ (its lease ended, or the
// view is not listed yet) stops nothing.

// action is what a node does of an app at a change of the view.
type action int

const (
	actNone  action = iota
	actApply        // switch to the target, or start it again after a stop
	actStop         // stop every instance: the node is not placed
)

// decide is what a node does of an app: target and ok are what it
// should run (Target), removable says the node may stop the app if ok is
// false (the node is live and the app has a fleet release: it is only
// not placed), and ls is what it runs. Pure, so it is tested alone.
func decide(target Release, ok, removable bool, ls LocalStatus) action {
	switch {
	case ok && ls.Stopped:
		return actApply
	case ok && ls.Version != target.Version && ls.Failed != target.Version:
		return actApply
	case !ok && removable && ls.Version > 0 && !ls.Stopped:
		return actStop
	}
	return actNone
}

// job is an app to converge: r to apply, or, with stop, to stop.
type job struct {
	app  string
	r    Release
	stop bool
}

// converge runs until ctx ends, waiting for the goroutines it started.
func (f *Fleet) converge(ctx context.Context) {
	var wg converging
	defer wg.wait()
	for {
		changed := f.changed.Wait()
		for _, j := range f.due(ctx) {
			if j.stop {
				wg.start(func() { f.stop(ctx, j.app) })
			} else {
				wg.start(func() { f.apply(ctx, j.r) })
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// due returns the apps to converge now and marks them busy.
func (f *Fleet) due(ctx context.Context) []job {
	type candidate struct {
		app           string
		r             Release
		ok, removable bool
	}
	f.mu.Lock()
	v := f.view
	_, live := v.nodes[f.cfg.Node]
	var cands []candidate
	for _, app := range v.apps() {
		if f.busy[app] || time.Now().Before(f.retryAt[app]) {
			continue
		}
		r, ok := v.target(f.cfg.Node, app)
		_, hasRelease := v.releases[app]
		switch {
		case ok && f.failed[app].version == r.Version:
		case ok || (live && hasRelease):
			cands = append(cands, candidate{app: app, r: r, ok: ok, removable: live && hasRelease})
		}
	}
	f.mu.Unlock()
	var out []job
	for _, c := range cands {
		ls, err := f.node.AppStatus(ctx, c.app)
		if err != nil && !c.ok {
			continue // not known to run: nothing to stop
		}
		act := decide(c.r, c.ok, c.removable, ls)
		if act == actNone {
			continue // converged, failed here already (reported), or stopped
		}
		f.mu.Lock()
		if !f.busy[c.app] {
			f.busy[c.app] = true
			out = append(out, job{app: c.app, r: c.r, stop: act == actStop})
		}
		f.mu.Unlock()
	}
	return out
}

// stop stops the app the node is no longer placed for. Its status record
// goes once the node reports it stopped (report.go). A stop that failed
// is tried again after Retry.
func (f *Fleet) stop(ctx context.Context, app string) {
	log := f.log.With("app", app)
	log.Info("not placed on this node; stopping the app")
	err := f.node.Stop(ctx, app)
	failed := err != nil && ctx.Err() == nil
	f.mu.Lock()
	delete(f.busy, app)
	delete(f.failed, app)
	delete(f.fetchErr, app)
	delete(f.fetchTries, app)
	delete(f.retryAt, app)
	if failed {
		f.retryAt[app] = time.Now().Add(f.cfg.Retry)
	}
	f.mu.Unlock()
	f.changed.Notify() // the status changed; and the target may have meanwhile
	switch {
	case failed:
		log.Error("stopping the app failed; trying again", "error", err)
		f.later(ctx, f.cfg.Retry)
	case err == nil:
		log.Info("stopped")
	}
}

// apply fetches the build if need be and switches the app to r. A
// build no node can give yet is waited for (tried again after Retry,
// doubling to a minute): the node that has it may come back. A failed
// switch is the release's failure, reported and not retried.
func (f *Fleet) apply(ctx context.Context, r Release) {
	log := f.log.With("app", r.App, "version", r.Version)
	log.Info("converging", "build", short(r.Build))
	if err := f.ensureBuild(ctx, r); err != nil {
		if ctx.Err() == nil {
			log.Warn("build not available yet; trying again", "error", err)
		}
		f.mu.Lock()
		delete(f.busy, r.App)
		f.fetchErr[r.App] = err.Error()
		wait := min(f.cfg.Retry<<min(f.fetchTries[r.App], 16), time.Minute)
		f.fetchTries[r.App]++
		f.retryAt[r.App] = time.Now().Add(wait)
		f.mu.Unlock()
		f.changed.Notify() // the status says so
		f.later(ctx, wait)
		return
	}
	err := f.node.Apply(ctx, r)
	f.mu.Lock()
	delete(f.busy, r.App)
	delete(f.fetchErr, r.App)
	delete(f.fetchTries, r.App)
	delete(f.retryAt, r.App)
	if err != nil && ctx.Err() == nil {
		f.failed[r.App] = failure{version: r.Version, err: err.Error()}
	} else if err == nil {
		delete(f.failed, r.App)
	}
	f.mu.Unlock()
	switch {
	case err != nil && ctx.Err() == nil:
		log.Error("release failed on this node", "error", err)
	case err == nil:
		log.Info("converged")
		f.pruneTarballs()
	}
	f.changed.Notify() // the status changed; and the target may have meanwhile
}

// later wakes the converger after d (or when ctx ends, not at all).
func (f *Fleet) later(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
		f.changed.Notify()
	}
}

// ensureBuild makes sure the agent has r's build: from the kept tarball,
// else fetched from the nodes (r's sources first) or r's URL.
func (f *Fleet) ensureBuild(ctx context.Context, r Release) error {
	if f.node.HasBuild(r.Build) {
		return nil
	}
	if err := ValidateDigest(r.Build); err != nil {
		return err
	}
	if _, err := os.Stat(f.tb.path(r.Build)); err != nil {
		if err := f.fetch.fetch(ctx, r.Build, f.buildSources(r)); err != nil {
			return err
		}
	}
	fh, err := f.tb.open(r.Build)
	if err != nil {
		return err
	}
	defer fh.Close()
	if err := f.node.ImportBuild(ctx, fh, r.Build); err != nil {
		return fmt.Errorf("import build %s: %w", short(r.Build), err)
	}
	return nil
}

// buildSources lists where r's build may be: r's sources, the other
// nodes, then r's URL.
func (f *Fleet) buildSources(r Release) []source {
	f.mu.Lock()
	nodes := maps.Clone(f.view.nodes)
	f.mu.Unlock()
	order := slices.Clone(r.Sources)
	for _, name := range slicesSorted(keysOf(nodes)) {
		if !slices.Contains(order, name) {
			order = append(order, name)
		}
	}
	var out []source
	for _, name := range order {
		if n, ok := nodes[name]; ok && n.Address != "" && name != f.cfg.Node {
			out = append(out, f.fetch.peerSource(n.Address, r.Build))
		}
	}
	if r.URL != "" {
		out = append(out, source{url: r.URL})
	}
	return out
}

func keysOf[T any](m map[string]T) map[string]bool {
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

func short(digest string) string {
	if len(digest) > 12 {
		return digest[:12]
	}
	return digest
}
