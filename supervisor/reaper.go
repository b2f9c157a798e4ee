package supervisor

import (
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hashicorp/go-hclog"
)

// reaperBusy is set while a Supervisor runs in this process. Children
// are a process-wide resource: two reapers would reap each other's
// processes as orphans, so only one Supervisor may Run at a time.
var reaperBusy atomic.Bool

// exitFunc receives the wait status of a process the supervisor started.
// It runs on the reaper goroutine and must not block.
type exitFunc func(ws syscall.WaitStatus, at time.Time)

// reaper owns waiting for children. It peeks at zombies with
// waitid(P_ALL, WEXITED|WNOWAIT) and reaps only those it may:
//
//   - processes the supervisor started (registered in owners);
//   - unknown children in another process group than the supervisor's:
//     orphans reparented to us as a subreaper, or leftovers of an
//     instance's process group.
//
// An unknown zombie in the supervisor's own process group is a child that
// other code in this process started (os/exec without Setpgid) and will
// Wait for itself: the reaper leaves it alone.
type reaper struct {
	log  hclog.Logger
	pgrp int

	// spawnMu is held shared by a spawner from the fork until the new pid
	// is registered, and exclusively by the reaper before it decides that
	// a pid is unknown, so a process that exits at once is never taken for
	// an orphan.
	spawnMu sync.RWMutex

	mu     sync.Mutex // guards owners
	owners map[int]exitFunc

	orphans atomic.Uint64 // orphans reaped, for tests and debugging
}

func newReaper(log hclog.Logger) *reaper {
	return &reaper{log: log, pgrp: syscall.Getpgrp(), owners: make(map[int]exitFunc)}
}

// register makes pid's exit go to fn. Call with spawnMu held shared.
func (r *reaper) register(pid int, fn exitFunc) {
	r.mu.Lock()
	r.owners[pid] = fn
	r.mu.Unlock()
}

func (r *reaper) take(pid int) exitFunc {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn := r.owners[pid]
	delete(r.owners, pid)
	return fn
}

func (r *reaper) known(pid int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.owners[pid]
	return ok
}

// siginfo is the start of the kernel's siginfo_t for SIGCHLD on 64-bit
// Linux: si_pid sits after signo, errno, code and 4 bytes of padding.
type siginfo struct {
	Signo  int32
	Errno  int32
	Code   int32
	_      int32
	Pid    int32
	Uid    uint32
	Status int32
	_      [100]byte
}

const (
	pAll    = 0
	wNowait = 0x1000000
)

// peek returns the pid of a zombie child without reaping it, 0 if there
// is none.
func peek() (int, error) {
	for {
		var info siginfo
		_, _, e := syscall.Syscall6(syscall.SYS_WAITID, pAll, 0, uintptr(unsafe.Pointer(&info)),
			syscall.WEXITED|syscall.WNOHANG|wNowait, 0, 0)
		switch e {
		case 0:
			return int(info.Pid), nil
		case syscall.EINTR:
			continue
		default:
			return 0, e
		}
	}
}

// reap waits for pid, which must be a zombie, and hands the status over.
func (r *reaper) reap(pid int) {
	var ws syscall.WaitStatus
	for {
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || got != pid {
			return
		}
		break
	}
	at := time.Now()
	if fn := r.take(pid); fn != nil {
		fn(ws, at)
		return
	}
	r.orphans.Add(1)
	r.log.Debug("reaped orphan", "pid", pid, "status", exitOf(ws, at).String())
}

// reapAll reaps every zombie it may. It reports blocked when a zombie
// that belongs to other code in this process sits first in the kernel's
// list: peeking cannot see past it, so the caller retries shortly (its
// owner normally waits for it within microseconds). Our own processes are
// then waited for by pid, so their statuses are never delayed.
func (r *reaper) reapAll() (blocked bool) {
	for {
		pid, err := peek()
		if err != nil || pid == 0 {
			return false
		}
		if r.known(pid) {
			r.reap(pid)
			continue
		}
		// Unknown: let in-flight spawns register first.
		r.spawnMu.Lock()
		known := r.known(pid)
		r.spawnMu.Unlock()
		if known {
			r.reap(pid)
			continue
		}
		pgid, err := syscall.Getpgid(pid)
		if err != nil {
			continue // waited for by its owner meanwhile
		}
		if pgid != r.pgrp {
			r.reap(pid)
			continue
		}
		r.reapOwn()
		return true
	}
}

// reapOwn waits for each registered pid without blocking.
func (r *reaper) reapOwn() {
	r.mu.Lock()
	pids := make([]int, 0, len(r.owners))
	for pid := range r.owners {
		pids = append(pids, pid)
	}
	r.mu.Unlock()
	for _, pid := range pids {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if err != nil || got != pid {
			continue
		}
		at := time.Now()
		if fn := r.take(pid); fn != nil {
			fn(ws, at)
		}
	}
}
