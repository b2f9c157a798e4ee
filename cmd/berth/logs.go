package main

import (
	"fmt"
	"io"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
	"github.com/spf13/cobra"
)

func newLogsCmd(g *globals) *cobra.Command {
	var follow bool
	var n int
	cmd := &cobra.Command{
		Use:   "logs [INSTANCE]",
		Short: "Print an app's output (of one instance), and follow it with -f",
		Args:  rangeArgs(0, 1, "at most one INSTANCE, such as web.1"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			if n < 0 {
				return usagef(cmd.CommandPath(), "bad -n %d: want 0 or more lines", n)
			}
			instance := ""
			if len(args) == 1 {
				instance = args[0]
				if err := state.ValidateInstance(instance); err != nil {
					return usagef(cmd.CommandPath(), "%v", err)
				}
			}
			out := cmd.OutOrStdout()
			print := func(l api.LogLine) error { return printLogLine(g, out, l) }
			c := g.client()
			if follow {
				return c.TailLogs(cmd.Context(), app, instance, n, print)
			}
			lines, err := c.Logs(cmd.Context(), app, instance, n)
			if err != nil {
				return err
			}
			for _, l := range lines {
				if err := print(l); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until interrupted")
	cmd.Flags().IntVarP(&n, "lines", "n", 100, "how many of the last lines to print")
	return cmd
}

// printLogLine prints one line: as NDJSON with --json, else
// "TIME INSTANCE[stream]: text".
func printLogLine(g *globals, out io.Writer, l api.LogLine) error {
	if g.json {
		return writeJSONLine(out, l)
	}
	src := l.Instance
	if l.Stream == "stderr" {
		src += "[err]"
	}
	text := l.Text
	if l.Missed > 0 && text == "" {
		text = fmt.Sprintf("[berth: %d lines missed by this slow reader]", l.Missed)
	}
	_, err := fmt.Fprintf(out, "%s %s: %s\n", l.Time.Local().Format(time.RFC3339), src, text)
	return err
}
