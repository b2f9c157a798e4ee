package api

import (
	"context"
	"io"
	"time"
)

// This file is the contract between the agent (which implements Backend)
// and the socket server, the Go client and the CLI. Field names and JSON
// tags are the stable `--json` output of the CLI: change them only with a
// new API version.

// App is an application as shown by `berth apps`.
type App struct {
	Name          string         `json:"name"`
	User          string         `json:"user,omitempty"` // run-as user; empty means the agent's default
	CreatedAt     time.Time      `json:"created_at"`
	ActiveRelease int            `json:"active_release,omitempty"` // version number, 0 when nothing is deployed
	Formation     map[string]int `json:"formation"`
}

// Release is a release record. Config holds values only where the caller
// asked for one release (`releases info`); lists carry ConfigKeys only.
type Release struct {
	App         string            `json:"app"`
	Version     int               `json:"version"`
	Build       string            `json:"build"` // sha256 hex digest of the tarball
	Description string            `json:"description"`
	Status      string            `json:"status"` // pending, active, failed, superseded
	Reason      string            `json:"reason,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	ConfigKeys  []string          `json:"config_keys"`
	Config      map[string]string `json:"config,omitempty"`
	Formation   map[string]int    `json:"formation"`
	Output      string            `json:"output,omitempty"` // release-phase output, when there was one
	// Probation is set on the answer of a switch: ProbationWatching (it
	// returned once the new instances were up; the agent watches them
	// for the rest of the probation) or ProbationPassed (it waited).
	Probation string `json:"probation,omitempty"`
}

// Process is one supervised instance, as shown by `berth ps`.
type Process struct {
	App         string    `json:"app"`
	Instance    string    `json:"instance"` // web.1
	Type        string    `json:"type"`     // web
	State       string    `json:"state"`    // starting, running, backoff, stopping, stopped, crashed
	PID         int       `json:"pid,omitempty"`
	Release     int       `json:"release"`
	Port        int       `json:"port"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	Restarts    int       `json:"restarts"`
	LastExit    string    `json:"last_exit,omitempty"` // "exit 1", "signal SIGKILL"
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Health      string    `json:"health,omitempty"` // healthy, unhealthy, starting, or empty without a check
	Mode        string    `json:"mode"`             // "socket" (agent-owned socket, start-then-stop), "bind" (stop-then-start) or "one-off" (berth run)
	Command     string    `json:"command"`
	// Limits are the type's resource limits from berth.json, with
	// "(not enforced: ...)" when the agent has no cgroups to apply them.
	Limits string `json:"limits,omitempty"`
	// Steering says whether the agent steers the public port's new
	// connections to this instance's own socket: "on: listens on port N"
	// (N is its PORT), "off: <why>" for a type it would steer if it could,
	// empty for other types.
	Steering string `json:"steering,omitempty"`
}

// Event is one entry of the append-only event log.
type Event struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	App     string    `json:"app,omitempty"`
	Kind    string    `json:"kind"`
	Message string    `json:"message"`
}

// LogLine is one captured line of app output. Missed > 0 says that a
// follower that fell behind lost that many lines just before this one
// (a line with no Text is only that notice).
type LogLine struct {
	Time     time.Time `json:"time"`
	App      string    `json:"app"`
	Instance string    `json:"instance"`
	Release  int       `json:"release,omitempty"` // the release of the process that wrote it; 0 when unknown
	Stream   string    `json:"stream"`            // stdout or stderr; "" for a stored line that did not parse
	Text     string    `json:"text"`
	Split    bool      `json:"split,omitempty"`   // a piece of a longer line, continued in the next one
	Partial  bool      `json:"partial,omitempty"` // the output ended here without a newline
	Missed   int       `json:"missed,omitempty"`
}

// LogQuery says which lines Logs returns and FollowLogs sends
// (GET /v1/apps/{app}/logs?instance=&n=&since=&release=&follow=).
type LogQuery struct {
	Instance string    // one instance ("web.1"); "" for all of the app's
	N        int       // the last N lines (0: all; for FollowLogs, none stored)
	Since    time.Time // lines from this time on; zero for no limit
	Release  int       // lines of this release only; 0 for all
}

// Progress is one step of a long operation (deploy, config, rollback),
// streamed as NDJSON. The last message has Done set and either Release or
// Error.
type Progress struct {
	Time    time.Time     `json:"time"`
	Step    string        `json:"step"` // upload, unpack, release, record, release-phase, stop, start, health, done
	Message string        `json:"message"`
	Elapsed time.Duration `json:"elapsed_ns"` // time the step took, when known
	Done    bool          `json:"done,omitempty"`
	Error   *ErrorBody    `json:"error,omitempty"`
	Release *Release      `json:"release,omitempty"`
}

// AgentInfo is returned by GET /v1/info (`berth version` shows it beside
// the CLI's own version).
type AgentInfo struct {
	Version   string    `json:"version"`
	PID       int       `json:"pid"`
	DataDir   string    `json:"data_dir"`
	StartedAt time.Time `json:"started_at"`
	Apps      int       `json:"apps"`
	Processes int       `json:"processes"`
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error string `json:"error"`
	Kind  string `json:"kind"` // invalid, not_found, conflict, too_large, unavailable, forbidden, internal
}

// DeployRequest describes a deploy. The tarball is always a stream: the
// agent never opens a path on a client's behalf.
type DeployRequest struct {
	App    string
	Body   io.Reader // the tarball as uploaded
	Digest string    // expected sha256 hex digest; empty to accept any
	Source string    // who asked: "cli", "inbox"; for the event log
}

// ConfigChange sets and unsets config vars in one release.
type ConfigChange struct {
	Set   map[string]string `json:"set,omitempty"`
	Unset []string          `json:"unset,omitempty"`
}

// ProgressFunc receives the steps of a long operation. It must not block
// for long; the server writes each to the client as NDJSON.
type ProgressFunc func(Progress)

// Backend is what the socket server needs from the agent. Every method
// returns errors that wrap one of the kinds in errors.go where a kind
// applies (ErrInvalid, ErrNotFound, ...); anything else is a 500.
type Backend interface {
	Info(ctx context.Context) (AgentInfo, error)

	Apps(ctx context.Context) ([]App, error)
	CreateApp(ctx context.Context, name string) (App, error)
	DestroyApp(ctx context.Context, name string) error
	// SetAppUser sets the user the app's processes run as ("" for the
	// agent's default; "root" only when an operator says so for this app)
	// and restarts its processes.
	SetAppUser(ctx context.Context, name, user string) (App, error)

	// Deploy imports the build (creating the app on first deploy),
	// records a release and activates it; it returns once the new
	// processes run (or are healthy).
	Deploy(ctx context.Context, req DeployRequest, progress ProgressFunc) (Release, error)
	Releases(ctx context.Context, app string) ([]Release, error) // newest first
	Release(ctx context.Context, app string, version int) (Release, error)
	// Rollback makes a new release with version's build and config;
	// version 0 means the release before the active one.
	Rollback(ctx context.Context, app string, version int, progress ProgressFunc) (Release, error)

	Config(ctx context.Context, app string) (map[string]string, error)
	SetConfig(ctx context.Context, app string, change ConfigChange, progress ProgressFunc) (Release, error)

	// Scale sets the count of the given types and starts or stops
	// instances without restarting the others.
	Scale(ctx context.Context, app string, formation map[string]int) ([]Process, error)
	Processes(ctx context.Context, app string) ([]Process, error) // app "" means all apps
	// Restart restarts the app's processes: all of them (target ""), one
	// type ("web") or one instance ("web.1").
	Restart(ctx context.Context, app, target string) error

	// Logs returns the stored lines that q asks for, oldest first, across
	// restarts and releases, whether the instances run or not.
	Logs(ctx context.Context, app string, q LogQuery) ([]LogLine, error)
	// FollowLogs sends the stored lines q asks for (q.N, q.Since; none
	// when both are zero), then new lines (of q.Instance and q.Release,
	// or all) as they come, those of instances started meanwhile too,
	// until ctx ends or send fails, with no line lost or sent twice
	// between the two. It calls FollowStarted(ctx) once it accepted the
	// request: an error before that is the response, one after it ends
	// the stream.
	FollowLogs(ctx context.Context, app string, q LogQuery, send func(LogLine) error) error

	// Events returns events with Seq > since (app "" for all apps), oldest
	// first, at most limit of them.
	Events(ctx context.Context, app string, since uint64, limit int) ([]Event, error)
	// FollowEvents sends events with Seq > since as they happen until ctx
	// ends or send fails.
	FollowEvents(ctx context.Context, app string, since uint64, send func(Event) error) error
}
