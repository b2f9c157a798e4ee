package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/berth-dev/berth/agent/api"
	"github.com/spf13/cobra"
)

func newPsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ps",
		Short: "List an app's processes (every app's without -a)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			app, err := g.optionalApp(cmd)
			if err != nil {
				return err
			}
			procs, err := g.client().Processes(cmd.Context(), app)
			if err != nil {
				return err
			}
			return printProcesses(g, cmd.OutOrStdout(), procs, app == "")
		},
	}
}

// printProcesses prints the ps table: instance, state, pid, release,
// port, uptime, restarts, switch mode (socket: start-then-stop on an
// agent-owned socket; bind: stop-then-start; "+steer": the agent steers
// the public port's connections to the instance's own socket); the app
// column when several apps are shown and the health column when a
// process has a health check. A last line says why steering is off when
// it is for a type it would apply to.
func printProcesses(g *globals, out io.Writer, procs []api.Process, withApp bool) error {
	if g.json {
		return writeJSON(out, procs)
	}
	if len(procs) == 0 {
		fmt.Fprintln(out, "No processes.")
		return nil
	}
	withHealth := false
	for _, p := range procs {
		withHealth = withHealth || p.Health != ""
	}
	header := []string{"INSTANCE", "STATE", "PID", "RELEASE", "PORT", "UPTIME", "RESTARTS"}
	if withHealth {
		header = append(header, "HEALTH")
	}
	header = append(header, "MODE", "COMMAND")
	if withApp {
		header = append([]string{"APP"}, header...)
	}
	now := g.env.now()
	t := newTable(out, header...)
	for _, p := range procs {
		state := p.State
		switch {
		case p.LastExit != "" && !p.NextAttempt.IsZero() && p.NextAttempt.After(now):
			state += fmt.Sprintf(" (%s, retry in %s)", p.LastExit, approx(p.NextAttempt.Sub(now)))
		case p.LastExit != "" && p.State != "running" && p.State != "starting":
			state += " (" + p.LastExit + ")"
		case strings.HasPrefix(p.LastExit, "killed by the OOM killer"):
			// Restarted at once, but an OOM kill is worth seeing.
			state += " (last exit: " + p.LastExit + ")"
		}
		pid, up := "-", "-"
		if p.PID > 0 {
			pid = strconv.Itoa(p.PID)
		}
		if p.State == "running" && !p.StartedAt.IsZero() {
			up = uptime(now.Sub(p.StartedAt))
		}
		port := "-"
		if p.Port > 0 {
			port = strconv.Itoa(p.Port)
		}
		row := []string{p.Instance, state, pid, fmt.Sprintf("v%d", p.Release), port, up, strconv.Itoa(p.Restarts)}
		if withHealth {
			row = append(row, orDash(p.Health))
		}
		mode := orDash(p.Mode)
		if strings.HasPrefix(p.Steering, "on") {
			mode += "+steer"
		}
		row = append(row, mode, p.Command)
		if withApp {
			row = append([]string{p.App}, row...)
		}
		t.row(row...)
	}
	if err := t.flush(); err != nil {
		return err
	}
	for _, p := range procs {
		if why, ok := strings.CutPrefix(p.Steering, "off: "); ok {
			_, err := fmt.Fprintf(out, "Connection steering is off (%s): socket-activated types share one socket per slot, others switch stop-then-start.\n", why)
			return err
		}
	}
	return nil
}
