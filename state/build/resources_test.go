package build

import (
	"errors"
	"strings"
	"testing"
)

// TestParseManifest_Limits covers the limits of a process type: the
// accepted spellings of sizes, and every bad value refused with an
// error that names the type and the field.
func TestParseManifest_Limits(t *testing.T) {
	m, err := ParseManifest([]byte(`{"processes": {
		"web": {"limits": {"memory_max": "256M", "memory_high": "200MiB", "cpus": 0.5, "tasks_max": 64}},
		"worker": {"limits": {"memory_max": 1073741824}},
		"clock": {"limits": {"memory_high": "2 GB", "cpus": 2}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := *m.Processes["web"].Limits; got != (Resources{MemoryMax: 256 << 20, MemoryHigh: 200 << 20, CPUs: 0.5, TasksMax: 64}) {
		t.Errorf("web limits %+v", got)
	}
	if got := m.Processes["worker"].Limits.MemoryMax; got != 1<<30 {
		t.Errorf("worker memory_max %d", got)
	}
	if got := *m.Processes["clock"].Limits; got != (Resources{MemoryHigh: 2 << 30, CPUs: 2}) {
		t.Errorf("clock limits %+v", got)
	}

	for _, tc := range []struct{ limits, want string }{
		{`{"memory_max": "256X"}`, `unknown unit "X"`},
		{`{"memory_max": "1.5G"}`, `limits memory_max: size "1.5G": whole numbers only`},
		{`{"memory_high": null}`, `limits memory_high: size "null"`},
		{`{"memory_max": -1}`, `want a whole number of bytes`},
		{`{"memory_max": "-1M"}`, `want a whole number of bytes`},
		{`{"memory_max": "99999999999T"}`, `too large`},
		{`{"memory_max": "99999999999999999999"}`, `too large`},
		{`{"memory_max": "512K"}`, `memory_max 524288 bytes must be between 1M and 1P`},
		{`{"memory_max": "2048T"}`, `must be between 1M and 1P`},
		{`{"memory_max": "64M", "memory_high": "128M"}`, `memory_high 134217728 must not exceed memory_max 67108864`},
		{`{"cpus": 0.001}`, `cpus 0.001 must be between 0.01 and 4096`},
		{`{"cpus": -1}`, `cpus -1 must be between`},
		{`{"cpus": "half"}`, `cannot unmarshal string`},
		{`{"tasks_max": -3}`, `tasks_max -3 must be between 1 and 4194304`},
		{`{"tasks_max": 5000000}`, `must be between 1 and 4194304`},
		{`{"tasks_max": 1.5}`, `cannot unmarshal number`},
		{`{}`, `sets none of memory_max`},
		{`{"memory": "1G"}`, `unknown field "memory"`},
	} {
		_, err := ParseManifest([]byte(`{"processes": {"web": {"limits": ` + tc.limits + `}}}`))
		if !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("limits %s: %v, want ErrManifest saying %q", tc.limits, err, tc.want)
		}
	}
	_, err = ParseManifest([]byte(`{"processes": {"release": {"limits": {"memory_max": "1G"}}}}`))
	if !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), "release phase and cannot have limits") {
		t.Errorf("limits on the release phase: %v", err)
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1": 1, "10B": 10, "1K": 1024, "1kib": 1024, "3 MB": 3 << 20,
		"256M": 256 << 20, "1G": 1 << 30, "1GiB": 1 << 30, "2T": 2 << 40} {
		if got, err := ParseBytes(in); err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "1I", "1iB", "1KiBB", "0x10", "1e6", "8E"} {
		if _, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) succeeded", in)
		}
	}
}
