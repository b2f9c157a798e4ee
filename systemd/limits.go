package systemd

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// Resource limits of an instance's cgroup, and what it uses. The
// controllers they need (memory, cpu, pids) are enabled for the
// instances' cgroups on first use: in <own>/cgroup.subtree_control, then
// in <own>/apps/cgroup.subtree_control (the agent itself sits in the
// leaf <own>/agent, so neither holds a process). Those that systemd did
// not delegate stay off: a limit that needs one fails the start and
// says so; the use of an instance without them reads as 0.

// CPUPeriodUsec is the period of cpu.max: a share of cores c is written
// as quota c*CPUPeriodUsec per period.
const CPUPeriodUsec = 100000

// limitControllers are the controllers limits and usage need.
var limitControllers = []string{"memory", "cpu", "pids"}

// controllers remembers which controllers are enabled for the instance
// cgroups; guarded by its mutex, filled once.
type controllers struct {
	mu      sync.Mutex
	done    bool
	enabled map[string]bool
	why     string // what the enabling said about those left off
}

// enabledControllers enables (once) the controllers limits need in the
// agent's subtree and returns those that are.
func (c *Cgroups) enabledControllers() (map[string]bool, string) {
	c.ctrl.mu.Lock()
	defer c.ctrl.mu.Unlock()
	if c.ctrl.done {
		return c.ctrl.enabled, c.ctrl.why
	}
	c.ctrl.done = true
	var why []string
	for _, dir := range []string{c.own, c.apps} {
		avail := readFields(filepath.Join(dir, "cgroup.controllers"))
		have := readFields(filepath.Join(dir, "cgroup.subtree_control"))
		for _, ctl := range limitControllers {
			if !avail[ctl] || have[ctl] {
				continue
			}
			err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+ctl), 0)
			if err != nil {
				why = append(why, fmt.Sprintf("enable %s in %s: %v", ctl, dir, err))
			}
		}
	}
	c.ctrl.enabled = readFields(filepath.Join(c.apps, "cgroup.subtree_control"))
	for _, ctl := range limitControllers {
		if !c.ctrl.enabled[ctl] {
			why = append(why, fmt.Sprintf("the %s controller is not delegated to %s", ctl, c.own))
		}
	}
	c.ctrl.why = strings.Join(why, "; ")
	if c.ctrl.why != "" {
		c.log.Warn("cgroup controllers for app limits", "enabled", strings.Join(enabledNames(c.ctrl.enabled), ","), "note", c.ctrl.why)
	}
	return c.ctrl.enabled, c.ctrl.why
}

func enabledNames(m map[string]bool) []string {
	var out []string
	for _, k := range limitControllers {
		if m[k] {
			out = append(out, k)
		}
	}
	return out
}

// Unenforced names the limits set whose controller is off here, and
// why; "" when every one can be enforced.
func (c *Cgroups) Unenforced(memoryMax, memoryHigh int64, cpus float64, tasksMax int64) string {
	on, _ := c.enabledControllers()
	var off []string
	if (memoryMax > 0 || memoryHigh > 0) && !on["memory"] {
		off = append(off, "memory")
	}
	if cpus > 0 && !on["cpu"] {
		off = append(off, "cpu")
	}
	if tasksMax > 0 && !on["pids"] {
		off = append(off, "pids")
	}
	if len(off) == 0 {
		return ""
	}
	return fmt.Sprintf("the %s controller(s) of cgroup v2 are not available to the agent's cgroup %s (bound to cgroup v1, or not delegated)",
		strings.Join(off, ", "), c.own)
}

// SetLimits writes the instance's limits into its prepared cgroup:
// memory.max and memory.high in bytes, with memory.oom.group 1 so the
// OOM killer kills the instance whole; cpu.max as cpus times
// CPUPeriodUsec per period; pids.max. A zero value writes "max" (no
// limit) where the controller is on. A limit whose controller is off is
// left out (Unenforced names it); a write the kernel refuses is an
// error naming it.
func (c *Cgroups) SetLimits(name string, memoryMax, memoryHigh int64, cpus float64, tasksMax int64) error {
	dir, err := c.Dir(name)
	if err != nil {
		return err
	}
	on, _ := c.enabledControllers()
	type write struct{ ctl, file, value string }
	bytesOrMax := func(n int64) string {
		if n <= 0 {
			return "max"
		}
		return strconv.FormatInt(n, 10)
	}
	cpu := "max " + strconv.Itoa(CPUPeriodUsec)
	if cpus > 0 {
		quota := int64(math.Round(cpus * CPUPeriodUsec))
		cpu = fmt.Sprintf("%d %d", max(quota, 1000), CPUPeriodUsec)
	}
	oomGroup := "0"
	if memoryMax > 0 {
		oomGroup = "1"
	}
	writes := []write{
		{"memory", "memory.max", bytesOrMax(memoryMax)},
		{"memory", "memory.high", bytesOrMax(memoryHigh)},
		{"memory", "memory.oom.group", oomGroup},
		{"cpu", "cpu.max", cpu},
		{"pids", "pids.max", bytesOrMax(tasksMax)},
	}
	for _, w := range writes {
		if !on[w.ctl] {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, w.file), []byte(w.value), 0); err != nil {
			return fmt.Errorf("set %s of %s to %s: %w", w.file, name, w.value, err)
		}
	}
	return nil
}

// OOMEvents returns the oom plus oom_kill counts of the instance's
// memory.events: how often it hit memory.max and had a process killed.
// Without the memory controller there are none to count (0).
func (c *Cgroups) OOMEvents(name string) (uint64, error) {
	dir, err := c.Dir(name)
	if err != nil {
		return 0, err
	}
	kv, err := readKeyed(filepath.Join(dir, "memory.events"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return uint64(kv["oom"] + kv["oom_kill"]), nil
}

// Usage returns memory.current (0 without the memory controller) and
// cpu.stat's usage_usec of the instance's cgroup.
func (c *Cgroups) Usage(name string) (memoryBytes, cpuUsec int64, err error) {
	dir, err := c.Dir(name)
	if err != nil {
		return 0, 0, err
	}
	stat, err := readKeyed(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return 0, 0, err
	}
	data, err := os.ReadFile(filepath.Join(dir, "memory.current"))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return 0, 0, err
	default:
		memoryBytes, err = strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s/memory.current: %w", dir, err)
		}
	}
	return memoryBytes, stat["usage_usec"], nil
}

// readFields returns the words of a file as a set; none if it cannot
// be read.
func readFields(path string) map[string]bool {
	out := map[string]bool{}
	if data, err := os.ReadFile(path); err == nil {
		for _, f := range strings.Fields(string(data)) {
			out[f] = true
		}
	}
	return out
}

// readKeyed reads a flat keyed cgroup file ("key value" lines).
func readKeyed(path string) (map[string]int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for line := range strings.Lines(string(data)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: bad value %q of %s", path, v, k)
		}
		out[k] = n
	}
	return out, nil
}
