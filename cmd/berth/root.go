package main

import (
	"github.com/berth-dev/berth/agent/api"
	"github.com/spf13/cobra"
)

// globals are the flags every command takes.
type globals struct {
	env    *cliEnv
	socket string
	app    string
	json   bool
}

// socketPath returns --socket, else $BERTH_SOCKET, else the default.
func (g *globals) socketPath() string {
	if g.socket != "" {
		return g.socket
	}
	if s := g.env.getenv("BERTH_SOCKET"); s != "" {
		return s
	}
	return api.DefaultSocketPath()
}

// client returns a client for the agent's socket.
func (g *globals) client() *api.Client { return api.NewClient(g.socketPath()) }

// appName returns -a, else $BERTH_APP, checked locally; a missing or bad
// name is a usage error of cmd.
func (g *globals) appName(cmd *cobra.Command) (string, error) {
	app := g.app
	if app == "" {
		app = g.env.getenv("BERTH_APP")
	}
	if app == "" {
		return "", usagef(cmd.CommandPath(), "no app given: use -a APP or set BERTH_APP")
	}
	if err := checkAppArg(cmd, app); err != nil {
		return "", err
	}
	return app, nil
}

// optionalApp is appName for commands that also work on every app.
func (g *globals) optionalApp(cmd *cobra.Command) (string, error) {
	if g.app == "" && g.env.getenv("BERTH_APP") == "" {
		return "", nil
	}
	return g.appName(cmd)
}

func newRootCmd(env *cliEnv) *cobra.Command {
	g := &globals{env: env}
	root := &cobra.Command{
		Use:   "berth",
		Short: "berth runs releases of your apps on this host: build, release, run",
		Long: `berth is a release agent for Linux hosts. ` + "`berth agent`" + ` is the daemon; every
other command talks to it over its unix socket (--socket, $BERTH_SOCKET, default ` + api.DefaultSocketPath() + `).
App commands take the app with -a APP or $BERTH_APP. Every command takes --json for
machine-readable output (go doc github.com/berth-dev/berth/cmd/berth).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          anyArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("berth", "unknown command %q", args[0])
			}
			cmd.SetOut(env.stderr)
			cmd.Help() //nolint:errcheck // writing help to stderr
			return usagef("", "no command given")
		},
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.socket, "socket", "", "the agent's socket (default $BERTH_SOCKET, else "+api.DefaultSocketPath()+")")
	pf.StringVarP(&g.app, "app", "a", "", "the app (default $BERTH_APP)")
	pf.BoolVar(&g.json, "json", false, "print JSON (the API's types) instead of tables")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usagef(cmd.CommandPath(), "%v", err)
	})
	root.AddCommand(
		newAgentCmd(env),
		newAppsCmd(g),
		newDeployCmd(g),
		newReleasesCmd(g),
		newRollbackCmd(g),
		newConfigCmd(g),
		newScaleCmd(g),
		newPsCmd(g),
		newRestartCmd(g),
		newRunCmd(g),
		newLogsCmd(g),
		newEventsCmd(g),
		newVersionCmd(g),
		newSystemdCmd(),
		newFleetCmd(g),
	)
	return root
}

// anyArgs accepts any arguments (the command checks them itself).
func anyArgs(*cobra.Command, []string) error { return nil }

// exactArgs, rangeArgs and friends return usage errors (exit 2).
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef(cmd.CommandPath(), "want %s, got %d argument(s)", what, len(args))
		}
		return nil
	}
}

func rangeArgs(lo, hi int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < lo || len(args) > hi {
			return usagef(cmd.CommandPath(), "want %s, got %d argument(s)", what, len(args))
		}
		return nil
	}
}

func minArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return usagef(cmd.CommandPath(), "want %s", what)
		}
		return nil
	}
}

// noArgs refuses arguments, naming an unknown subcommand as such.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if cmd.HasSubCommands() {
		return usagef(cmd.CommandPath(), "unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return usagef(cmd.CommandPath(), "%s takes no arguments, got %q", cmd.CommandPath(), args[0])
}
