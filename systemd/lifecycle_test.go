package systemd

import (
	"os"
	"path/filepath"
	"testing"
)

// TestJobKind ensures the unit's restart job, a shutdown target's job and
// anything else are told apart.
func TestJobKind(t *testing.T) {
	for _, c := range []struct {
		out  string
		want StopKind
	}{
		{"1234 berth.service restart running\n", StopRestart},
		{"1234 berth.service stop running\n", StopUnit},
		{"", StopUnit},
		{"77 other.service restart running\n1234 berth.service stop running\n", StopUnit},
		{"1234 berth.service stop running\n1 reboot.target start waiting\n", StopShutdown},
	} {
		if got := jobKind([]byte(c.out), "berth.service"); got != c.want {
			t.Errorf("jobKind(%q) = %s, want %s", c.out, got, c.want)
		}
	}
}

// TestOwnUnit ensures the unit is found above the agent's leaf cgroup.
func TestOwnUnit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cgroup")
	os.WriteFile(p, []byte("0::/system.slice/berth.service/agent\n"), 0o644)
	if got := ownUnit(p); got != "berth.service" {
		t.Errorf("ownUnit = %q", got)
	}
	os.WriteFile(p, []byte("0::/user.slice/user-0.slice/session-1.scope\n"), 0o644)
	if got := ownUnit(p); got != "" {
		t.Errorf("ownUnit outside a service = %q", got)
	}
}
