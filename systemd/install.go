package systemd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// UnitDir is where Install writes the unit files.
const UnitDir = "/etc/systemd/system"

// Install writes berth.service (and berth.socket with SocketActivation)
// to /etc/systemd/system, creates the socket group when it is missing
// (groupadd --system), reloads systemd and enables and starts the units.
// Each file is written to a temp file, fsynced and renamed into place. A
// bad setting is reported before anything changes. Installing without
// socket activation over an install with it disables and removes the old
// berth.socket; switching a running agent to socket activation stops it
// (and its apps) first, as systemd hands a socket only to a service it
// starts.
func Install(ctx context.Context, c UnitConfig, log hclog.Logger) error {
	in := installer{
		unitDir:     UnitDir,
		systemctl:   "systemctl",
		groupadd:    "groupadd",
		lookupGroup: func(name string) error { _, err := user.LookupGroup(name); return err },
	}
	return in.install(ctx, c, log)
}

// installer is Install with its paths and commands replaceable by tests.
type installer struct {
	unitDir     string
	systemctl   string
	groupadd    string
	lookupGroup func(name string) error // nil error when the group exists
}

func (in installer) install(ctx context.Context, c UnitConfig, log hclog.Logger) error {
	if err := c.Validate(); err != nil {
		return err
	}
	c = c.withDefaults()
	fi, err := os.Stat(c.BinaryPath)
	if err != nil {
		return fmt.Errorf("install: binary: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return &UnitConfigError{Field: "BinaryPath", Value: c.BinaryPath, Reason: "is not an executable file"}
	}

	if err := in.lookupGroup(c.SocketGroup); err != nil {
		var unknown user.UnknownGroupError
		if !errors.As(err, &unknown) {
			return fmt.Errorf("install: look up group %q: %w", c.SocketGroup, err)
		}
		if err := run(ctx, in.groupadd, "--system", c.SocketGroup); err != nil {
			return fmt.Errorf("install: create group %q: %w", c.SocketGroup, err)
		}
		log.Info("created the socket group", "group", c.SocketGroup)
	}

	servicePath := filepath.Join(in.unitDir, "berth.service")
	socketPath := filepath.Join(in.unitDir, "berth.socket")
	old, _ := os.ReadFile(servicePath)
	service := RenderService(c)
	if err := writeFileAtomic(servicePath, []byte(service), 0o644); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	_, err = os.Stat(socketPath)
	newSocket := c.SocketActivation && errors.Is(err, os.ErrNotExist)
	staleSocket := !c.SocketActivation && err == nil
	if c.SocketActivation {
		if err := writeFileAtomic(socketPath, []byte(RenderSocket(c)), 0o644); err != nil {
			return fmt.Errorf("install: %w", err)
		}
	}
	log.Info("wrote unit files", "dir", in.unitDir, "socket_activation", c.SocketActivation)

	if staleSocket {
		if err := run(ctx, in.systemctl, "disable", "--now", "berth.socket"); err != nil {
			return fmt.Errorf("install: disable the old berth.socket: %w", err)
		}
		if err := os.Remove(socketPath); err != nil {
			return fmt.Errorf("install: remove the old berth.socket: %w", err)
		}
		if err := syncDir(in.unitDir); err != nil {
			return fmt.Errorf("install: %w", err)
		}
	}
	if err := run(ctx, in.systemctl, "daemon-reload"); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if newSocket && isActive(ctx, in.systemctl, "berth.service") {
		// systemd starts no socket unit while its service runs (it could
		// not hand the socket over): stop the agent, and its apps, first.
		log.Warn("switching to socket activation: stopping berth.service and its apps to hand the socket to systemd")
		if err := run(ctx, in.systemctl, "stop", "berth.service"); err != nil {
			return fmt.Errorf("install: %w", err)
		}
	}
	units := []string{"berth.service"}
	if c.SocketActivation {
		units = []string{"berth.socket", "berth.service"}
	}
	if err := run(ctx, in.systemctl, append([]string{"enable", "--now"}, units...)...); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if len(old) > 0 && string(old) != service {
		log.Info("the unit changed; if berth was running it keeps the old settings until `systemctl restart berth` (its apps keep running)")
	}
	return nil
}

// isActive reports whether systemctl says the unit is active.
func isActive(ctx context.Context, systemctl, unit string) bool {
	return exec.CommandContext(ctx, systemctl, "is-active", "--quiet", unit).Run() == nil
}

// run runs a command and returns an error with its output when it fails.
func run(ctx context.Context, name string, args ...string) error {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if msg != "" {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
		}
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

// writeFileAtomic writes data to path through a temp file in the same dir:
// write, fsync, rename, fsync the dir. Readers see the old or the new
// file, never a part of it, also after a power cut.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
