package systemd

// Why systemd stops the agent decides what becomes of the apps (issue
// 14): the unit has KillMode=process, so systemd signals only the agent,
// and the agent either stops its apps (a stop of the unit, a shutdown of
// the host) or leaves them to the next agent (a restart of the unit).

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"time"
)

// StopKind is why the agent got SIGTERM.
type StopKind int

const (
	// StopUnknown: no service manager, or it could not be asked. The
	// agent stops its apps, as for a stop.
	StopUnknown StopKind = iota
	// StopUnit: `systemctl stop berth`, or the unit stopped for another
	// reason than a restart or a shutdown.
	StopUnit
	// StopRestart: `systemctl restart berth` (or try-restart): the unit
	// starts again at once, its fd store kept.
	StopRestart
	// StopShutdown: the host shuts down or reboots.
	StopShutdown
)

func (k StopKind) String() string {
	return [...]string{"unknown", "stop", "restart", "shutdown"}[k]
}

// WhyStopping asks systemd why this process's unit is being stopped: the
// system's state (`systemctl is-system-running`: stopping during a
// shutdown) and the unit's job (`systemctl list-jobs`: a restart job
// while a restart stops it). It is meant for a SIGTERM handler, and
// takes at most a few seconds.
func WhyStopping(ctx context.Context) StopKind {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return StopUnknown
	}
	unit := ownUnit("/proc/self/cgroup")
	if unit == "" {
		return StopUnknown
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, "systemctl", "is-system-running").Output()
	if strings.TrimSpace(string(out)) == "stopping" {
		return StopShutdown
	}
	out, err := exec.CommandContext(ctx, "systemctl", "list-jobs", "--no-legend", "--no-pager", "--plain").Output()
	if err != nil {
		return StopUnknown
	}
	return jobKind(out, unit)
}

// jobKind reads the job of unit from `systemctl list-jobs --no-legend`
// lines: JOB UNIT TYPE STATE.
func jobKind(out []byte, unit string) StopKind {
	kind := StopUnit
	for line := range bytes.Lines(out) {
		f := strings.Fields(string(line))
		if len(f) < 3 {
			continue
		}
		switch {
		case f[1] == unit && (f[2] == "restart" || f[2] == "try-restart" || f[2] == "reload-or-restart"):
			kind = StopRestart
		case f[1] == "shutdown.target" || f[1] == "reboot.target" || f[1] == "poweroff.target" ||
			f[1] == "halt.target" || f[1] == "kexec.target":
			return StopShutdown
		}
	}
	return kind
}

// ownUnit returns the name of the service unit whose cgroup holds this
// process (the agent sits in <unit>/agent), from /proc/self/cgroup.
func ownUnit(path string) string {
	cg, err := ownCgroup(path)
	if err != nil {
		return ""
	}
	parts := strings.Split(cg, "/")
	for i := len(parts) - 1; i >= 0; i-- {
		if strings.HasSuffix(parts[i], ".service") {
			return parts[i]
		}
	}
	return ""
}
