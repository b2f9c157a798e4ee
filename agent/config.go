package agent

import (
	"path/filepath"
	"slices"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/fleet"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/supervisor"
)

// Config is the agent's configuration. The zero value of every field
// means the documented default; New fills them in.
type Config struct {
	// DataDir holds berth.db, builds/, apps/ and inbox/. Empty means
	// api.DefaultDataDir().
	DataDir string
	// SocketPath is the control socket. Empty means api.DefaultSocketPath().
	// A socket passed by systemd (socket activation) wins over it.
	SocketPath string
	// SocketGroup owns the socket: a group name or a numeric gid. Empty
	// means the group "berth" if it exists, else the agent's primary group.
	SocketGroup string
	// DefaultUser is the user apps run as when they have no user of their
	// own (apps set-user). Empty means, when the agent runs as root, that
	// each app runs as a uid of its own from AppUIDs; a name shares that
	// user between all such apps (the behaviour before per-app users).
	// When the agent is not root, apps run as the agent's own user, and a
	// per-app user other than that is an error.
	DefaultUser string
	// AppUIDs is the range each app's own uid (and gid, the same number)
	// is allocated from, once, when the agent is root. The zero value
	// means DefaultAppUIDs, systemd's DynamicUser range.
	AppUIDs state.UIDRange
	// BasePort is the first port handed out as $PORT. Zero means 5000.
	BasePort int
	// StopTimeout is how long a stopped process gets between its stop
	// signal and SIGKILL, unless its manifest says otherwise. Zero means 10s.
	StopTimeout time.Duration
	// Retention is how many of each app's newest releases keep their
	// builds on disk. Zero means 5.
	Retention int
	// LogMaxSize is the size at which an instance's log file is rotated.
	// Zero means 10 MiB.
	LogMaxSize int64
	// LogMaxFiles is how many rotated log files are kept per instance.
	// Zero means 5.
	LogMaxFiles int
	// AllowEnv names variables of the agent's own environment passed to
	// app processes besides PATH, LANG and TZ.
	AllowEnv []string
	// LockTimeout is how long Run waits for the database lock before it
	// reports that another agent uses the data dir. Zero means 1s.
	LockTimeout time.Duration
	// Journal sends app output to journald as well as to the log files.
	Journal bool
	// Version is reported by Info.
	Version string

	// Backoff is the restart policy of app processes. Zero fields mean
	// the supervisor's defaults (restart at once after a run of 1s,
	// quicker exits 100ms doubling to 30s, reset after a run of 5s). A
	// type's restart settings in berth.json override it field by field.
	Backoff supervisor.Backoff
	// StartTimeout bounds how long a switch waits for the new instances
	// to be up: running, and healthy for types with a health check (whose
	// own deadline, start_period + retries*interval plus a margin, is
	// bounded by it). Zero means 60s.
	StartTimeout time.Duration
	// Settle is how long a new instance of a type without a health check
	// must run before it counts as up. Zero means Backoff.Settle, or
	// DefaultSettle (5s, the supervisor's default too) when that is zero.
	Settle time.Duration
	// Probation is how long the agent keeps watching the new instances
	// of a switch once they are up: an instance that exits or turns
	// unhealthy inside it fails the release, which is rolled back. The
	// switch returns once they are up and the watch goes on in the agent,
	// unless its caller asked to wait (api.WithProbationWait). Zero means
	// 30s; a negative value means no probation.
	Probation time.Duration
	// ReleasePhaseTimeout bounds the release phase. Zero means 10m.
	ReleasePhaseTimeout time.Duration
	// InboxQuiet is how long a file in the inbox must see no writes (and
	// keep its size) before it is deployed. Zero means 1s.
	InboxQuiet time.Duration
	// NoSocket skips listening on the control socket (tests that drive
	// the Backend directly).
	NoSocket bool
	// MetricsListen is a TCP address (host:port) on which GET /metrics
	// is served besides the control socket, with nothing else; empty
	// means none. Its metrics carry no config values, but name the apps.
	MetricsListen string
	// NoSteer turns connection steering off (steer.go): socket-activated
	// types share one socket per slot and others switch stop-then-start,
	// as where steering is unavailable. False means steering is on
	// wherever the kernel and the agent's privileges allow it.
	NoSteer bool
	// SteerPin is the bpffs directory the steering program's link and
	// maps are pinned in, so that steering goes on while no agent runs
	// (a crash, a restart, an upgrade). Empty means a directory named
	// after the data dir under /sys/fs/bpf when that is a bpffs mount;
	// "-" means never pinned.
	SteerPin string
	// KeepImageMapped turns the executable trim off (trim.go): the pages
	// of the agent's own binary that its start-up and its changes
	// faulted in stay mapped, and count in its RSS and PSS, until the
	// kernel reclaims them. False means the agent gives them back once
	// it has gone quiet after its start-up, a change or a burst of
	// requests.
	KeepImageMapped bool
	// Fleet turns fleet mode on (agent/fleet): the agent registers with
	// etcd and follows the desired state kept there. Nil means off: the
	// agent is a single-VM agent and talks to no etcd. Its Dir defaults
	// to $DATA/fleet/builds and its Version to Version.
	Fleet *fleet.Config
}

// Defaults applied by New.
const (
	DefaultBasePort            = 5000
	DefaultStopTimeout         = 10 * time.Second
	DefaultRetention           = 5
	DefaultLogMaxSize          = 10 << 20
	DefaultLogMaxFiles         = 5
	DefaultLockTimeout         = time.Second
	DefaultStartTimeout        = 60 * time.Second
	DefaultProbation           = 30 * time.Second
	DefaultSettle              = 5 * time.Second
	DefaultReleasePhaseTimeout = 10 * time.Minute
	DefaultInboxQuiet          = time.Second

	// releaseOutputMax is how much of the release phase's output (its
	// tail) is kept in the release record.
	releaseOutputMax = 64 << 10
)

// DefaultAppUIDs is the range of app uids: the one systemd reserves for
// DynamicUser= (61184-65519), so a host user rarely holds one.
var DefaultAppUIDs = state.UIDRange{Min: 61184, Max: 65519}

// withDefaults returns cfg with every zero field set to its default.
func (cfg Config) withDefaults() Config {
	if cfg.DataDir == "" {
		cfg.DataDir = api.DefaultDataDir()
	}
	if abs, err := filepath.Abs(cfg.DataDir); err == nil {
		cfg.DataDir = abs
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = api.DefaultSocketPath()
	}
	setDefault(&cfg.AppUIDs, DefaultAppUIDs)
	setDefault(&cfg.BasePort, DefaultBasePort)
	setDefault(&cfg.StopTimeout, DefaultStopTimeout)
	setDefault(&cfg.Retention, DefaultRetention)
	setDefault(&cfg.LogMaxSize, DefaultLogMaxSize)
	setDefault(&cfg.LogMaxFiles, DefaultLogMaxFiles)
	setDefault(&cfg.LockTimeout, DefaultLockTimeout)
	setDefault(&cfg.StartTimeout, DefaultStartTimeout)
	setDefault(&cfg.Settle, cfg.Backoff.Settle)
	setDefault(&cfg.Settle, DefaultSettle)
	setDefault(&cfg.Probation, DefaultProbation)
	setDefault(&cfg.ReleasePhaseTimeout, DefaultReleasePhaseTimeout)
	setDefault(&cfg.InboxQuiet, DefaultInboxQuiet)
	cfg.AllowEnv = slices.Clone(cfg.AllowEnv)
	if cfg.Fleet != nil {
		fc := *cfg.Fleet
		setDefault(&fc.Dir, cfg.path("fleet", "builds"))
		setDefault(&fc.Version, cfg.Version)
		cfg.Fleet = &fc
	}
	return cfg
}

// setDefault sets *field to def when it holds its zero value.
func setDefault[T comparable](field *T, def T) {
	var zero T
	if *field == zero {
		*field = def
	}
}

// path returns a path under the data dir.
func (cfg Config) path(elem ...string) string {
	return filepath.Join(append([]string{cfg.DataDir}, elem...)...)
}
