package supervisor

import (
	"fmt"
	"math"
	"syscall"
	"time"
)

// Resource limits of an instance and what a Container tells of its use.
//
// Limits are enforced by a Container that also implements Limiter (the
// systemd package's cgroups: memory.max, memory.high, cpu.max, pids.max
// of the instance's own cgroup). Without one, or where the cgroup lacks
// a controller a limit needs, they are not enforced (the instance runs
// anyway) and LimitsUnenforced says which and why: the owner tells the
// operator.
//
// An instance killed by the kernel's OOM killer is recognised by the
// count of OOM events of its container (memory.events) having grown
// since its process started, when the process died of SIGKILL (or a
// shell reported a child killed by it: exit 137): its Exit has OOMKill
// set, reads "killed by the OOM killer at 256 MiB", and is a crash like
// any other exit, restarted with backoff.

// Limits bound the resources of an instance's processes together. A
// zero field sets no limit.
type Limits struct {
	// MemoryMax is the hard memory limit in bytes (memory.max): beyond
	// it the OOM killer kills the instance (all of its processes).
	MemoryMax int64
	// MemoryHigh is the throttling limit in bytes (memory.high): beyond
	// it the instance's processes are slowed and reclaimed from.
	MemoryHigh int64
	// CPUs is the share of CPU time, in cores (0.5: half of one core; 2:
	// two cores' worth), enforced per period of 100ms (cpu.max).
	CPUs float64
	// TasksMax bounds the processes and threads of the instance
	// (pids.max).
	TasksMax int64
}

// IsZero reports whether l sets no limit.
func (l Limits) IsZero() bool { return l == Limits{} }

// check returns a *SpecError for a bad value.
func (l Limits) check(name string) error {
	bad := func(field, value, reason string) error {
		return &SpecError{Name: name, Field: field, Value: value, Reason: reason}
	}
	switch {
	case l.MemoryMax < 0:
		return bad("Limits.MemoryMax", fmt.Sprint(l.MemoryMax), "must not be negative")
	case l.MemoryHigh < 0:
		return bad("Limits.MemoryHigh", fmt.Sprint(l.MemoryHigh), "must not be negative")
	case l.TasksMax < 0:
		return bad("Limits.TasksMax", fmt.Sprint(l.TasksMax), "must not be negative")
	case l.CPUs < 0 || math.IsNaN(l.CPUs) || math.IsInf(l.CPUs, 0):
		return bad("Limits.CPUs", fmt.Sprint(l.CPUs), "must be a non-negative number")
	}
	return nil
}

// String describes the limits set, e.g. "memory_max 256 MiB, cpus 0.5";
// "none" when none is.
func (l Limits) String() string {
	s := ""
	add := func(part string) {
		if s != "" {
			s += ", "
		}
		s += part
	}
	if l.MemoryMax > 0 {
		add("memory_max " + FormatBytes(l.MemoryMax))
	}
	if l.MemoryHigh > 0 {
		add("memory_high " + FormatBytes(l.MemoryHigh))
	}
	if l.CPUs > 0 {
		add(fmt.Sprintf("cpus %g", l.CPUs))
	}
	if l.TasksMax > 0 {
		add(fmt.Sprintf("tasks_max %d", l.TasksMax))
	}
	if s == "" {
		return "none"
	}
	return s
}

// FormatBytes writes a size in the largest binary unit that divides it
// ("256 MiB", "1536 KiB"), else in bytes.
func FormatBytes(n int64) string {
	for _, u := range []struct {
		size int64
		name string
	}{{1 << 40, "TiB"}, {1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d %s", n/u.size, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// Usage is what an instance's container uses now.
type Usage struct {
	// MemoryBytes is the memory charged to it (memory.current).
	MemoryBytes int64
	// CPU is the CPU time its processes used (cpu.stat usage_usec) since
	// the container was made (at the start of the current process).
	CPU time.Duration
	// Limits are the limits in force.
	Limits Limits
}

// Limiter is implemented by a Container that can enforce Limits and
// tell what an instance uses. Its methods are called with the names
// Prepare got; like Container, it takes plain types only, so that
// package systemd satisfies it without importing this one.
type Limiter interface {
	// SetLimits applies Limits (memory.max and memory.high in bytes, a
	// share of cores, pids.max) to the instance's container after
	// Prepare and before its process starts; a zero value means no
	// limit. Limits it cannot enforce here (Unenforced says which) are
	// left out. An error fails the start (retried like a failed exec).
	SetLimits(name string, memoryMax, memoryHigh int64, cpus float64, tasksMax int64) error
	// Unenforced says which of the given limits cannot be enforced here
	// and why (a controller that was not delegated), "" when all can.
	Unenforced(memoryMax, memoryHigh int64, cpus float64, tasksMax int64) string
	// OOMEvents returns how many times the instance's container hit its
	// memory limit and had a process killed (memory.events: oom plus
	// oom_kill); it only grows while the container exists.
	OOMEvents(name string) (uint64, error)
	// Usage returns the memory charged to the instance's container now
	// (memory.current, bytes) and the CPU time its processes used
	// (cpu.stat usage_usec, microseconds).
	Usage(name string) (memoryBytes, cpuUsec int64, err error)
}

// Enforces reports whether Limits are enforced: the Container is also a
// Limiter. Without, an owner should tell the operator that they are not.
func (s *Supervisor) Enforces() bool {
	_, ok := s.cfg.Container.(Limiter)
	return ok
}

// NoLimiter is what LimitsUnenforced says without a Limiter.
const NoLimiter = "no delegated cgroup to apply them in"

// LimitsUnenforced says which of l cannot be enforced and why; "" when
// all of it is (or l sets none).
func (s *Supervisor) LimitsUnenforced(l Limits) string {
	if l.IsZero() {
		return ""
	}
	lim, ok := s.cfg.Container.(Limiter)
	if !ok {
		return NoLimiter
	}
	return lim.Unenforced(l.MemoryMax, l.MemoryHigh, l.CPUs, l.TasksMax)
}

// Usage returns what the instance's container uses now. ok is false when
// limits are not enforced (see Enforces) or the instance's container
// cannot be read (no process runs).
func (s *Supervisor) Usage(name string) (u Usage, ok bool) {
	l, isLimiter := s.cfg.Container.(Limiter)
	if !isLimiter {
		return Usage{}, false
	}
	in, err := s.lookup(name)
	if err != nil {
		return Usage{}, false
	}
	in.mu.Lock()
	running := in.proc != nil
	in.mu.Unlock()
	if !running {
		return Usage{}, false
	}
	mem, cpu, err := l.Usage(name)
	if err != nil {
		return Usage{}, false
	}
	return Usage{MemoryBytes: mem, CPU: time.Duration(cpu) * time.Microsecond, Limits: in.spec.Limits}, true
}

// applyLimits sets the instance's limits on its prepared container and
// returns the container's OOM event count before the start, the base
// against which its exit is judged. ok is false without a Limiter.
func (s *Supervisor) applyLimits(sp *Spec) (base uint64, ok bool, err error) {
	l, isLimiter := s.cfg.Container.(Limiter)
	if !isLimiter {
		return 0, false, nil
	}
	lim := sp.Limits
	if err := l.SetLimits(sp.Name, lim.MemoryMax, lim.MemoryHigh, lim.CPUs, lim.TasksMax); err != nil {
		return 0, false, fmt.Errorf("apply limits (%s): %w", sp.Limits, err)
	}
	n, err := l.OOMEvents(sp.Name)
	if err != nil {
		// The start goes on; its exit just cannot be told an OOM kill.
		s.log.Warn("read OOM events", "instance", sp.Name, "error", err)
		return 0, false, nil
	}
	return n, true, nil
}

// markOOM sets exit.OOMKill when p died of SIGKILL (or its shell reports
// a child killed so) and its container's OOM count grew since it
// started. It runs on the reaper goroutine, before anything clears the
// container.
func (in *instance) markOOM(p *proc, ws syscall.WaitStatus, exit *Exit) {
	if !p.oomWatch {
		return
	}
	killed := (ws.Signaled() && ws.Signal() == syscall.SIGKILL) || (ws.Exited() && ws.ExitStatus() == 128+int(syscall.SIGKILL))
	if !killed {
		return
	}
	l, ok := in.s.cfg.Container.(Limiter)
	if !ok {
		return
	}
	n, err := l.OOMEvents(in.spec.Name)
	if err != nil {
		in.s.log.Warn("read OOM events", "instance", in.spec.Name, "error", err)
		return
	}
	if n > p.oomBase {
		exit.OOMKill = true
		exit.MemoryMax = in.spec.Limits.MemoryMax
	}
}
