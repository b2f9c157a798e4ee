package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/systemd"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// settings are what ParseFlags reads (and a reload reads again): the
// agent's Config and the log settings.
type settings struct {
	// Config is the agent's configuration.
	Config agent.Config
	// LogLevel is trace, debug, info, warn or error; LogFormat is text or
	// json.
	LogLevel, LogFormat string
	// EnvFile is an optional file of BERTH_*=value lines, read by
	// ParseFlags and again on every reload (like systemd's
	// EnvironmentFile=, but re-read on SIGHUP).
	EnvFile string
	// Fleet are the fleet-mode settings, turned into Config.Fleet.
	Fleet fleetSettings
}

// Main is the agent program (`berth agent`): ParseFlags reads its
// settings, Run runs the agent until its context ends, Close stops a Run
// in progress. Tests drive it in-process the same way main does.
type Main struct {
	settings // set by ParseFlags

	// Stderr receives the agent's log; nil means os.Stderr.
	Stderr io.Writer
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
	// Reload delivers SIGHUP: each receive reloads the settings.
	Reload <-chan os.Signal
	// Upgrade delivers SIGUSR2 (`systemctl reload berth`): the agent
	// hands its apps over and re-executes its binary in place (see Run).
	Upgrade <-chan os.Signal

	args []string
	log  hclog.Logger

	mu     sync.Mutex // guards cancel and done
	cancel context.CancelFunc
	done   chan struct{}
}

// agentSetting is one agent setting: its flag, its environment variable
// and how to declare it on a flag set bound to a Config.
type agentSetting struct {
	flag, env string
	declare   func(fs *pflag.FlagSet, m *settings, name, usage string)
	usage     string
}

var agentSettings = []agentSetting{
	{"data-dir", "BERTH_DATA_DIR", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.StringVar(&m.Config.DataDir, n, "", u) },
		"data directory (default " + api.DefaultDataDir() + ")"},
	{"socket", "BERTH_SOCKET", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.StringVar(&m.Config.SocketPath, n, "", u) },
		"control socket (default " + api.DefaultSocketPath() + ")"},
	{"socket-group", "BERTH_SOCKET_GROUP", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.StringVar(&m.Config.SocketGroup, n, "", u) },
		`group (name or gid) allowed to use the socket (default "berth" if it exists, else the agent's group)`},
	{"default-user", "BERTH_DEFAULT_USER", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.StringVar(&m.Config.DefaultUser, n, "", u) },
		`user all apps without their own run as (default: as root, a uid of each app's own from --app-uids; else the agent's user)`},
	{"app-uids", "BERTH_APP_UIDS", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.Var((*uidRange)(&m.Config.AppUIDs), n, u) },
		"range MIN-MAX of the uids (and gids) given to apps as root, one per app (default 61184-65519)"},
	{"base-port", "BERTH_BASE_PORT", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.IntVar(&m.Config.BasePort, n, 0, u) },
		"first $PORT handed to app instances (default 5000)"},
	{"stop-timeout", "BERTH_STOP_TIMEOUT", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.DurationVar(&m.Config.StopTimeout, n, 0, u) },
		"time between a process's stop signal and SIGKILL (default 10s)"},
	{"retention", "BERTH_RETENTION", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.IntVar(&m.Config.Retention, n, 0, u) },
		"newest releases per app whose builds stay on disk (default 5)"},
	{"log-max-size", "BERTH_LOG_MAX_SIZE", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.Var((*byteSize)(&m.Config.LogMaxSize), n, u) },
		"size at which an instance's log file rotates: bytes, or with K, M, G (default 10M)"},
	{"log-max-files", "BERTH_LOG_MAX_FILES", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.IntVar(&m.Config.LogMaxFiles, n, 0, u) },
		"rotated log files kept per instance (default 5)"},
	{"allow-env", "BERTH_ALLOW_ENV", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.StringSliceVar(&m.Config.AllowEnv, n, nil, u) },
		"variables of the agent's environment passed to apps besides PATH, LANG, TZ (comma-separated)"},
	{"lock-timeout", "BERTH_LOCK_TIMEOUT", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.DurationVar(&m.Config.LockTimeout, n, 0, u) },
		"how long to wait for the data dir's lock held by another agent (default 1s)"},
	{"start-timeout", "BERTH_START_TIMEOUT", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.DurationVar(&m.Config.StartTimeout, n, 0, u) },
		"how long a release switch waits for the new processes to run (default 60s)"},
	{"settle", "BERTH_SETTLE", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.DurationVar(&m.Config.Settle, n, 0, u) },
		"how long a new instance without a health check must run before a switch counts it as up (default 5s)"},
	{"probation", "BERTH_PROBATION", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.DurationVar(&m.Config.Probation, n, 0, u) },
		"how long the agent watches the new instances of a switch once they are up (a failure rolls back); negative for none (default 30s)"},
	{"release-timeout", "BERTH_RELEASE_TIMEOUT", func(fs *pflag.FlagSet, m *settings, n, u string) {
		fs.DurationVar(&m.Config.ReleasePhaseTimeout, n, 0, u)
	}, "bound on the release phase (default 10m)"},
	{"inbox-quiet", "BERTH_INBOX_QUIET", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.DurationVar(&m.Config.InboxQuiet, n, 0, u) },
		"how long an inbox file must see no writes before it is deployed (default 1s)"},
	{"metrics-listen", "BERTH_METRICS_LISTEN", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.StringVar(&m.Config.MetricsListen, n, "", u) },
		"also serve GET /metrics (Prometheus text format) on this TCP address, e.g. 127.0.0.1:9090 (default: only on the socket)"},
	{"no-steer", "BERTH_NO_STEER", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.BoolVar(&m.Config.NoSteer, n, false, u) },
		"do not steer connections with sk_lookup: socket-activated types share one socket per slot, others switch stop-then-start"},
	{"steer-pin", "BERTH_STEER_PIN", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.StringVar(&m.Config.SteerPin, n, "", u) },
		"bpffs directory to pin the steering program in, so steering goes on while no agent runs (default /sys/fs/bpf/berth-<hash of the data dir> when /sys/fs/bpf is a bpffs; - never pins)"},
	{"keep-image-mapped", "BERTH_KEEP_IMAGE_MAPPED", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.BoolVar(&m.Config.KeepImageMapped, n, false, u) },
		"do not give back the agent's mappings of its own executable once it goes quiet after start-up, changes and requests (for comparison: the pages stay in the page cache either way)"},
	{"journal", "BERTH_JOURNAL", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.BoolVar(&m.Config.Journal, n, false, u) },
		"also send app output to journald"},
	{"log-level", "BERTH_LOG_LEVEL", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.StringVar(&m.LogLevel, n, "info", u) },
		"agent log level: trace, debug, info, warn, error"},
	{"log-format", "BERTH_LOG_FORMAT", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.StringVar(&m.LogFormat, n, "text", u) },
		"agent log format: text or json"},
	{"env-file", "BERTH_ENV_FILE", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.StringVar(&m.EnvFile, n, "", u) },
		"file of BERTH_*=value lines, re-read on SIGHUP (the environment and flags win over it)"},
}

// flagSet returns the agent's flags bound to m's fields.
func (m *settings) flagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("berth agent", pflag.ContinueOnError)
	fs.SortFlags = false
	for _, s := range slices.Concat(agentSettings, fleetAgentSettings) {
		s.declare(fs, m, s.flag, s.usage+" [$"+s.env+"]")
	}
	return fs
}

// agentUsage is the help text of `berth agent`.
func agentUsage() string {
	var m settings
	return "Usage: berth agent [flags]\n\nRun the berth agent: serve the control socket and keep every app's active release running.\nEach flag can also be set by the environment variable in brackets; a flag wins over the\nenvironment, which wins over --env-file, which wins over the default.\n\nFlags:\n" + m.flagSet().FlagUsages()
}

// ParseFlags reads the agent's settings from args, the environment and
// the env file, in that order of precedence. Errors are usage errors.
func (m *Main) ParseFlags(args []string) error {
	if m.Getenv == nil {
		m.Getenv = os.Getenv
	}
	if m.Stderr == nil {
		m.Stderr = os.Stderr
	}
	m.args = args
	st, err := m.parse(args)
	if err != nil {
		return err
	}
	m.settings = st
	m.log = hclog.New(&hclog.LoggerOptions{
		Name:       "berth",
		Level:      hclog.LevelFromString(m.LogLevel),
		Output:     m.Stderr,
		JSONFormat: m.LogFormat == "json",
		// journald stamps every line itself.
		DisableTime: systemd.UnderJournal(),
	})
	return nil
}

// parse returns the settings of args, the environment and the env file,
// checked, with the Config carrying this program's version.
func (m *Main) parse(args []string) (settings, error) {
	var n settings
	fs := n.flagSet()
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return n, err
		}
		return n, usagef("berth agent", "%v", err)
	}
	if fs.NArg() > 0 {
		return n, usagef("berth agent", "berth agent takes no arguments, got %q", fs.Arg(0))
	}
	fromEnv := func(getenv func(string) string, where string) error {
		for _, s := range slices.Concat(agentSettings, fleetAgentSettings) {
			v := getenv(s.env)
			if v == "" || fs.Changed(s.flag) {
				continue
			}
			if err := fs.Set(s.flag, v); err != nil {
				return usagef("berth agent", "%s%s=%q: %v", where, s.env, v, err)
			}
		}
		return nil
	}
	if err := fromEnv(m.Getenv, ""); err != nil {
		return n, err
	}
	if n.EnvFile != "" {
		vars, err := readEnvFile(n.EnvFile)
		if err != nil {
			return n, err
		}
		if err := fromEnv(func(k string) string { return vars[k] }, n.EnvFile+": "); err != nil {
			return n, err
		}
	}
	if hclog.LevelFromString(n.LogLevel) == hclog.NoLevel {
		return n, usagef("berth agent", "bad log level %q: want trace, debug, info, warn or error", n.LogLevel)
	}
	if n.LogFormat != "text" && n.LogFormat != "json" {
		return n, usagef("berth agent", "bad log format %q: want text or json", n.LogFormat)
	}
	n.Config.Version = version
	fc, err := n.Fleet.fleetConfig(m.Getenv)
	if err != nil {
		return n, usagef("berth agent", "%v", err)
	}
	n.Config.Fleet = fc
	return n, nil
}

// readEnvFile reads KEY=VALUE lines; blank lines and # comments are
// skipped, and a value may be wrapped in single or double quotes.
func readEnvFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("env file: %w", err)
	}
	defer f.Close()
	vars := map[string]string{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(text, "export "), "=")
		if !ok {
			return nil, fmt.Errorf("env file %s:%d: want KEY=VALUE, got %q", path, line, text)
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		vars[strings.TrimSpace(k)] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("env file %s: %w", path, err)
	}
	return vars, nil
}

// Run runs the agent until ctx ends or Close is called, reloading its
// settings on every receive from m.Reload. It returns nil after a
// graceful stop.
func (m *Main) Run(ctx context.Context) error {
	a, err := agent.New(m.Config, m.log)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	m.mu.Lock()
	if m.cancel != nil {
		m.mu.Unlock()
		return errors.New("agent: Run called twice")
	}
	m.cancel, m.done = cancel, done
	m.mu.Unlock()
	defer close(done)

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-m.Reload:
				m.reload(a)
			case <-m.Upgrade:
				if err := a.Upgrade(); err != nil {
					m.log.Error("upgrade in place refused; the agent keeps running", "error", err)
				}
			}
		}
	}()
	err = a.Run(ctx)
	cancel()
	wg.Wait()
	if err == nil {
		// After an Upgrade: the apps still run, their pipes and sockets
		// are passed to the same binary path, re-executed in this
		// process (its PID, and systemd's MainPID, stay). Exec returns
		// only on failure; systemd then starts a new agent, which adopts
		// the apps from its fd store.
		err = a.Exec()
	}
	return err
}

// reload re-reads the flags, environment and env file and hands the
// result to the agent. A bad setting keeps the old ones and is logged.
func (m *Main) reload(a *agent.Agent) {
	m.log.Info("reloading settings (SIGHUP)")
	if err := systemd.Reloading(); err != nil {
		m.log.Warn("cannot tell systemd about the reload", "error", err)
	}
	defer func() {
		if err := systemd.Ready(); err != nil {
			m.log.Warn("cannot tell systemd the reload is done", "error", err)
		}
	}()
	n, err := m.parse(m.args)
	if err == nil {
		m.log.SetLevel(hclog.LevelFromString(n.LogLevel))
		if n.LogFormat != m.LogFormat {
			m.log.Warn("setting changes only when the agent restarts", "setting", "log_format")
		}
		err = a.Reload(n.Config)
	}
	if err != nil {
		m.log.Error("reload failed; keeping the current settings", "error", err)
	}
}

// Close stops a Run in progress and waits for it to return.
func (m *Main) Close() error {
	m.mu.Lock()
	cancel, done := m.cancel, m.done
	m.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	<-done
	return nil
}

func newAgentCmd(env *cliEnv) *cobra.Command {
	return &cobra.Command{
		Use:                "agent [flags]",
		Short:              "Run the agent: serve the socket and keep the apps running",
		DisableFlagParsing: true, // Main parses its own flags
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, a := range args {
				if a == "-h" || a == "--help" {
					fmt.Fprint(env.stdout, agentUsage())
					return nil
				}
			}
			m := &Main{Stderr: env.stderr, Getenv: env.getenv}
			if env.notifyHangup != nil {
				hup, stop := env.notifyHangup()
				defer stop()
				m.Reload = hup
			}
			if env.notifyUpgrade != nil {
				usr2, stop := env.notifyUpgrade()
				defer stop()
				m.Upgrade = usr2
			}
			if err := m.ParseFlags(args); err != nil {
				return err
			}
			defer m.Close()
			return m.Run(cmd.Context())
		},
	}
}

// uidRange is a pflag.Value for a uid range "MIN-MAX".
type uidRange state.UIDRange

func (r *uidRange) String() string {
	if r.Min == 0 && r.Max == 0 {
		return ""
	}
	return fmt.Sprintf("%d-%d", r.Min, r.Max)
}
func (r *uidRange) Type() string { return "range" }

func (r *uidRange) Set(s string) error {
	lo, hi, ok := strings.Cut(strings.TrimSpace(s), "-")
	lo1, err1 := strconv.Atoi(lo)
	hi1, err2 := strconv.Atoi(hi)
	if !ok || err1 != nil || err2 != nil || lo1 < 1 || hi1 < lo1 || hi1 >= 1<<32-1 {
		return fmt.Errorf("bad uid range %q: want MIN-MAX, 0 < MIN <= MAX", s)
	}
	r.Min, r.Max = lo1, hi1
	return nil
}

// byteSize is a pflag.Value for a size in bytes with an optional K, M or
// G suffix (powers of 1024; "KiB", "MB" and the like are accepted too).
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }
func (b *byteSize) Type() string   { return "size" }

func (b *byteSize) Set(s string) error {
	num := strings.TrimRight(strings.ToUpper(strings.TrimSpace(s)), "IB")
	mult := int64(1)
	if num != "" {
		switch num[len(num)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		}
		if mult > 1 {
			num = num[:len(num)-1]
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return fmt.Errorf("bad size %q: want bytes, or a number with K, M or G", s)
	}
	*b = byteSize(n * mult)
	return nil
}
