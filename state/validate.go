package state

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
)

// Limits on stored values. They keep one bad request from bloating the
// database or asking for absurd resources; each refusal names the limit.
// The README's "Limits" section lists them with state/build's.
const (
	// MaxProcessCount is the largest count SetFormation accepts per type.
	MaxProcessCount = 1000
	// MaxAppProcesses is the most instances the counts of one app's
	// formation may add up to. Types never scaled run one instance each
	// and are bounded by build.MaxProcfileTypes.
	MaxAppProcesses = 2000
	// MaxAgentProcesses is the most instances the formations of all apps
	// of an agent may add up to: each instance costs a process, two pipes
	// and a log file.
	MaxAgentProcesses = 5000
	// MaxOutputBytes is the most release-phase output MarkFailed keeps;
	// longer output keeps its tail behind a truncation notice.
	MaxOutputBytes = 64 << 10
	// MaxConfigVars is the most env vars a config may hold.
	MaxConfigVars = 1000
	// MaxConfigKeyLen is the longest env var name a config may hold, in
	// bytes.
	MaxConfigKeyLen = 256
	// MaxConfigValueBytes is the largest env var value a config may hold
	// (Linux refuses to exec with an env string over 128 KiB).
	MaxConfigValueBytes = 64 << 10
	// MaxConfigBytes is the most a whole config (names and values) may
	// hold, well under what exec accepts for an environment.
	MaxConfigBytes = 1 << 20
	// MaxReasonLen is the longest stored failure reason, in bytes; a
	// reason is one line (see OneLine).
	MaxReasonLen = 512
)

// The patterns compile on first use: every run of the CLI starts the
// whole binary, and compiling a dozen patterns in package inits (here,
// in systemd and in agent/fleet) cost it 0.5 ms before main.
var (
	appNameRE  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`) })
	envNameRE  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`) })
	procTypeRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_-]+$`) })
	instanceRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_-]+\.[1-9][0-9]{0,5}$`) })
	userRE     = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.-]{0,31}|[0-9]{1,10})$`) })
	digestRE   = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{64}$`) })
)

const (
	appNameRule  = "must match ^[a-z][a-z0-9-]{0,62}$ (a lowercase letter, then up to 62 lowercase letters, digits or dashes)"
	envNameRule  = "must match ^[A-Za-z_][A-Za-z0-9_]*$ (a letter or underscore, then letters, digits or underscores)"
	procTypeRule = "must match ^[A-Za-z0-9_-]+$ (letters, digits, underscores or dashes, like a Procfile type) and be at most 63 characters"
	instanceRule = "must be <type>.<n> with a process type and a number from 1 (like web.1)"
	userRule     = "must be a user name (a letter or underscore, then up to 31 letters, digits, '_', '.', '-') or a numeric uid"
	digestRule   = "must be a sha256 digest: 64 lowercase hex characters"
)

// ValidateAppName reports whether name is a valid app name:
// ^[a-z][a-z0-9-]{0,62}$. The error is a *ValidationError naming the value
// and the rule.
func ValidateAppName(name string) error {
	if !appNameRE().MatchString(name) {
		return invalidName("app name", name, appNameRule)
	}
	return nil
}

// ValidateEnvName reports whether name is a valid env var name:
// ^[A-Za-z_][A-Za-z0-9_]*$.
func ValidateEnvName(name string) error {
	if !envNameRE().MatchString(name) {
		return invalidName("env var name", name, envNameRule)
	}
	return nil
}

// ValidateProcessType reports whether name is a valid process type (a
// Procfile type such as web or worker): ^[A-Za-z0-9_-]+$, at most 63
// characters.
func ValidateProcessType(name string) error {
	if len(name) > 63 || !procTypeRE().MatchString(name) {
		return invalidName("process type", name, procTypeRule)
	}
	return nil
}

// ValidateInstance reports whether name is a valid instance name:
// <type>.<n> such as web.1.
func ValidateInstance(name string) error {
	typ, _, _ := strings.Cut(name, ".")
	if !instanceRE().MatchString(name) || len(typ) > 63 {
		return invalidName("instance name", name, instanceRule)
	}
	return nil
}

// ValidateUser reports whether user is a valid run-as user: empty (the
// agent's default), a user name, or a numeric uid.
func ValidateUser(user string) error {
	if user != "" && !userRE().MatchString(user) {
		return invalidName("user", user, userRule)
	}
	return nil
}

// ValidateDigest reports whether digest is a sha256 hex digest.
func ValidateDigest(digest string) error {
	if !digestRE().MatchString(digest) {
		return invalidValue("build digest", digest, digestRule)
	}
	return nil
}

// validateConfig checks every name of cfg, that no value holds a NUL
// byte (an environment cannot carry one), and the config limits. Values
// are never quoted in errors: they may be secrets.
func validateConfig(cfg map[string]string) error {
	if len(cfg) > MaxConfigVars {
		return invalidValue("config", fmt.Sprintf("%d vars", len(cfg)), fmt.Sprintf("must hold at most %d vars (MaxConfigVars)", MaxConfigVars))
	}
	total := 0
	for k, v := range cfg {
		if len(k) > MaxConfigKeyLen {
			return invalidName("env var name", abbrev(k), fmt.Sprintf("is %d bytes, must be at most %d (MaxConfigKeyLen)", len(k), MaxConfigKeyLen))
		}
		if err := ValidateEnvName(k); err != nil {
			return err
		}
		if strings.IndexByte(v, 0) >= 0 {
			return invalidValue("value of env var", k, "must not contain a NUL byte")
		}
		if len(v) > MaxConfigValueBytes {
			return invalidValue("value of env var", k, fmt.Sprintf("is %d bytes, must be at most %d (MaxConfigValueBytes)", len(v), MaxConfigValueBytes))
		}
		total += len(k) + 1 + len(v)
	}
	if total > MaxConfigBytes {
		return invalidValue("config", fmt.Sprintf("%d bytes", total), fmt.Sprintf("must hold at most %d bytes of names and values (MaxConfigBytes)", MaxConfigBytes))
	}
	return nil
}

// abbrev shortens a refused value for an error message: its first 32
// bytes and "...".
func abbrev(s string) string {
	if len(s) <= 32 {
		return s
	}
	return s[:32] + "..."
}

// OneLine makes reason fit a one-line stored reason: its first non-blank
// line, cut at MaxReasonLen, and " (see berth releases info)" when
// anything was left out. Full output is kept apart (Release.Output).
func OneLine(reason string) string {
	reason = strings.TrimSpace(reason)
	first, rest, multi := strings.Cut(reason, "\n")
	first = strings.TrimSpace(strings.TrimSuffix(first, "\r"))
	cut := len(first) > MaxReasonLen
	if cut {
		first = strings.ToValidUTF8(first[:MaxReasonLen], "")
	}
	if cut || (multi && strings.TrimSpace(rest) != "") {
		return first + " (see berth releases info)"
	}
	return first
}

// validateFormation checks every type name and count of f.
func validateFormation(f map[string]int) error {
	for typ, n := range f {
		if err := ValidateProcessType(typ); err != nil {
			return err
		}
		if n < 0 || n > MaxProcessCount {
			return invalidValue("process count", fmt.Sprintf("%s=%d", typ, n), fmt.Sprintf("must be from 0 to %d (MaxProcessCount)", MaxProcessCount))
		}
	}
	return nil
}
