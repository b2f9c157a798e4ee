package build

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// ManifestName is the optional manifest's file name at the build root.
const ManifestName = "berth.json"

// ProcfileName is the Procfile's file name at the build root.
const ProcfileName = "Procfile"

// maxManifestSize bounds how much of berth.json is read.
const maxManifestSize = 1 << 20

// Duration is a time.Duration written in JSON as a Go duration string such
// as "2s" or "1m30s".
type Duration time.Duration

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string; numbers and negative durations are
// refused.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"2s\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q", s)
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", s)
	}
	*d = Duration(v)
	return nil
}

// Manifest is the parsed berth.json: settings a Procfile cannot express.
type Manifest struct {
	// Processes maps a process type to its settings. Types not listed get
	// the agent's defaults.
	Processes map[string]ProcessManifest `json:"processes,omitempty"`
}

// ProcessManifest holds one process type's settings. Zero values mean "use
// the agent's default".
type ProcessManifest struct {
	// Healthcheck, when set, says how to tell that an instance is healthy.
	Healthcheck *Healthcheck `json:"healthcheck,omitempty"`
	// SocketActivation says the process accepts its listening socket as
	// fd 3 (LISTEN_FDS=1, LISTEN_PID).
	SocketActivation bool `json:"socket_activation,omitempty"`
	// StopSignal is the signal sent to stop the process group: one of
	// SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGKILL; empty
	// means SIGTERM.
	StopSignal string `json:"stop_signal,omitempty"`
	// StopTimeout is how long to wait after StopSignal before SIGKILL;
	// zero means the agent's default.
	StopTimeout Duration `json:"stop_timeout,omitempty"`
	// Restart, when set, spaces the restarts of the type's instances
	// after they exit; its zero fields keep the agent's defaults.
	Restart *Restart `json:"restart,omitempty"`
	// Limits, when set, bound the resources of each instance
	// (resources.go).
	Limits *Resources `json:"limits,omitempty"`
	// DrainTimeout bounds how long a switch waits, once no new
	// connection reaches an old instance, for its accept queue to empty
	// and its connections to close before its stop signal (with
	// connection steering); zero means the agent's default. At most
	// MaxDrainTimeout.
	DrainTimeout Duration `json:"drain_timeout,omitempty"`
}

// MaxDrainTimeout bounds a type's drain_timeout.
const MaxDrainTimeout = time.Hour

// Restart is a process type's restart policy (see the supervisor's
// Backoff): an instance that ran at least MinRun is restarted at once;
// quicker exits in a row wait BackoffInitial doubling up to BackoffMax;
// a run of at least Settle resets that backoff. A zero field means the
// agent's default (1s, 5s, 100ms and 30s). Each set value lies within
// the bounds below; MinRun must not exceed Settle and BackoffInitial
// not BackoffMax when both are set (when one is left to the agent, the
// deploy checks the pair).
type Restart struct {
	// MinRun is the run time from which an exit is restarted at once;
	// at least 100ms, so a program that exits at once is never restarted
	// more than ten times a second.
	MinRun Duration `json:"min_run,omitempty"`
	// Settle is the run time after which the backoff is reset; at least
	// 100ms.
	Settle Duration `json:"settle,omitempty"`
	// BackoffInitial is the delay after the first quick exit; at least
	// 10ms.
	BackoffInitial Duration `json:"backoff_initial,omitempty"`
	// BackoffMax caps the delay; at least 1s, so a crash loop costs the
	// host at most one restart a second.
	BackoffMax Duration `json:"backoff_max,omitempty"`
}

// Bounds of the values a manifest may set in restart. All are at most
// maxRestartDuration.
const (
	minMinRun          = 100 * time.Millisecond
	minSettle          = 100 * time.Millisecond
	minBackoffInitial  = 10 * time.Millisecond
	minBackoffMax      = time.Second
	maxRestartDuration = time.Hour
)

// validate checks the restart settings of process type t.
func (r *Restart) validate(t string) error {
	for _, f := range []struct {
		key string
		v   Duration
		min time.Duration
	}{{"min_run", r.MinRun, minMinRun}, {"settle", r.Settle, minSettle},
		{"backoff_initial", r.BackoffInitial, minBackoffInitial}, {"backoff_max", r.BackoffMax, minBackoffMax}} {
		if d := time.Duration(f.v); d != 0 && (d < f.min || d > maxRestartDuration) {
			return fmt.Errorf("%w: process %q: restart %s %s must be between %s and %s", ErrManifest, t, f.key, d, f.min, maxRestartDuration)
		}
	}
	if r.MinRun != 0 && r.Settle != 0 && r.MinRun > r.Settle {
		return fmt.Errorf("%w: process %q: restart min_run %s must not exceed settle %s", ErrManifest, t, time.Duration(r.MinRun), time.Duration(r.Settle))
	}
	if r.BackoffInitial != 0 && r.BackoffMax != 0 && r.BackoffInitial > r.BackoffMax {
		return fmt.Errorf("%w: process %q: restart backoff_initial %s must not exceed backoff_max %s", ErrManifest, t, time.Duration(r.BackoffInitial), time.Duration(r.BackoffMax))
	}
	return nil
}

// Healthcheck says how to probe an instance, following Docker's
// HEALTHCHECK. Exactly one of HTTP, TCP and Exec is set.
type Healthcheck struct {
	// HTTP is a path (starting with '/') for a GET on the instance's port;
	// a 2xx or 3xx answer is healthy.
	HTTP string `json:"http,omitempty"`
	// TCP says a successful TCP connect to the instance's port is healthy.
	TCP bool `json:"tcp,omitempty"`
	// Exec is a shell command run in the build dir; exit status 0 is healthy.
	Exec string `json:"exec,omitempty"`
	// Interval is the time between probes; zero means the agent's default.
	Interval Duration `json:"interval,omitempty"`
	// Timeout bounds one probe; zero means the agent's default.
	Timeout Duration `json:"timeout,omitempty"`
	// StartPeriod is the grace time after start during which failures do
	// not count; zero means none.
	StartPeriod Duration `json:"start_period,omitempty"`
	// Retries is how many consecutive failures make an instance unhealthy;
	// zero means the agent's default.
	Retries int `json:"retries,omitempty"`
}

// stopSignals are the signals a manifest may name as stop_signal.
var stopSignals = map[string]bool{
	"SIGTERM": true, "SIGINT": true, "SIGQUIT": true, "SIGHUP": true,
	"SIGUSR1": true, "SIGUSR2": true, "SIGKILL": true,
}

// ParseManifest parses berth.json strictly: unknown keys, trailing data,
// invalid process type names, invalid signals, negative durations, health
// checks that do not set exactly one of http, tcp and exec and restart
// settings out of their bounds are errors wrapping ErrManifest. It does not know the Procfile; Import checks that
// every process type named here is declared there.
func ParseManifest(data []byte) (Manifest, error) {
	if len(data) > maxManifestSize {
		return Manifest{}, fmt.Errorf("%w: larger than %d bytes", ErrManifest, maxManifestSize)
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return Manifest{}, fmt.Errorf("%w: want a JSON object", ErrManifest)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("%w: %v", ErrManifest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Manifest{}, fmt.Errorf("%w: unexpected data after the JSON object", ErrManifest)
	}
	if err := m.validate(); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// validate checks the values the JSON decoder cannot.
func (m Manifest) validate() error {
	for _, t := range m.types() { // sorted: the first error is deterministic
		p := m.Processes[t]
		if !ValidProcessType(t) {
			return fmt.Errorf("%w: invalid process type %q", ErrManifest, t)
		}
		if p.StopSignal != "" && !stopSignals[p.StopSignal] {
			return fmt.Errorf("%w: process %q: stop_signal %q is not one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGKILL", ErrManifest, t, p.StopSignal)
		}
		if t == "release" && (p.Healthcheck != nil || p.SocketActivation || p.Restart != nil || p.DrainTimeout != 0) {
			return fmt.Errorf("%w: process %q is the release phase and cannot have a healthcheck, socket_activation, restart or drain_timeout", ErrManifest, t)
		}
		if d := time.Duration(p.DrainTimeout); d > MaxDrainTimeout {
			return fmt.Errorf("%w: process %q: drain_timeout %s is longer than %s", ErrManifest, t, d, MaxDrainTimeout)
		}
		if p.Restart != nil {
			if err := p.Restart.validate(t); err != nil {
				return err
			}
		}
		if p.Limits != nil {
			if t == "release" {
				return fmt.Errorf("%w: process %q is the release phase and cannot have limits", ErrManifest, t)
			}
			if err := p.Limits.validate(t); err != nil {
				return err
			}
		}
		if h := p.Healthcheck; h != nil {
			n := 0
			if h.HTTP != "" {
				n++
				if !strings.HasPrefix(h.HTTP, "/") || strings.ContainsAny(h.HTTP, " \t\r\n") {
					return fmt.Errorf("%w: process %q: healthcheck http %q must be a path starting with '/' without blanks", ErrManifest, t, h.HTTP)
				}
			}
			if h.TCP {
				n++
			}
			if h.Exec != "" {
				n++
				if strings.IndexByte(h.Exec, 0) >= 0 {
					return fmt.Errorf("%w: process %q: healthcheck exec contains a NUL byte", ErrManifest, t)
				}
			}
			if n != 1 {
				return fmt.Errorf("%w: process %q: healthcheck must set exactly one of http, tcp and exec", ErrManifest, t)
			}
			if h.Retries < 0 {
				return fmt.Errorf("%w: process %q: healthcheck retries %d is negative", ErrManifest, t, h.Retries)
			}
		}
	}
	return nil
}

// checkTypes returns an error wrapping ErrManifest if the manifest names a
// process type that the Procfile does not declare.
func (m Manifest) checkTypes(p Procfile) error {
	for _, t := range m.types() {
		if _, ok := p.Command(t); !ok {
			return fmt.Errorf("%w: process type %q is not declared in the Procfile (declared: %s)", ErrManifest, t, strings.Join(p.Types(), ", "))
		}
	}
	return nil
}

// types returns the process types the manifest names, sorted.
func (m Manifest) types() []string { return slices.Sorted(maps.Keys(m.Processes)) }
