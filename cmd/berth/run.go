package main

import (
	"fmt"

	"github.com/berth-dev/berth/agent/api"
	"github.com/spf13/cobra"
)

func newRunCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run [--] COMMAND [ARG...]",
		Short: "Run a one-off command in the app's active release; exit with its exit code",
		Long: `Run a one-off command once in the app's active release: in its build dir, with its
environment (its config, BERTH_*; no PORT) and as its user, like its processes. Its output
streams here as it comes, and berth exits with its exit code (128+N when signal N killed it).
COMMAND and its ARGs are run as they are, without a shell: use sh -c '...' for one. Stdin is
not passed (the command reads /dev/null). While it runs, ps lists it as run.N; it is never
part of the formation nor restarted. Interrupting berth (Ctrl-C) stops it.`,
		Example: `  berth run -a hello -- ./migrate --dry-run
  berth run -a hello -- sh -c 'echo $DATABASE_URL | cut -d@ -f2'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef(cmd.CommandPath(), "want a COMMAND to run")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			inst := ""
			exit, err := g.client().Run(cmd.Context(), app, args, func(s api.RunStarted) { inst = s.Instance },
				cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if g.json {
				if err := writeJSON(cmd.OutOrStdout(), map[string]any{"app": app, "instance": inst, "exit": exit}); err != nil {
					return err
				}
			} else if exit.Signal != 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "berth: %s of %s ended by %s\n", inst, app, exit.Status)
			}
			if code := exit.ExitCode(); code != 0 {
				return &exitStatus{code: code}
			}
			return nil
		},
	}
	// Flags after COMMAND are its own: berth run -a app ls -l.
	cmd.Flags().SetInterspersed(false)
	return cmd
}

// exitStatus ends berth with the exit code of a command it ran, saying
// nothing more.
type exitStatus struct{ code int }

func (e *exitStatus) Error() string { return fmt.Sprintf("exit status %d", e.code) }
