package supervisor

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Apps start with exactly fds 0, 1 and 2 and the sockets passed to them.
// The fds a child gets are the ones fork places (ProcAttr.Files) plus
// every fd of this process that lacks close-on-exec. Go opens all of its
// own fds close-on-exec, so the only ones without it are those the
// process inherited when it started (a shell's fd 7 on a root-owned file,
// say). closeOnExecInherited marks every fd above 2 close-on-exec, which
// is idempotent and does not close anything this process uses: it runs
// before each fork, so the guarantee does not depend on who created the
// Supervisor or when.

// closeOnExecInherited sets FD_CLOEXEC on every fd above 2: one
// close_range(2) call on Linux 5.11 and later, else a walk of
// /proc/self/fd.
func closeOnExecInherited() error {
	err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("mark inherited fds close-on-exec: %w", err)
	}
	return closeOnExecProc()
}

// closeOnExecProc is closeOnExecInherited for kernels without
// CLOSE_RANGE_CLOEXEC (or where seccomp refuses it). An fd that closes
// while the walk runs is skipped; one opened meanwhile is Go's own and
// already close-on-exec.
func closeOnExecProc() error {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("mark inherited fds close-on-exec: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("mark inherited fds close-on-exec: %w", err)
	}
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd <= 2 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue // closed meanwhile, or already set
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, flags|unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
			return fmt.Errorf("mark fd %d close-on-exec: %w", fd, err)
		}
	}
	return nil
}
