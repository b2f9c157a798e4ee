package systemd

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults for UnitConfig fields left zero.
const (
	DefaultDataDir     = "/var/lib/berth"
	DefaultSocketPath  = "/run/berth/berth.sock"
	DefaultSocketGroup = "berth"
	DefaultStopTimeout = 10 * time.Second
	DefaultWatchdogSec = 30 * time.Second

	// StopMargin is added to UnitConfig.StopTimeout for TimeoutStopSec=:
	// the agent needs the apps' stop timeout to stop them, plus time to
	// close its store and socket, before systemd resorts to SIGKILL.
	StopMargin = 15 * time.Second

	// AbortTimeout is the unit's TimeoutAbortSec=: how long an agent that
	// missed the watchdog gets to dump its stacks after SIGABRT before
	// systemd kills it.
	AbortTimeout = 10 * time.Second
)

// Environment variables the unit sets from UnitConfig fields. The agent
// reads them like its flags.
const (
	EnvDataDir     = "BERTH_DATA_DIR"
	EnvSocket      = "BERTH_SOCKET"
	EnvSocketGroup = "BERTH_SOCKET_GROUP"
	EnvStopTimeout = "BERTH_STOP_TIMEOUT"
)

// UnitConfig describes the berth.service (and berth.socket) to render and
// install. The zero value of each field means the default named beside it.
type UnitConfig struct {
	// BinaryPath is the absolute path of the berth binary; the unit runs
	// `BinaryPath agent`. Required.
	BinaryPath string
	// DataDir is the agent's data dir. Empty means /var/lib/berth (the
	// unit's StateDirectory=).
	DataDir string
	// SocketPath is the control socket. Empty means /run/berth/berth.sock
	// (in the unit's RuntimeDirectory=).
	SocketPath string
	// SocketGroup is the group whose members may use the socket. Empty
	// means "berth". Install creates it when it does not exist.
	SocketGroup string
	// StopTimeout is the apps' stop timeout (BERTH_STOP_TIMEOUT, the time
	// between a process's stop signal and SIGKILL); TimeoutStopSec= is
	// this plus StopMargin. Zero means 10s.
	StopTimeout time.Duration
	// WatchdogSec is the unit's WatchdogSec=. Zero means 30s; it must be
	// at least a second.
	WatchdogSec time.Duration
	// Env holds further agent settings (BERTH_* variables) for the unit's
	// Environment= lines. Values never appear in errors.
	Env map[string]string
	// SocketActivation adds berth.socket: systemd owns the listening
	// socket and passes it to the agent, so clients can connect while the
	// agent restarts.
	SocketActivation bool
}

var (
	groupNameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,30}[$]?$`) })
	envNameRE   = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`) })
)

// withDefaults returns c with its zero fields set to the defaults.
func (c UnitConfig) withDefaults() UnitConfig {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.SocketPath == "" {
		c.SocketPath = DefaultSocketPath
	}
	if c.SocketGroup == "" {
		c.SocketGroup = DefaultSocketGroup
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.WatchdogSec == 0 {
		c.WatchdogSec = DefaultWatchdogSec
	}
	return c
}

// Validate reports the first setting that cannot go into a unit file, as
// a *UnitConfigError wrapping ErrInvalidUnit.
func (c UnitConfig) Validate() error {
	c = c.withDefaults()
	bad := func(field, value, reason string) error {
		return &UnitConfigError{Field: field, Value: value, Reason: reason}
	}
	for _, p := range []struct{ field, value string }{
		{"BinaryPath", c.BinaryPath}, {"DataDir", c.DataDir}, {"SocketPath", c.SocketPath},
	} {
		switch {
		case p.value == "":
			return bad(p.field, p.value, "is required")
		case hasControl(p.value):
			return bad(p.field, p.value, "contains a control character")
		case !filepath.IsAbs(p.value):
			return bad(p.field, p.value, "must be an absolute path")
		case filepath.Clean(p.value) != p.value:
			return bad(p.field, p.value, "must be a clean path (no //, . or .. elements, no trailing slash)")
		}
	}
	if len(c.SocketPath) >= 108 {
		return bad("SocketPath", c.SocketPath, "is longer than a unix socket path may be (107 bytes)")
	}
	if !groupNameRE().MatchString(c.SocketGroup) {
		return bad("SocketGroup", c.SocketGroup, "is not a valid group name (lower case letters, digits, _ and -, at most 32)")
	}
	if c.StopTimeout < 0 {
		return bad("StopTimeout", c.StopTimeout.String(), "must not be negative")
	}
	if c.WatchdogSec < time.Second {
		return bad("WatchdogSec", c.WatchdogSec.String(), "must be at least 1s")
	}
	for _, k := range sortedKeys(c.Env) {
		switch k {
		case EnvDataDir, EnvSocket, EnvSocketGroup, EnvStopTimeout:
			return bad("Env["+k+"]", "", "is set by its own field (DataDir, SocketPath, SocketGroup, StopTimeout)")
		}
		if !envNameRE().MatchString(k) {
			return bad("Env", k, "is not a valid environment variable name")
		}
		if strings.ContainsAny(c.Env[k], "\n\r\x00") {
			return bad("Env["+k+"]", "", "value contains a line break or NUL")
		}
	}
	return nil
}

// RenderService returns the berth.service unit for c (defaults filled
// in). It expects a config that passes Validate; values are escaped for
// systemd's quoting and specifier rules.
func RenderService(c UnitConfig) string {
	c = c.withDefaults()
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# berth.service: written by `berth systemd install`.")
	w("# Local changes belong in `systemctl edit berth` or /etc/default/berth.")
	w("[Unit]")
	w("Description=berth release agent")
	if c.SocketActivation {
		w("Requires=berth.socket")
		w("After=network.target berth.socket")
	} else {
		w("After=network.target")
	}
	w("# Never give up restarting: the apps must come back with nobody around.")
	w("StartLimitIntervalSec=0")
	w("")
	w("[Service]")
	w("Type=notify")
	w("NotifyAccess=main")
	w("ExecStart=%s agent", execArg(c.BinaryPath))
	w("# reload: the agent re-executes its binary in place (an upgrade), keeping its PID, apps,")
	w("# their pipes and sockets (SIGUSR2; SIGHUP only re-reads the settings).")
	w("ExecReload=/bin/kill -USR2 $MAINPID")
	w("Restart=always")
	w("RestartSec=1s")
	w("# Apps outlive the agent: systemd signals only the agent. On SIGTERM the agent stops its")
	w("# apps for a stop or a shutdown, and leaves them to the next agent for a restart; after a")
	w("# crash the next agent adopts them, with their pipes and sockets from the fd store.")
	w("KillMode=process")
	w("FileDescriptorStoreMax=%d", FDStoreMax)
	w("TimeoutStopSec=%s", unitDuration(c.StopTimeout+StopMargin))
	w("WatchdogSec=%s", unitDuration(c.WatchdogSec))
	w("# On a watchdog timeout the agent gets SIGABRT (Go prints every goroutine's stack to the")
	w("# journal and exits); SIGKILL if it cannot even do that (it is frozen).")
	w("TimeoutAbortSec=%s", unitDuration(AbortTimeout))
	w("Delegate=yes")
	w("StateDirectory=berth")
	w("RuntimeDirectory=berth")
	w("RuntimeDirectoryPreserve=yes")
	w("Environment=%s", envArg(EnvDataDir, c.DataDir))
	w("Environment=%s", envArg(EnvSocket, c.SocketPath))
	w("Environment=%s", envArg(EnvSocketGroup, c.SocketGroup))
	w("Environment=%s", envArg(EnvStopTimeout, c.StopTimeout.String()))
	for _, k := range sortedKeys(c.Env) {
		w("Environment=%s", envArg(k, c.Env[k]))
	}
	w("EnvironmentFile=-/etc/default/berth")
	w("")
	w("[Install]")
	w("WantedBy=multi-user.target")
	return b.String()
}

// RenderSocket returns the berth.socket unit for c (defaults filled in):
// the control socket, owned by root and c.SocketGroup, mode 0660.
func RenderSocket(c UnitConfig) string {
	c = c.withDefaults()
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# berth.socket: written by `berth systemd install`.")
	w("[Unit]")
	w("Description=berth control socket")
	w("")
	w("[Socket]")
	w("ListenStream=%s", escapeSpecifiers(c.SocketPath))
	w("SocketUser=root")
	w("SocketGroup=%s", c.SocketGroup)
	w("SocketMode=0660")
	w("DirectoryMode=0755")
	w("")
	w("[Install]")
	w("WantedBy=sockets.target")
	return b.String()
}

// unitDuration renders d as systemd reads a time span: whole seconds, or
// milliseconds when d is not a whole number of seconds.
func unitDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return fmt.Sprintf("%dms", d/time.Millisecond)
}

// escapeSpecifiers doubles % so systemd does not expand specifiers.
func escapeSpecifiers(s string) string { return strings.ReplaceAll(s, "%", "%%") }

// execArg renders one ExecStart= word: specifiers and $ escaped, and
// quoted when it holds blanks, quotes or backslashes.
func execArg(s string) string {
	s = strings.ReplaceAll(escapeSpecifiers(s), "$", "$$")
	if !strings.ContainsAny(s, " \t\"'\\;") {
		return s
	}
	return cQuote(s)
}

// envArg renders one Environment= assignment, always quoted.
func envArg(k, v string) string { return cQuote(escapeSpecifiers(k + "=" + v)) }

// cQuote puts s in double quotes, escaping backslashes and quotes the way
// systemd's unquoting undoes.
func cQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\t", `\t`)
	return `"` + r.Replace(s) + `"`
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
