package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func isZombie(pid int) bool {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return strings.Contains(string(b), ") Z ")
}

// Ensures that when a zombie of other code in this process comes first in
// the kernel's list (so peeking cannot see past it), the reaper still
// delivers our own children's statuses, and leaves the foreign one to
// its owner. Both children are forked from this locked thread, so the
// foreign one is first in the list the reaper sees.
func TestReaper_ForeignZombieFirst(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r := newReaper(hclog.NewNullLogger())

	foreign := exec.Command("/bin/true")
	if err := foreign.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "foreign zombie", func() bool { return isZombie(foreign.Process.Pid) })

	got := make(chan syscall.WaitStatus, 1)
	r.spawnMu.RLock()
	pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "exit 5"}, &syscall.ProcAttr{Sys: &syscall.SysProcAttr{Setpgid: true}})
	if err == nil {
		r.register(pid, func(ws syscall.WaitStatus, _ time.Time) { got <- ws })
	}
	r.spawnMu.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "own zombie", func() bool { return isZombie(pid) })

	if blocked := r.reapAll(); !blocked {
		t.Fatalf("reapAll did not report the foreign zombie in the way")
	}
	select {
	case ws := <-got:
		if ws.ExitStatus() != 5 {
			t.Fatalf("status %v, want exit 5", ws)
		}
	default:
		t.Fatal("our child's status was not delivered while a foreign zombie came first")
	}
	if err := foreign.Wait(); err != nil {
		t.Fatalf("foreign child's status was stolen: %v", err)
	}
	if blocked := r.reapAll(); blocked {
		t.Fatal("still blocked after the owner waited")
	}
}
