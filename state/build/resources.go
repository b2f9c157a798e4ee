package build

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Resources are a process type's resource limits in berth.json, applied to
// each instance's own cgroup (cgroup v2, under systemd with Delegate=yes):
//
//	"limits": {"memory_max": "256M", "memory_high": "200M",
//	           "cpus": 0.5, "tasks_max": 64}
//
// A field left out sets no limit. Sizes are bytes, as a JSON integer or
// a string with a binary suffix (K, M, G, T, optionally followed by iB
// or B: "256M", "256MiB" and 268435456 are the same).
type Resources struct {
	// MemoryMax is the hard memory limit (memory.max): an instance that
	// needs more is killed by the OOM killer (all its processes) and
	// restarted with backoff like a crash.
	MemoryMax Bytes `json:"memory_max,omitempty"`
	// MemoryHigh is the throttling limit (memory.high): above it the
	// instance is slowed down and reclaimed from. At most MemoryMax.
	MemoryHigh Bytes `json:"memory_high,omitempty"`
	// CPUs is a share of cores (cpu.max): 0.5 is half of one core, 2 two
	// cores' worth of time per period.
	CPUs float64 `json:"cpus,omitempty"`
	// TasksMax bounds the instance's processes and threads (pids.max).
	TasksMax int64 `json:"tasks_max,omitempty"`
}

// UnmarshalJSON reads the limits strictly (unknown keys are errors),
// naming the field of a bad size.
func (r *Resources) UnmarshalJSON(data []byte) error {
	var raw struct {
		MemoryMax  json.RawMessage `json:"memory_max"`
		MemoryHigh json.RawMessage `json:"memory_high"`
		CPUs       float64         `json:"cpus"`
		TasksMax   int64           `json:"tasks_max"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return fmt.Errorf("limits: %w", err)
	}
	out := Resources{CPUs: raw.CPUs, TasksMax: raw.TasksMax}
	for _, f := range []struct {
		key string
		raw json.RawMessage
		to  *Bytes
	}{{"memory_max", raw.MemoryMax, &out.MemoryMax}, {"memory_high", raw.MemoryHigh, &out.MemoryHigh}} {
		if len(f.raw) == 0 {
			continue
		}
		if err := f.to.UnmarshalJSON(f.raw); err != nil {
			return fmt.Errorf("limits %s: %w", f.key, err)
		}
	}
	*r = out
	return nil
}

// Bounds of the limits a manifest may set.
const (
	// MinMemoryLimit is the smallest memory_max or memory_high: below
	// it no process starts.
	MinMemoryLimit = 1 << 20
	// MaxMemoryLimit is the largest (1 PiB).
	MaxMemoryLimit = 1 << 50
	// MinCPUs is the smallest share of cores: cpu.max takes a quota of
	// at least 1ms per 100ms period.
	MinCPUs = 0.01
	// MaxCPUs is the largest share of cores.
	MaxCPUs = 4096
	// MaxTasks is the largest tasks_max (the kernel's highest pid_max).
	MaxTasks = 4194304
)

// Bytes is a size in bytes, written in JSON as an integer or as a string
// with a binary suffix ("256M", "1GiB").
type Bytes int64

// MarshalJSON writes the size as an integer.
func (b Bytes) MarshalJSON() ([]byte, error) { return []byte(strconv.FormatInt(int64(b), 10)), nil }

// UnmarshalJSON reads an integer or a string such as "256M"; fractions
// ("1.5G") and negative sizes are refused.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	var s string
	if len(data) > 0 && data[0] == '"' {
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
	} else {
		s = string(data)
	}
	n, err := ParseBytes(s)
	if err != nil {
		return err
	}
	*b = Bytes(n)
	return nil
}

// ParseBytes reads a size: digits, then optionally K, M, G or T (powers
// of 1024), optionally followed by "iB" or "B"; a bare "B" means bytes.
func ParseBytes(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q: want a whole number of bytes, optionally with K, M, G or T (e.g. \"256M\")", orig)
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: too large", orig)
	}
	unit := strings.TrimSpace(s[i:])
	if strings.HasPrefix(unit, ".") {
		return 0, fmt.Errorf("size %q: whole numbers only (write 1536M for 1.5G)", orig)
	}
	shift, ok := sizeUnits[strings.ToUpper(unit)]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q (want K, M, G or T)", orig, unit)
	}
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("size %q: too large", orig)
	}
	return n << shift, nil
}

// sizeUnits are the suffixes ParseBytes takes, upper-cased, with their
// power of two.
var sizeUnits = map[string]int{"": 0, "B": 0,
	"K": 10, "KB": 10, "KIB": 10, "M": 20, "MB": 20, "MIB": 20,
	"G": 30, "GB": 30, "GIB": 30, "T": 40, "TB": 40, "TIB": 40}

// validate checks the limits of process type t.
func (l *Resources) validate(t string) error {
	for _, f := range []struct {
		key string
		v   Bytes
	}{{"memory_max", l.MemoryMax}, {"memory_high", l.MemoryHigh}} {
		if f.v != 0 && (f.v < MinMemoryLimit || f.v > MaxMemoryLimit) {
			return fmt.Errorf("%w: process %q: limits %s %d bytes must be between 1M and 1P", ErrManifest, t, f.key, int64(f.v))
		}
	}
	if l.MemoryMax != 0 && l.MemoryHigh > l.MemoryMax {
		return fmt.Errorf("%w: process %q: limits memory_high %d must not exceed memory_max %d", ErrManifest, t, int64(l.MemoryHigh), int64(l.MemoryMax))
	}
	if l.CPUs != 0 && (l.CPUs < MinCPUs || l.CPUs > MaxCPUs || math.IsNaN(l.CPUs)) {
		return fmt.Errorf("%w: process %q: limits cpus %g must be between %g and %d (a share of cores)", ErrManifest, t, l.CPUs, MinCPUs, MaxCPUs)
	}
	if l.CPUs < 0 {
		return fmt.Errorf("%w: process %q: limits cpus %g must not be negative", ErrManifest, t, l.CPUs)
	}
	if l.TasksMax < 0 || l.TasksMax > MaxTasks {
		return fmt.Errorf("%w: process %q: limits tasks_max %d must be between 1 and %d", ErrManifest, t, l.TasksMax, MaxTasks)
	}
	if *l == (Resources{}) {
		return fmt.Errorf("%w: process %q: limits sets none of memory_max, memory_high, cpus and tasks_max", ErrManifest, t)
	}
	return nil
}
