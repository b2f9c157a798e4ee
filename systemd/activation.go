package systemd

import (
	"fmt"
	"net"

	"github.com/coreos/go-systemd/v22/activation"
)

// Listeners returns the listening sockets systemd passed to this process
// (socket activation: LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), in fd
// order from fd 3. It returns nil when none were passed for this process.
// It unsets those variables either way, so they do not leak into the
// apps' environment, and it takes ownership of the fds: an fd that is not
// a listening socket is closed and reported as an error (and all
// listeners are closed with it).
func Listeners() ([]net.Listener, error) {
	files := activation.Files(true)
	if len(files) == 0 {
		return nil, nil
	}
	var (
		lns      []net.Listener
		firstErr error
	)
	for _, f := range files {
		ln, err := net.FileListener(f)
		name := f.Name()
		fd := f.Fd()
		f.Close() // FileListener dups the fd
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("socket activation: fd %d (%s) is not a listening socket: %w", fd, name, err)
			}
			continue
		}
		lns = append(lns, ln)
	}
	if firstErr != nil {
		for _, ln := range lns {
			ln.Close()
		}
		return nil, firstErr
	}
	return lns, nil
}
