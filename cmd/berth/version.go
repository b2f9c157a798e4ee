package main

import (
	"fmt"

	"github.com/berth-dev/berth/agent/api"
	"github.com/spf13/cobra"
)

// versionInfo is the --json output of `berth version`.
type versionInfo struct {
	CLI   string         `json:"cli"`
	Agent *api.AgentInfo `json:"agent,omitempty"`
	Error string         `json:"error,omitempty"`
}

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the CLI's version and the agent's",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			info, err := g.client().Info(cmd.Context())
			if g.json {
				v := versionInfo{CLI: version}
				if err == nil {
					v.Agent = &info
				} else {
					v.Error = err.Error()
				}
				if werr := writeJSON(out, v); werr != nil {
					return werr
				}
				return err
			}
			fmt.Fprintf(out, "berth CLI:    %s\n", version)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "berth agent:  %s (pid %d, up %s, data %s, %d apps, %d processes)\n",
				info.Version, info.PID, uptime(g.env.now().Sub(info.StartedAt)), info.DataDir, info.Apps, info.Processes)
			return nil
		},
	}
}
