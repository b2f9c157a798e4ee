package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/berth-dev/berth/systemd"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
)

// systemdFlags are the settings shared by `berth systemd unit` and
// `berth systemd install`.
type systemdFlags struct {
	binary           string
	group            string
	dataDir          string
	socket           string
	watchdog         time.Duration
	stopTimeout      time.Duration
	socketActivation bool
	env              []string
}

func (f *systemdFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.binary, "binary", "", "absolute path of the berth binary the unit runs (default: this executable)")
	fs.StringVar(&f.group, "group", systemd.DefaultSocketGroup, "group allowed to use the control socket (created if missing)")
	fs.StringVar(&f.dataDir, "data-dir", systemd.DefaultDataDir, "the agent's data dir")
	fs.StringVar(&f.socket, "socket", systemd.DefaultSocketPath, "the control socket path")
	fs.DurationVar(&f.watchdog, "watchdog", systemd.DefaultWatchdogSec, "WatchdogSec: systemd restarts an agent that stops answering for this long")
	fs.DurationVar(&f.stopTimeout, "stop-timeout", systemd.DefaultStopTimeout, "the apps' longest stop timeout; TimeoutStopSec adds a margin to it")
	fs.BoolVar(&f.socketActivation, "socket-activation", false, "also write berth.socket: systemd holds the socket while the agent restarts")
	fs.StringArrayVar(&f.env, "env", nil, "agent setting for the unit's environment, as BERTH_NAME=value (repeatable)")
}

// config turns the flags into a validated unit config; a bad flag value
// is a usage error of cmd.
func (f *systemdFlags) config(cmd *cobra.Command) (systemd.UnitConfig, error) {
	bin := f.binary
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return systemd.UnitConfig{}, fmt.Errorf("find this executable (pass --binary): %w", err)
		}
		if exe, err = filepath.EvalSymlinks(exe); err != nil {
			return systemd.UnitConfig{}, fmt.Errorf("find this executable (pass --binary): %w", err)
		}
		bin = exe
	}
	c := systemd.UnitConfig{
		BinaryPath:       bin,
		DataDir:          f.dataDir,
		SocketPath:       f.socket,
		SocketGroup:      f.group,
		StopTimeout:      f.stopTimeout,
		WatchdogSec:      f.watchdog,
		SocketActivation: f.socketActivation,
	}
	for _, kv := range f.env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return c, usagef(cmd.CommandPath(), "--env %q: want NAME=value", kv)
		}
		if c.Env == nil {
			c.Env = map[string]string{}
		}
		c.Env[k] = v
	}
	if err := c.Validate(); err != nil {
		return c, &usageError{cmd: cmd.CommandPath(), err: err}
	}
	return c, nil
}

// newSystemdCmd is `berth systemd`: render and install the unit files that
// make berth a host daemon.
func newSystemdCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "systemd",
		Short: "Print or install the systemd units that run the agent",
		Long: "berth runs as a systemd service (Type=notify, Restart=always, watchdog, delegated cgroup),\n" +
			"so the agent and every app's active release come back after a crash or a reboot.",
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}

	var unitFlags systemdFlags
	unit := &cobra.Command{
		Use:   "unit",
		Short: "Print berth.service (and berth.socket with --socket-activation)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := unitFlags.config(cmd)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "# %s\n%s", filepath.Join(systemd.UnitDir, "berth.service"), systemd.RenderService(c))
			if c.SocketActivation {
				fmt.Fprintf(out, "\n# %s\n%s", filepath.Join(systemd.UnitDir, "berth.socket"), systemd.RenderSocket(c))
			}
			return nil
		},
	}
	unitFlags.register(unit)

	var installFlags systemdFlags
	install := &cobra.Command{
		Use:   "install",
		Short: "Write the units to " + systemd.UnitDir + ", create the socket group, enable and start berth",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := installFlags.config(cmd)
			if err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return fmt.Errorf("berth systemd install must run as root (it writes %s and runs systemctl)", systemd.UnitDir)
			}
			log := hclog.New(&hclog.LoggerOptions{Name: "berth", Output: cmd.ErrOrStderr(), Level: hclog.Info})
			if err := systemd.Install(cmd.Context(), c, log); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "berth.service installed, enabled and started; see `systemctl status berth`")
			return nil
		},
	}
	installFlags.register(install)

	cmd.AddCommand(unit, install)
	return cmd
}
