package agent

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/state/build"
)

// The agent's part of the data dir: apps/<app>/ with its logs, its
// TMPDIR and the current link (see DESIGN.md, "On disk").

// appDir returns $DATA/apps/<app>/<elem...>.
func (a *Agent) appDir(app string, elem ...string) string {
	return a.config().path(append([]string{"apps", app}, elem...)...)
}

// prepare readies what the app's processes on build b need before they
// start: the identity they run as (identity), access to the build for
// that uid (a private build store, as root), and the app's directories.
func (a *Agent) prepare(cfg Config, app string, b *build.Build) (who runAs, tmp string, err error) {
	appRec, err := a.store.App(app)
	if err != nil {
		return runAs{}, "", mapErr(err)
	}
	who, err = a.identity(cfg, appRec)
	if err != nil {
		if errors.Is(err, state.ErrUIDsExhausted) {
			return runAs{}, "", fmt.Errorf("%w: app %s: %w", api.ErrUnavailable, app, err)
		}
		return runAs{}, "", fmt.Errorf("%w: app %s: %w", api.ErrInvalid, app, err)
	}
	if who.Cred != nil {
		if err := a.builds.Grant(b.Digest, who.UID); err != nil {
			return runAs{}, "", fmt.Errorf("%w: app %s: %w", api.ErrUnavailable, app, err)
		}
	}
	tmp, err = a.prepareAppDirs(app, who)
	return who, tmp, err
}

// prepareAppDirs creates apps/<app>/ (0711 as root: other apps cannot
// list it; else 0755), its logs/ (0750, written and read by the agent
// only) and the app's TMPDIR (0700, owned by the app's user and group).
// When the app's user changed, the TMPDIR is handed to the new one; the
// files the old user left in it keep their owner.
func (a *Agent) prepareAppDirs(app string, who runAs) (tmp string, err error) {
	mode := os.FileMode(0o755)
	if who.Cred != nil {
		mode = 0o711
	}
	if err := os.MkdirAll(a.appDir(app), mode); err != nil {
		return "", fmt.Errorf("create app dir: %w", err)
	}
	if err := os.Chmod(a.appDir(app), mode); err != nil {
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

// pruneBuildAccess takes access to every build away from the uids no
// app runs as any more (a destroyed app's), so that a uid handed to a new
// app never inherits builds. An error is logged: the builds stay as they
// were, which denies no app its own.
func (a *Agent) pruneBuildAccess() {
	live, err := a.liveUIDs()
	if err == nil {
		err = a.builds.Prune(func(uid int) bool { return live[uid] })
	}
	if err != nil {
		a.log.Error("prune build access", "error", err)
	}
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
