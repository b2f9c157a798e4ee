//go:build e2e_systemd

package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestHarness checks the machinery the berth cases stand on, with plain
// systemd: an enabled service runs on every boot, a clean reboot and a
// power cut (SIGKILL of the container's PID 1) both come back, and files
// written before a clean shutdown survive it.
func TestHarness(t *testing.T) {
	m := NewMachine(t, fmt.Sprintf("berth-e2e-harness-%d", os.Getpid()))
	m.WriteFile("/etc/systemd/system/bootmark.service", []byte(`[Unit]
Description=append the boot id to a file on every boot
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'cat /proc/sys/kernel/random/boot_id >> /var/lib/bootmarks'
[Install]
WantedBy=multi-user.target
`), 0o644)
	t.Logf("boot: %s", m.Boot().Round(time.Millisecond))
	m.MustExec("systemctl", "enable", "--now", "bootmark.service")
	marks := func() int { return len(strings.Fields(m.MustExec("cat", "/var/lib/bootmarks"))) }
	if n := marks(); n != 1 {
		t.Fatalf("%d boot marks after the first boot, want 1", n)
	}
	if got := strings.TrimSpace(m.MustExec("systemctl", "is-active", "systemd-journald")); got != "active" {
		t.Fatalf("journald %s", got)
	}

	t.Logf("reboot: %s", m.Reboot().Round(time.Millisecond))
	if n := marks(); n != 2 {
		t.Fatalf("%d boot marks after a reboot, want 2", n)
	}

	pid1 := m.PID1
	m.PowerCut()
	if m.running() {
		t.Fatal("container still running after the power cut")
	}
	t.Logf("boot after power cut: %s", m.Boot().Round(time.Millisecond))
	if m.PID1 == pid1 {
		t.Fatalf("same PID 1 %d after the power cut", pid1)
	}
	if n := marks(); n != 3 {
		t.Fatalf("%d boot marks after a power cut, want 3", n)
	}
}
