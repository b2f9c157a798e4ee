package api

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// DefaultSocketPath returns where the agent listens and the CLI looks when
// neither --socket nor BERTH_SOCKET says otherwise: /run/berth/berth.sock
// for root, else $XDG_RUNTIME_DIR/berth/berth.sock, or
// /tmp/berth-<uid>/berth.sock when XDG_RUNTIME_DIR is not set.
func DefaultSocketPath() string {
	uid := os.Geteuid()
	if uid == 0 {
		return "/run/berth/berth.sock"
	}
	if dir := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(dir) {
		return filepath.Join(dir, "berth", "berth.sock")
	}
	return filepath.Join(os.TempDir(), "berth-"+strconv.Itoa(uid), "berth.sock")
}

// DefaultDataDir returns the agent's data directory when neither
// --data-dir nor BERTH_DATA_DIR says otherwise: /var/lib/berth for root,
// else $XDG_STATE_HOME/berth, or ~/.local/state/berth.
func DefaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/berth"
	}
	if dir := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(dir) {
		return filepath.Join(dir, "berth")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "berth")
	}
	return filepath.Join(os.TempDir(), "berth-"+strconv.Itoa(os.Geteuid()), "state")
}

// Listen listens on the unix socket at path for the agent. It creates the
// parent directory (mode 0750 and group gid when gid >= 0, else 0755),
// removes a stale socket file left by an agent that died, and refuses
// with ErrSocketInUse when a live agent answers on path. The socket gets
// mode 0660 and, when gid >= 0, the owner (agent uid, gid), so that only
// root, the agent's user and the group's members can connect.
func Listen(path string, gid int) (net.Listener, error) {
	if path == "" {
		return nil, fmt.Errorf("listen: %w: empty socket path", ErrInvalid)
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		mode := fs.FileMode(0o755)
		if gid >= 0 {
			mode = 0o750
		}
		if err := os.MkdirAll(dir, mode); err != nil {
			return nil, fmt.Errorf("listen on %s: %w", path, err)
		}
		if gid >= 0 {
			if err := os.Chown(dir, os.Geteuid(), gid); err != nil {
				return nil, fmt.Errorf("listen on %s: chown directory to group %d: %w", path, gid, err)
			}
		}
	}
	if err := checkSocketDir(dir); err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on %s: chmod: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, os.Geteuid(), gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("listen on %s: chown to group %d: %w", path, gid, err)
		}
	}
	return ln, nil
}

// removeStale removes the socket file at path when nothing answers on it.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("listen on %s: %w: the path exists and is not a socket", path, ErrInvalid)
	}
	conn, err := net.DialTimeout("unix", path, 2*time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("listen on %s: %w: another berth agent serves this socket (stop it first, or use another --socket)", path, ErrSocketInUse)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("listen on %s: probe existing socket: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("listen on %s: remove stale socket: %w", path, err)
	}
	return nil
}

// checkSocketDir refuses a socket directory that another user could swap
// the socket in: one owned by a user other than root and the agent's, or
// one anybody may write to without the sticky bit (the /tmp fallback).
func checkSocketDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := int(st.Uid); uid != 0 && uid != os.Geteuid() {
		return fmt.Errorf("%w: socket directory %s belongs to uid %d, neither root nor this user (%d)", ErrInvalid, dir, uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o002 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("%w: socket directory %s is writable by everyone (mode %v)", ErrInvalid, dir, fi.Mode().Perm())
	}
	return nil
}
