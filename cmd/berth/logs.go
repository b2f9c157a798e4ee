package main

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
	"github.com/spf13/cobra"
)

func newLogsCmd(g *globals) *cobra.Command {
	var follow bool
	var n int
	var since, release string
	cmd := &cobra.Command{
		Use:   "logs [INSTANCE]",
		Short: "Print an app's output (of one instance), and follow it with -f",
		Long: `Print an app's output: the stored lines, across restarts and releases,
whether the instances run or not, each with its time, instance and release.
With -f, keep printing new lines, those of instances started by a deploy,
a restart or a scale too; when this reader falls behind and lines are
skipped, it says how many on stderr.`,
		Args: rangeArgs(0, 1, "at most one INSTANCE, such as web.1"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			if n < 0 {
				return usagef(cmd.CommandPath(), "bad -n %d: want 0 or more lines", n)
			}
			q := api.LogQuery{N: n}
			if len(args) == 1 {
				q.Instance = args[0]
				if err := state.ValidateInstance(q.Instance); err != nil {
					return usagef(cmd.CommandPath(), "%v", err)
				}
			}
			if since != "" {
				if q.Since, err = parseSince(time.Now(), since); err != nil {
					return usagef(cmd.CommandPath(), "%v", err)
				}
			}
			if release != "" {
				if q.Release, err = api.ParseVersion(release); err != nil {
					return usagef(cmd.CommandPath(), "bad --release %q: want a version such as v3", release)
				}
			}
			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			print := func(l api.LogLine) error { return printLogLine(g, out, errOut, l) }
			c := g.client()
			if follow {
				return c.TailLogs(cmd.Context(), app, q, print)
			}
			lines, err := c.Logs(cmd.Context(), app, q)
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
	cmd.Flags().IntVarP(&n, "lines", "n", 100, "how many of the last lines to print (0: all)")
	cmd.Flags().StringVar(&since, "since", "", "only lines from this time on: 2026-12-02T23:10:00Z, 2026-12-02, or a duration ago such as 10m")
	cmd.Flags().StringVar(&release, "release", "", "only lines of this release, such as v3")
	return cmd
}

// parseSince parses the --since of logs: an RFC 3339 time, a local date
// and time ("2026-12-02T23:10:00", "2026-12-02 23:10", "2026-12-02"), or
// a duration before now ("90s", "10m", "2h").
func parseSince(now time.Time, s string) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("bad --since %q: a duration ago must not be negative", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("bad --since %q: want a time (2026-12-02T23:10:00Z, 2026-12-02 23:10, 2026-12-02) or a duration ago (10m)", s)
}

// logTimeLayout is RFC 3339 with milliseconds: lines come faster than
// once a second.
const logTimeLayout = "2006-01-02T15:04:05.000Z07:00"

// printLogLine prints one line: as NDJSON with --json, else
// "TIME INSTANCE@vN: text", the source followed by [err] for stderr, and
// by the marks of the stored format ("+" a piece of a longer line, "%"
// output that ended without a newline). Lines a follower skipped because
// it fell behind are told on errOut, so that they show on screen even
// when the output goes through grep.
func printLogLine(g *globals, out, errOut io.Writer, l api.LogLine) error {
	if l.Missed > 0 {
		fmt.Fprintf(errOut, "berth: %d lines skipped here: this reader fell behind the app's output (the log files have them all)\n", l.Missed)
	}
	if g.json {
		return writeJSONLine(out, l)
	}
	if l.Missed > 0 && l.Text == "" && l.Stream == "" {
		return nil // only the notice
	}
	src := l.Instance
	if l.Release > 0 {
		src += "@v" + strconv.Itoa(l.Release)
	}
	mark := ""
	switch {
	case l.Split:
		mark = "+"
	case l.Partial:
		mark = "%"
	}
	switch {
	case l.Stream == "stderr":
		src += "[err" + mark + "]"
	case mark != "":
		src += "[out" + mark + "]"
	}
	at := "-"
	if !l.Time.IsZero() {
		at = l.Time.Local().Format(logTimeLayout)
	}
	_, err := fmt.Fprintf(out, "%s %s: %s\n", at, src, l.Text)
	return err
}
