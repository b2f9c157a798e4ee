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
// target changes.

// converge runs until ctx ends, waiting for the apply goroutines it
// started.
func (f *Fleet) converge(ctx context.Context) {
	var wg converging
	defer wg.wait()
	for {
		changed := f.changed.wait()
		for _, r := range f.due(ctx) {
			wg.start(func() { f.apply(ctx, r) })
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// due returns the targets to apply now and marks their apps busy.
func (f *Fleet) due(ctx context.Context) []Release {
	f.mu.Lock()
	v := f.view
	var targets []Release
	for _, app := range v.apps() {
		if r, ok := v.target(f.cfg.Node, app); ok && !f.busy[app] && f.failed[app].version != r.Version && !time.Now().Before(f.retryAt[app]) {
			targets = append(targets, r)
		}
	}
	f.mu.Unlock()
	var out []Release
	for _, r := range targets {
		ls, err := f.node.AppStatus(ctx, r.App)
		if err == nil && (ls.Version == r.Version || ls.Failed == r.Version) {
			continue // converged, or failed here already (reported)
		}
		f.mu.Lock()
		if !f.busy[r.App] {
			f.busy[r.App] = true
			out = append(out, r)
		}
		f.mu.Unlock()
	}
	return out
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
		f.changed.notify() // the status says so
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
	f.changed.notify() // the status changed; and the target may have meanwhile
}

// later wakes the converger after d (or when ctx ends, not at all).
func (f *Fleet) later(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
		f.changed.notify()
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
