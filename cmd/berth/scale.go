package main

import (
	"strconv"
	"strings"

	"github.com/berth-dev/berth/state"
	"github.com/spf13/cobra"
)

func newScaleCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "scale TYPE=N...",
		Short: "Set how many instances of each process type run (others keep running)",
		Args:  minArgs(1, "at least one TYPE=N, such as web=2"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			f := map[string]int{}
			for _, arg := range args {
				typ, count, ok := strings.Cut(arg, "=")
				if !ok {
					return usagef(cmd.CommandPath(), "bad argument %q: want TYPE=N, such as web=2", arg)
				}
				if err := state.ValidateProcessType(typ); err != nil {
					return usagef(cmd.CommandPath(), "bad argument %q: %v", arg, err)
				}
				n, err := strconv.Atoi(count)
				if err != nil || n < 0 {
					return usagef(cmd.CommandPath(), "bad argument %q: the count must be a whole number, 0 or more", arg)
				}
				f[typ] = n
			}
			procs, err := g.client().Scale(cmd.Context(), app, f)
			if err != nil {
				return err
			}
			return printProcesses(g, cmd.OutOrStdout(), procs, false)
		},
	}
}
