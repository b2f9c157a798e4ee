package main

import (
	"fmt"
	"strconv"

	"github.com/berth-dev/berth/state"
	"github.com/spf13/cobra"
)

func newAppsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "apps",
		Short: "List apps; create, destroy and set the user of one",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			apps, err := g.client().Apps(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if g.json {
				return writeJSON(out, apps)
			}
			if len(apps) == 0 {
				fmt.Fprintln(out, "No apps yet: deploy one with `berth deploy -a NAME FILE`.")
				return nil
			}
			now := g.env.now()
			t := newTable(out, "NAME", "RELEASE", "FORMATION", "USER", "CREATED")
			for _, a := range apps {
				rel := "-"
				if a.ActiveRelease > 0 {
					rel = "v" + strconv.Itoa(a.ActiveRelease)
				}
				t.row(a.Name, rel, formation(a.Formation), orDash(a.User), ago(now, a.CreatedAt))
			}
			return t.flush()
		},
	}
	cmd.AddCommand(newAppsCreateCmd(g), newAppsDestroyCmd(g), newAppsSetUserCmd(g))
	return cmd
}

// checkAppArg validates an app name (an argument, -a or $BERTH_APP); a
// bad one is a usage error of cmd.
func checkAppArg(cmd *cobra.Command, name string) error {
	if err := state.ValidateAppName(name); err != nil {
		return usagef(cmd.CommandPath(), "%v", err)
	}
	return nil
}

func newAppsCreateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "create NAME",
		Short: "Create an app with nothing deployed (deploy creates one too)",
		Args:  exactArgs(1, "the app's NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkAppArg(cmd, args[0]); err != nil {
				return err
			}
			app, err := g.client().CreateApp(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return writeJSON(cmd.OutOrStdout(), app)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Created app %s.\n", app.Name)
			return nil
		},
	}
}

func newAppsDestroyCmd(g *globals) *cobra.Command {
	var confirm string
	cmd := &cobra.Command{
		Use:   "destroy NAME --confirm NAME",
		Short: "Stop an app's processes and delete it with its releases",
		Args:  exactArgs(1, "the app's NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := checkAppArg(cmd, name); err != nil {
				return err
			}
			if confirm != name {
				return usagef(cmd.CommandPath(), "destroying %s stops its processes and deletes its releases; to go ahead, repeat its name: --confirm %s", name, name)
			}
			if err := g.client().DestroyApp(cmd.Context(), name); err != nil {
				return err
			}
			if g.json {
				return writeJSON(cmd.OutOrStdout(), map[string]string{"destroyed": name})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Destroyed app %s.\n", name)
			return nil
		},
	}
	cmd.Flags().StringVar(&confirm, "confirm", "", "the app's name again, to confirm")
	return cmd
}

func newAppsSetUserCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "set-user NAME USER",
		Short: "Run an app's processes as USER (\"\" for the agent's default) and restart them",
		Args:  exactArgs(2, "NAME and USER"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkAppArg(cmd, args[0]); err != nil {
				return err
			}
			if args[1] != "" {
				if err := state.ValidateUser(args[1]); err != nil {
					return usagef(cmd.CommandPath(), "%v", err)
				}
			}
			app, err := g.client().SetAppUser(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			if g.json {
				return writeJSON(cmd.OutOrStdout(), app)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "App %s now runs as %s.\n", app.Name, orDefault(app.User))
			return nil
		},
	}
}

func orDefault(user string) string {
	if user == "" {
		return "the agent's default user"
	}
	return user
}
