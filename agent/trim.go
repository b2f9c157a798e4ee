package agent

import "github.com/berth-dev/berth/agent/internal/imagetrim"

// trimImage gives back the agent's mappings of its own executable's
// read-only pages (imagetrim explains why) after a burst of code that
// runs rarely: the start-up, a switch. What the agent runs next comes
// back as minor faults from the page cache. Concurrent calls do one trim.
func (a *Agent) trimImage(after string) {
	if a.config().KeepImageMapped || !a.trimMu.TryLock() {
		return
	}
	defer a.trimMu.Unlock()
	released, _, err := imagetrim.Trim()
	if err != nil {
		a.log.Debug("executable pages not released", "after", after, "error", err)
		return
	}
	a.log.Debug("executable pages released", "after", after, "kib", released>>10)
}
