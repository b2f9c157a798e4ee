package main

import (
	"github.com/berth-dev/berth/agent/api"
	"github.com/spf13/cobra"
)

func newRollbackCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollback [vN]",
		Short: "Release again the build and config of vN (default: the release before the active one)",
		Args:  rangeArgs(0, 1, "at most one release version"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			v := 0
			if len(args) == 1 {
				if v, err = versionArg(cmd, args[0]); err != nil {
					return err
				}
			}
			return releaseOp(g, cmd.OutOrStdout(), func(progress api.ProgressFunc) (api.Release, error) {
				return g.client().Rollback(switchContext(cmd), app, v, progress)
			})
		},
	}
	addWaitFlag(cmd)
	return cmd
}
