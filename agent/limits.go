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
// delegated cgroup (systemd, Delegate=yes) with the controllers they
// need. Without, they are not enforced (and the instances run anyway):
// the agent says so once per app, type and release, in its log
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
	why := a.sup.LimitsUnenforced(in.spec.Limits)
	if why == "" {
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
		"limits", in.spec.Limits.String(), "reason", why)
	a.appendEvent(in.App, "limits", fmt.Sprintf("limits of %s in v%d (%s) are not enforced: %s", in.Type, in.Release, in.spec.Limits, why))
}

// limitsText is the limits column of ps for an instance.
func (a *Agent) limitsText(in *instance) string {
	l := in.spec.Limits
	if l.IsZero() {
		return ""
	}
	if why := a.sup.LimitsUnenforced(l); why != "" {
		return l.String() + " (not enforced: " + why + ")"
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
