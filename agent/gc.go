package agent

import (
	"errors"

	"github.com/berth-dev/berth/state"
)

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
