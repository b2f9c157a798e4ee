package systemd

// The file descriptor store: systemd keeps file descriptors a service
// hands it (sd_notify FDSTORE=1 with an FDNAME) while the service
// restarts, and passes them back to the next start with LISTEN_FDS and
// LISTEN_FDNAMES, as it passes activated sockets. The agent keeps there
// the read ends of its apps' output pipes and the listening sockets it
// owns, so that a crash or restart of the agent loses neither a line
// nor a connection (issue 14). The unit must allow it
// (FileDescriptorStoreMax=, see RenderService).
//
// systemd keeps the store across automatic restarts (a crash) and
// `systemctl restart`, and empties it when the unit stops for good.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// StorePrefix starts the FDNAME of every fd StoreFiles keeps, so that
// Inherit tells them from sockets of a socket unit.
const StorePrefix = "berth/"

// maxFDName is the longest FDNAME systemd accepts.
const maxFDName = 255

// fdName returns the FDNAME for name, or an error if systemd would
// refuse it (too long, a colon or a control character).
func fdName(name string) (string, error) {
	n := StorePrefix + name
	switch {
	case len(n) > maxFDName:
		return "", fmt.Errorf("%w: fd name %q is longer than %d bytes", ErrInvalidNotify, n, maxFDName)
	case strings.ContainsAny(n, ":") || hasControl(n):
		return "", fmt.Errorf("%w: fd name %q holds a colon or a control character", ErrInvalidNotify, n)
	}
	return n, nil
}

// StoreFiles hands copies of files to systemd's file descriptor store
// under name (FDSTORE=1, FDNAME=StorePrefix+name, FDPOLL=0 so systemd
// keeps a pipe whose writer died: its last lines are still to be read).
// The files stay the caller's and their flags are not changed. It
// reports false and no error without a service manager to tell.
func StoreFiles(name string, files ...*os.File) (bool, error) {
	n, err := fdName(name)
	if err != nil {
		return false, err
	}
	fds := make([]int, 0, len(files))
	for _, f := range files {
		rc, err := f.SyscallConn()
		if err != nil {
			return false, fmt.Errorf("store %s: %w", n, err)
		}
		// The raw fd, without os.File.Fd's switch to blocking mode.
		if err := rc.Control(func(fd uintptr) { fds = append(fds, int(fd)) }); err != nil {
			return false, fmt.Errorf("store %s: %w", n, err)
		}
	}
	sent, err := notifyWithFDs("FDSTORE=1\nFDNAME="+n+"\nFDPOLL=0", fds)
	runtime.KeepAlive(files) // open until sendmsg is done
	if err != nil {
		return false, fmt.Errorf("store %s: %w", n, err)
	}
	return sent, nil
}

// RemoveFiles removes every fd stored under name (FDSTOREREMOVE=1).
func RemoveFiles(name string) error {
	n, err := fdName(name)
	if err != nil {
		return err
	}
	if _, err := notifyWithFDs("FDSTOREREMOVE=1\nFDNAME="+n, nil); err != nil {
		return fmt.Errorf("remove %s from the fd store: %w", n, err)
	}
	return nil
}

// notifyWithFDs sends state with fds (SCM_RIGHTS) to $NOTIFY_SOCKET.
func notifyWithFDs(state string, fds []int) (bool, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return false, nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract namespace
	}
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("notify socket: %w", err)
	}
	defer unix.Close(sock)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(sock, []byte(state), oob, &unix.SockaddrUnix{Name: path}, 0); err != nil {
		return false, fmt.Errorf("sendmsg to %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	return true, nil
}

// NamedFile is a file descriptor passed to this process, with its name.
type NamedFile struct {
	Name string // for a stored fd, without StorePrefix
	File *os.File
}

// Inherited is what systemd passed to this process at start.
type Inherited struct {
	// Stored are the fds of the file descriptor store, in the order
	// passed (several may share a name).
	Stored []NamedFile
	// Listeners are the sockets of a socket unit (berth.socket).
	Listeners []net.Listener
}

// Inherit takes the fds systemd passed (LISTEN_FDS, LISTEN_PID,
// LISTEN_FDNAMES): those of the fd store (named StorePrefix...) as they
// are, the others as listening sockets. It unsets those variables either
// way, so they do not leak into the apps' environment, and owns the fds
// from then on: an fd of a socket unit that is not a listening socket is
// closed and reported as an error (the stored ones are returned even
// then). Call it once, before anything else opens files.
func Inherit() (Inherited, error) { return inherit(activation.Files(true)) }

// inherit sorts the passed files (named by LISTEN_FDNAMES).
func inherit(files []*os.File) (Inherited, error) {
	var in Inherited
	var errs []error
	for _, f := range files {
		if name, ok := strings.CutPrefix(f.Name(), StorePrefix); ok {
			in.Stored = append(in.Stored, NamedFile{Name: name, File: f})
			continue
		}
		ln, err := net.FileListener(f)
		name := f.Name()
		fd := f.Fd()
		f.Close() // FileListener dups the fd
		if err != nil {
			errs = append(errs, fmt.Errorf("socket activation: fd %d (%s) is not a listening socket: %w", fd, name, err))
			continue
		}
		in.Listeners = append(in.Listeners, ln)
	}
	if len(errs) > 0 {
		for _, ln := range in.Listeners {
			ln.Close()
		}
		in.Listeners = nil
		return in, errors.Join(errs...)
	}
	return in, nil
}

// FDStoreMax is the unit's FileDescriptorStoreMax=: room for the pipes
// (two per app process) and sockets (one per socket-activated slot) of
// about 2,000 app processes.
const FDStoreMax = 4096
