package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/berth-dev/berth/agent/api"
	"github.com/spf13/cobra"
)

func newEventsCmd(g *globals) *cobra.Command {
	var follow bool
	var n int
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Print the event log (of one app with -a), and follow it with -f",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			app, err := g.optionalApp(cmd)
			if err != nil {
				return err
			}
			if n < 0 {
				return usagef(cmd.CommandPath(), "bad -n %d: want 0 or more events", n)
			}
			c, out := g.client(), cmd.OutOrStdout()
			events, err := c.Events(cmd.Context(), app, 0, 0)
			if err != nil {
				return err
			}
			var last uint64 // follow after everything there is, shown or not
			if len(events) > 0 {
				last = events[len(events)-1].Seq
			}
			if len(events) > n {
				events = events[len(events)-n:]
			}
			if g.json {
				for _, e := range events {
					if err := writeJSONLine(out, e); err != nil {
						return err
					}
				}
			} else {
				t := newTable(out, "SEQ", "TIME", "APP", "KIND", "MESSAGE")
				for _, e := range events {
					t.row(eventRow(e)...)
				}
				if err := t.flush(); err != nil {
					return err
				}
			}
			if !follow {
				return nil
			}
			return c.FollowEvents(cmd.Context(), app, last, func(e api.Event) error {
				if g.json {
					return writeJSONLine(out, e)
				}
				_, err := fmt.Fprintln(out, strings.Join(eventRow(e), "  "))
				return err
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events until interrupted")
	cmd.Flags().IntVarP(&n, "lines", "n", 20, "how many of the last events to print")
	return cmd
}

func eventRow(e api.Event) []string {
	return []string{fmt.Sprintf("%d", e.Seq), e.Time.Local().Format("2006-01-02 15:04:05"), orDash(e.App), e.Kind, e.Message}
}

// writeJSONLine prints v as one line of NDJSON.
func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
