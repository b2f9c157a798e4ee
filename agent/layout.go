package agent

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
)

// The agent's part of the data dir: apps/<app>/ with its logs, its
// TMPDIR and the current link (see DESIGN.md, "On disk").

// appDir returns $DATA/apps/<app>/<elem...>.
func (a *Agent) appDir(app string, elem ...string) string {
	return a.config().path(append([]string{"apps", app}, elem...)...)
}

// prepareAppDirs creates apps/<app>/ (0755), its logs/ (0750, written by
// the agent) and the app's TMPDIR (0700, owned by the app's user).
func (a *Agent) prepareAppDirs(app string, who runAs) (tmp string, err error) {
	if err := os.MkdirAll(a.appDir(app), 0o755); err != nil {
		return "", fmt.Errorf("create app dir: %w", err)
	}
	if err := os.MkdirAll(a.appDir(app, "logs"), 0o750); err != nil {
		return "", fmt.Errorf("create log dir: %w", err)
	}
	tmp = a.appDir(app, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return "", fmt.Errorf("create TMPDIR: %w", err)
	}
	if who.Cred != nil {
		if err := os.Lchown(tmp, who.UID, who.GID); err != nil {
			return "", fmt.Errorf("hand TMPDIR to user %s: %w", who.Name, err)
		}
	}
	return tmp, nil
}

// swapCurrent points apps/<app>/current at dir atomically: a new link
// under a temporary name is renamed over the old one, and the directory
// is fsynced so the swap survives a power cut.
func (a *Agent) swapCurrent(app, dir string) error {
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	if err := os.MkdirAll(a.appDir(app), 0o755); err != nil {
		return fmt.Errorf("swap current: %w", err)
	}
	tmp := a.appDir(app, "current.tmp-"+hex.EncodeToString(rnd[:]))
	if err := os.Symlink(dir, tmp); err != nil {
		return fmt.Errorf("swap current: %w", err)
	}
	if err := os.Rename(tmp, a.appDir(app, "current")); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("swap current: %w", err)
	}
	return syncDir(a.appDir(app))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
