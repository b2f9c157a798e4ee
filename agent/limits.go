package agent

import (
	"fmt"
	"sync"

	"github.com/berth-dev/berth/state/build"
	"github.com/berth-dev/berth/supervisor"
	"github.com/berth-dev/berth/systemd"
)

// Resource limits of a process type (berth.json "limits") are applied
// to each instance's own cgroup by the supervisor, where the agent has a
// delegated cgroup (systemd, Delegate=yes). Without one they are not
// enforced: the agent says so once per app, type and release, in its log
// and as a "limits" event, and ps shows the limits with "(not
// enforced: ...)". An instance the OOM killer killed is recorded as an
// "oom" event ("web.1 killed by the OOM killer at 256 MiB") and restarted
// with backoff like a crash; ps shows the same as its last exit.

var _ supervisor.Limiter = (*systemd.Cgroups)(nil)

// limitsOf is a type's limits from its manifest, as the supervisor
// takes them.
func limitsOf(r *build.Resources) supervisor.Limits {
	if r == nil {
		return supervisor.Limits{}
	}
	return supervisor.Limits{MemoryMax: int64(r.MemoryMax), MemoryHigh: int64(r.MemoryHigh), CPUs: r.CPUs, TasksMax: r.TasksMax}
}

// notEnforced is what ps adds to limits the agent cannot apply.
const notEnforced = "not enforced: the agent has no delegated cgroup (run it under systemd with Delegate=yes)"

// limitNotes remembers for which app, type and release the agent said
// that the limits are not enforced, so it says it once.
type limitNotes struct {
	mu   sync.Mutex // guards said
	said map[string]bool
}

// noteUnenforced logs and records an event, once per app, type and
// release, when the instance's type has limits that the supervisor
// cannot enforce.
func (a *Agent) noteUnenforced(in *instance) {
	if in.spec.Limits.IsZero() || a.sup.Enforces() {
		return
	}
	key := fmt.Sprintf("%s\x00%s\x00%d", in.App, in.Type, in.Release)
	a.notes.mu.Lock()
	if a.notes.said == nil {
		a.notes.said = map[string]bool{}
	}
	said := a.notes.said[key]
	a.notes.said[key] = true
	a.notes.mu.Unlock()
	if said {
		return
	}
	a.log.Warn("resource limits are not enforced", "app", in.App, "type", in.Type, "release", in.Release,
		"limits", in.spec.Limits.String(), "reason", notEnforced)
	a.appendEvent(in.App, "limits", fmt.Sprintf("limits of %s in v%d (%s) are %s", in.Type, in.Release, in.spec.Limits, notEnforced))
}

// limitsText is the limits column of ps for an instance.
func (a *Agent) limitsText(in *instance) string {
	l := in.spec.Limits
	if l.IsZero() {
		return ""
	}
	if !a.sup.Enforces() {
		return l.String() + " (" + notEnforced + ")"
	}
	return l.String()
}

// exitEvent is the event for an unexpected exit of an instance: an
// "oom" one for an OOM kill, else a "crash".
func exitEvent(in *instance, e *supervisor.Exit) (kind, msg string) {
	if e.OOMKill {
		return "oom", fmt.Sprintf("%s %s; restarted with backoff like a crash", in.Instance, e)
	}
	return "crash", fmt.Sprintf("crash %s %s", in.Instance, e)
}
