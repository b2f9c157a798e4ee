package systemd

import (
	"fmt"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notify sends state (one or more NAME=value lines) to the service
// manager's notification socket named by $NOTIFY_SOCKET. It reports false
// and no error when there is no such socket (not run by systemd, or not
// as Type=notify), so callers need not check first.
func Notify(state string) (bool, error) {
	sent, err := daemon.SdNotify(false, state)
	if err != nil {
		return false, fmt.Errorf("sd_notify %q: %w", firstLine(state), err)
	}
	return sent, nil
}

// Ready tells systemd that start-up is finished (READY=1): the agent
// serves its socket and has started the apps' processes. Also send it when
// a reload is done.
func Ready() error { return notify(daemon.SdNotifyReady) }

// Stopping tells systemd that the agent is shutting down (STOPPING=1).
func Stopping() error { return notify(daemon.SdNotifyStopping) }

// Reloading tells systemd that the agent is reloading its configuration
// (RELOADING=1, with MONOTONIC_USEC as systemd 253 and later want it).
// Call Ready once the reload is done.
func Reloading() error {
	return notify(daemon.SdNotifyReloading + "\n" + strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n"))
}

// Status sets the one-line status that `systemctl status berth` shows
// (STATUS=msg). A msg with a newline or NUL is refused with
// ErrInvalidNotify.
func Status(msg string) error {
	if i := strings.IndexAny(msg, "\n\x00"); i >= 0 {
		return fmt.Errorf("%w: status %q has a line break or NUL at byte %d", ErrInvalidNotify, msg, i)
	}
	return notify("STATUS=" + msg)
}

// CanNotify reports whether the agent has a service manager to notify
// ($NOTIFY_SOCKET is set), so a caller can skip composing messages that
// would go nowhere.
func CanNotify() bool { return os.Getenv("NOTIFY_SOCKET") != "" }

func notify(state string) error {
	_, err := Notify(state)
	return err
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
