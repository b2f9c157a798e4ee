package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
	"github.com/spf13/cobra"
)

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show an app's config vars; set, unset or get them",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			cfg, err := g.client().Config(cmd.Context(), app)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if g.json {
				return writeJSON(out, cfg)
			}
			if len(cfg) == 0 {
				fmt.Fprintf(out, "%s has no config vars.\n", app)
				return nil
			}
			printConfig(out, cfg, "")
			return nil
		},
	}
	cmd.AddCommand(newConfigSetCmd(g), newConfigUnsetCmd(g), newConfigGetCmd(g))
	return cmd
}

// printConfig prints KEY=VALUE lines, sorted, that a shell can source.
func printConfig(out io.Writer, cfg map[string]string, indent string) {
	for _, k := range sortedKeys(cfg) {
		fmt.Fprintf(out, "%s%s=%s\n", indent, k, shellQuote(cfg[k]))
	}
}

// shellQuote quotes v for a POSIX shell when it needs quoting.
func shellQuote(v string) string {
	if v != "" && strings.IndexFunc(v, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:,@%+=", r))
	}) < 0 {
		return v
	}
	return "'" + strings.ReplaceAll(v, "'", `'\''`) + "'"
}

func newConfigSetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "set KEY=VALUE...",
		Short: "Set config vars: makes a new release and restarts the app on it",
		Args:  minArgs(1, "at least one KEY=VALUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			change := api.ConfigChange{Set: map[string]string{}}
			for _, arg := range args {
				k, v, ok := strings.Cut(arg, "=")
				if !ok {
					return usagef(cmd.CommandPath(), "bad argument %q: want KEY=VALUE", arg)
				}
				if err := state.ValidateEnvName(k); err != nil {
					return usagef(cmd.CommandPath(), "bad argument %q: %v", arg, err)
				}
				change.Set[k] = v
			}
			return configChange(cmd, g, app, change)
		},
	}
	addWaitFlag(cmd)
	return cmd
}

func newConfigUnsetCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "unset KEY...",
		Short: "Unset config vars: makes a new release and restarts the app on it",
		Args:  minArgs(1, "at least one KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			for _, k := range args {
				if err := state.ValidateEnvName(k); err != nil {
					return usagef(cmd.CommandPath(), "bad argument %q: %v", k, err)
				}
			}
			return configChange(cmd, g, app, api.ConfigChange{Unset: args})
		},
	}
	addWaitFlag(cmd)
	return cmd
}

func configChange(cmd *cobra.Command, g *globals, app string, change api.ConfigChange) error {
	return releaseOp(g, cmd.OutOrStdout(), func(progress api.ProgressFunc) (api.Release, error) {
		return g.client().SetConfig(switchContext(cmd), app, change, progress)
	})
}

func newConfigGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get KEY",
		Short: "Print one config var's value",
		Args:  exactArgs(1, "one KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			if err := state.ValidateEnvName(args[0]); err != nil {
				return usagef(cmd.CommandPath(), "%v", err)
			}
			cfg, err := g.client().Config(cmd.Context(), app)
			if err != nil {
				return err
			}
			v, ok := cfg[args[0]]
			if !ok {
				return fmt.Errorf("%s has no config var %s", app, args[0])
			}
			if g.json {
				return writeJSON(cmd.OutOrStdout(), map[string]string{args[0]: v})
			}
			fmt.Fprintln(cmd.OutOrStdout(), v)
			return nil
		},
	}
}
