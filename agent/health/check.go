package health

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"
	"unicode"
)

// Defaults applied to the zero values of a Check.
const (
	DefaultInterval = 2 * time.Second
	DefaultTimeout  = 1 * time.Second
	DefaultRetries  = 3
)

// MaxOutput bounds Result.Output, as Docker bounds a check's output.
const MaxOutput = 4096

// Check is one process type's health check. Exactly one of HTTP, TCP and
// Exec is set.
type Check struct {
	// HTTP is the path of a GET on http://127.0.0.1:<port>; a 2xx or 3xx
	// answer is healthy (redirects are not followed).
	HTTP string
	// TCP makes a connect to 127.0.0.1:<port> the check.
	TCP bool
	// Exec is a command run with sh -c in the instance's environment and
	// directory; exit status 0 is healthy.
	Exec string
	// Interval is the time between the end of one probe and the start of
	// the next; zero means DefaultInterval.
	Interval time.Duration
	// Timeout bounds one probe; zero means DefaultTimeout.
	Timeout time.Duration
	// StartPeriod is the time after start during which failures do not
	// count; zero means none. A success ends it early.
	StartPeriod time.Duration
	// Retries is how many consecutive failures make an instance unhealthy;
	// zero means DefaultRetries.
	Retries int
}

// Kind names the check: "http", "tcp" or "exec" ("" when none is set).
func (c Check) Kind() string {
	switch {
	case c.HTTP != "":
		return "http"
	case c.TCP:
		return "tcp"
	case c.Exec != "":
		return "exec"
	}
	return ""
}

// String describes the check for logs and events, e.g. "http GET /up".
func (c Check) String() string {
	switch c.Kind() {
	case "http":
		return "http GET " + c.HTTP
	case "tcp":
		return "tcp connect"
	case "exec":
		return "exec " + c.Exec
	}
	return "no check"
}

// WithDefaults returns c with its zero fields set to the defaults.
func (c Check) WithDefaults() Check {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Retries == 0 {
		c.Retries = DefaultRetries
	}
	return c
}

// Validate reports (wrapping ErrInvalidCheck, naming the bad field and
// value) a check that cannot be probed.
func (c Check) Validate() error {
	kinds := 0
	for _, set := range []bool{c.HTTP != "", c.TCP, c.Exec != ""} {
		if set {
			kinds++
		}
	}
	if kinds != 1 {
		return fmt.Errorf("%w: want exactly one of http, tcp and exec, got %d", ErrInvalidCheck, kinds)
	}
	if c.HTTP != "" {
		if !strings.HasPrefix(c.HTTP, "/") {
			return fmt.Errorf("%w: http path %q must start with /", ErrInvalidCheck, c.HTTP)
		}
		if i := strings.IndexFunc(c.HTTP, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }); i >= 0 {
			return fmt.Errorf("%w: http path %q contains a space or control character", ErrInvalidCheck, c.HTTP)
		}
		if strings.Contains(c.HTTP, "#") {
			return fmt.Errorf("%w: http path %q contains a fragment", ErrInvalidCheck, c.HTTP)
		}
	}
	if c.Exec != "" && strings.TrimSpace(c.Exec) == "" {
		return fmt.Errorf("%w: exec command %q is blank", ErrInvalidCheck, c.Exec)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"interval", c.Interval}, {"timeout", c.Timeout}, {"start_period", c.StartPeriod}} {
		if d.v < 0 {
			return fmt.Errorf("%w: %s %s is negative", ErrInvalidCheck, d.name, d.v)
		}
	}
	if c.Retries < 0 {
		return fmt.Errorf("%w: retries %d is negative", ErrInvalidCheck, c.Retries)
	}
	return nil
}

// Target is the instance a check probes.
type Target struct {
	// Port is the instance's port on 127.0.0.1 (http and tcp checks).
	Port int
	// Env and Dir are the instance's environment and working directory
	// (exec checks).
	Env []string
	Dir string
	// StartedAt is when the instance started: the start period counts from
	// it. Zero means when Monitor.Run begins.
	StartedAt time.Time
	// Dial, when set, opens the connection of an http or tcp check in
	// place of a plain dial of 127.0.0.1:Port (it gets network "tcp" and
	// that address). An http check then keeps the connection alive (no
	// "Connection: close"), so that the server still holds its end when
	// the probe closes the connection once the answer was read (or the
	// probe failed). A Dial or Close error wrapping ErrNotReached says
	// that the instance did not answer (another process did, or none):
	// the Result is Unreached. Nil means a plain dial; results are never
	// Unreached then.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// RunExec runs command with sh -c, env and dir, and returns its exit
	// code and combined output; it must kill the command when ctx ends and
	// then return a non-nil error. The agent passes a function that runs
	// the command through its supervisor so that the reaper is not raced.
	RunExec func(ctx context.Context, command string, env []string, dir string) (exitCode int, output []byte, err error)
}

// validate reports a target the check cannot probe.
func (t Target) validate(c Check) error {
	switch c.Kind() {
	case "http", "tcp":
		if t.Port <= 0 || t.Port > 65535 {
			return fmt.Errorf("%w: %s check needs a port, got %d", ErrInvalidCheck, c.Kind(), t.Port)
		}
	case "exec":
		if t.RunExec == nil {
			return fmt.Errorf("%w: exec check %q needs Target.RunExec", ErrInvalidCheck, c.Exec)
		}
	}
	return nil
}

// validate checks both the check and the target.
func validate(c Check, t Target) error {
	if err := c.Validate(); err != nil {
		return err
	}
	return t.validate(c)
}
