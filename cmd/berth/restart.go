package main

import (
	"fmt"

	"github.com/berth-dev/berth/state"
	"github.com/spf13/cobra"
)

func newRestartCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "restart [TYPE|INSTANCE]",
		Short: "Restart an app's processes (types at once, a type's instances one at a time, each up before the next): all, one type (web) or one instance (web.1)",
		Args:  rangeArgs(0, 1, "at most one TYPE or INSTANCE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			target := ""
			if len(args) == 1 {
				target = args[0]
				if state.ValidateInstance(target) != nil && state.ValidateProcessType(target) != nil {
					return usagef(cmd.CommandPath(), "bad target %q: want a process type (web) or an instance (web.1)", target)
				}
			}
			if err := g.client().Restart(cmd.Context(), app, target); err != nil {
				return err
			}
			what := "all processes of " + app
			if target != "" {
				what = target + " of " + app
			}
			if g.json {
				return writeJSON(cmd.OutOrStdout(), map[string]string{"app": app, "target": target})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Restarted %s.\n", what)
			return nil
		},
	}
}
