package fleet

import (
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"time"
)

// The records kept in etcd, one JSON value per key, and the key layout
// (see doc.go). Every key is under Config.Prefix (default "/berth/").

// Release is a fleet-wide release of an app: a fleet version number,
// the build's digest and the config and formation every node runs it
// with. It is what a node turns into a local release ("Fleet vN").
type Release struct {
	App       string            `json:"app"`
	Version   int               `json:"version"`
	Build     string            `json:"build"` // sha256 hex digest of the tarball
	Config    map[string]string `json:"config,omitempty"`
	Formation map[string]int    `json:"formation,omitempty"`
	// Sources are the nodes that had the build when the release was
	// made; URL, when set, is where any node may download the tarball.
	// Either way the digest is verified before use.
	Sources     []string  `json:"sources,omitempty"`
	URL         string    `json:"url,omitempty"`
	Description string    `json:"description"`
	CreatedAt   time.Time `json:"created_at"`
}

// SameContent reports whether r and o run the same build with the same
// config and formation (the version aside).
func (r Release) SameContent(o Release) bool {
	return r.Build == o.Build && maps.Equal(r.Config, o.Config) && maps.Equal(r.Formation, o.Formation)
}

// Placement says which nodes run an app: every node (the zero value),
// the nodes carrying all of Labels, and at most Count of them (0: no
// limit), chosen by name order.
type Placement struct {
	Labels map[string]string `json:"labels,omitempty"`
	Count  int               `json:"count,omitempty"`
}

// RolloutState is where a rollout is.
type RolloutState string

const (
	// RolloutRunning: waves go on, one after another.
	RolloutRunning RolloutState = "running"
	// RolloutSucceeded: every wave reported the release healthy; it is
	// the app's release.
	RolloutSucceeded RolloutState = "succeeded"
	// RolloutFailed: a node of a wave failed the release; every node
	// went back to the app's previous release. Reason says why.
	RolloutFailed RolloutState = "failed"
)

// Rollout is the rollout of a release to an app's nodes, in waves. It is
// written by the client that starts it and then only by its driver (the
// agent holding the app's rollout lock).
type Rollout struct {
	App    string       `json:"app"`
	To     Release      `json:"to"`
	From   int          `json:"from,omitempty"` // the version it replaces, 0 on a first deploy
	Waves  [][]string   `json:"waves"`          // kept in the rollout's plan (rolloutPlan)
	Wave   int          `json:"wave"`           // index of the wave under way
	State  RolloutState `json:"state"`
	Reason string       `json:"reason,omitempty"`
	Driver string       `json:"driver,omitempty"` // the node driving it
	// WaveTimeout is how long a wave may take before the rollout fails
	// (0: the driving agent's Config.WaveTimeout).
	WaveTimeout time.Duration `json:"wave_timeout,omitempty"`
	Started     time.Time     `json:"started"`
	Updated     time.Time     `json:"updated"`
}

// Reached reports whether node is in a wave the rollout has reached.
func (r Rollout) Reached(node string) bool {
	for i := 0; i <= r.Wave && i < len(r.Waves); i++ {
		if slices.Contains(r.Waves[i], node) {
			return true
		}
	}
	return false
}

// rolloutPlan is the part of a rollout that does not change once it is
// planned: its waves, kept under a key of their own (keys.plan) and
// written once, when the rollout starts. The rollout record, rewritten
// at every step (driver claimed, next wave, end), then stays small
// whatever the size of the fleet: were it to list the nodes, each step
// would send O(N) bytes to each of the N watching nodes (SCALE.md).
type rolloutPlan struct {
	Version int        `json:"version"` // the rollout's To.Version
	Waves   [][]string `json:"waves"`
}

// encodeRollout is a rollout record as stored: without its waves,
// which are in its plan.
func encodeRollout(ro Rollout) (string, error) {
	ro.Waves = nil
	return encode(ro)
}

// withPlan returns ro with the waves of p, if p is ro's plan. A record
// that carries waves of its own keeps them.
func withPlan(ro Rollout, p rolloutPlan, ok bool) Rollout {
	if ok && len(ro.Waves) == 0 && p.Version == ro.To.Version {
		ro.Waves = p.Waves
	}
	return ro
}

// NodeInfo is a node's presence record, kept under its lease.
type NodeInfo struct {
	Name    string            `json:"name"`
	Address string            `json:"address,omitempty"` // host:port of its build endpoint
	Labels  map[string]string `json:"labels,omitempty"`
	Version string            `json:"version"` // the agent's version
	Since   time.Time         `json:"since"`
}

// Status is what a node reports about one app, under its lease.
type Status struct {
	App  string `json:"app"`
	Node string `json:"node"`
	// Version is the fleet version the node's active local release
	// carries (0: none).
	Version   int `json:"version"`
	Healthy   int `json:"healthy"`   // instances up (healthy, or running without a check)
	Instances int `json:"instances"` // instances in all
	// Switching is true while the node switches the app (release
	// phase, start, health checks, probation): Version may be the new
	// one before it passed its probation.
	Switching bool `json:"switching,omitempty"`
	// Failed is the fleet version the node last failed to switch to and
	// Error why (it rolled back locally); both clear on a success. Error
	// alone says why the node cannot get a build yet (it tries again).
	Failed  int       `json:"failed,omitempty"`
	Error   string    `json:"error,omitempty"`
	Updated time.Time `json:"updated"`
}

// Up reports whether the node runs version, past its probation, with
// every instance up (an app scaled to no instance is up once switched).
func (s Status) Up(version int) bool {
	return s.Version == version && !s.Switching && s.Healthy == s.Instances
}

// keys builds the etcd keys under a prefix.
type keys struct{ prefix string }

func (k keys) release(app string) string   { return k.prefix + "apps/" + app + "/release" }
func (k keys) placement(app string) string { return k.prefix + "apps/" + app + "/placement" }
func (k keys) rollout(app string) string   { return k.prefix + "apps/" + app + "/rollout" }
func (k keys) history(app string, v int) string {
	return fmt.Sprintf("%sapps/%s/releases/%010d", k.prefix, app, v)
}
func (k keys) node(name string) string        { return k.prefix + "nodes/" + name }
func (k keys) status(app, node string) string { return k.prefix + "status/" + app + "/" + node }
func (k keys) lock(app string) string         { return k.prefix + "locks/rollout/" + app }
func (k keys) plan(app string) string         { return k.prefix + "apps/" + app + "/plan" }

// desired is the range of keys every node watches: apps/, locks/ and
// nodes/, which sort before status/.
func (k keys) desired() (start, end string) { return k.prefix + "apps/", k.prefix + "status/" }

// statuses is the prefix of app's status records.
func (k keys) statuses(app string) string { return k.prefix + "status/" + app + "/" }

// parse tells what a key under the prefix is: kind is "release",
// "placement", "rollout", "plan", "node", "status" or "lock" (else ""), with
// the app and node it names (for a lock, its holder's or waiter's key).
func (k keys) parse(key string) (kind, app, node string) {
	rest, ok := strings.CutPrefix(key, k.prefix)
	if !ok {
		return "", "", ""
	}
	parts := strings.Split(rest, "/")
	switch {
	case len(parts) == 3 && parts[0] == "apps" && (parts[2] == "release" || parts[2] == "placement" || parts[2] == "rollout" || parts[2] == "plan"):
		return parts[2], parts[1], ""
	case len(parts) == 2 && parts[0] == "nodes":
		return "node", "", parts[1]
	case len(parts) == 3 && parts[0] == "status":
		return "status", parts[1], parts[2]
	case len(parts) == 4 && parts[0] == "locks" && parts[1] == "rollout":
		return "lock", parts[2], parts[3]
	}
	return "", "", ""
}

// normPrefix makes p end in exactly one slash ("/berth/").
func normPrefix(p string) string {
	if p == "" {
		p = DefaultPrefix
	}
	return path.Clean("/"+p) + "/"
}

// MaxValue is the largest record berth writes to etcd: etcd refuses
// requests over 1.5 MiB; a release is metadata only.
const MaxValue = 1 << 20

func encode(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	if len(b) > MaxValue {
		return "", fmt.Errorf("%w: record of %d bytes (at most %d: etcd holds metadata only)", ErrInvalid, len(b), MaxValue)
	}
	return string(b), nil
}
