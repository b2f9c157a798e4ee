package systemd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/hashicorp/go-hclog"
)

// Watchdog keeps systemd's watchdog (WatchdogSec=) fed while the agent is
// alive. It pings only after Check succeeds, so a wedged main loop or a
// store that no longer answers stops the pings and systemd restarts the
// agent.
type Watchdog struct {
	// Check reports whether the agent is alive: its main loop answers and
	// its store can be read. It must return once ctx is done; ctx ends at
	// half the watchdog interval, and a check that has not succeeded by
	// then counts as failed. Nil means always alive (pings then only prove
	// that the process is scheduled).
	Check func(ctx context.Context) error
}

// Run feeds the watchdog until ctx is done. It reads WATCHDOG_USEC and
// WATCHDOG_PID as systemd sets them; when no watchdog is asked for this
// process, it returns nil at once. Otherwise it runs Check every half
// interval (the first at once) and sends WATCHDOG=1 after each success.
// It returns nil when ctx is cancelled, and an error only for a malformed
// WATCHDOG_USEC.
func (w *Watchdog) Run(ctx context.Context, log hclog.Logger) error {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return fmt.Errorf("watchdog: WATCHDOG_USEC=%q: %w", os.Getenv("WATCHDOG_USEC"), err)
	}
	if interval <= 0 {
		return nil
	}
	period := interval / 2
	log.Debug("watchdog enabled", "interval", interval)

	ticker := time.NewTicker(period)
	defer ticker.Stop()
	healthy := true
	for {
		err := w.check(ctx, period)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			if !healthy {
				log.Info("watchdog check passes again; pinging systemd")
				healthy = true
			}
			if _, err := Notify(daemon.SdNotifyWatchdog); err != nil {
				log.Warn("watchdog ping failed", "error", err)
			}
		} else if healthy {
			// Logged once per failure streak: the check runs every half
			// interval and systemd acts after the next one.
			log.Error("watchdog check failed; not pinging systemd", "error", err)
			healthy = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

func (w *Watchdog) check(ctx context.Context, timeout time.Duration) error {
	if w.Check == nil {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := w.Check(cctx)
	if err == nil && cctx.Err() != nil {
		// Answered, but too late to count.
		err = cctx.Err()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("liveness check did not answer within %s: %w", timeout, err)
	}
	return err
}
