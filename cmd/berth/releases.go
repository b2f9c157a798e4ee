package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/berth-dev/berth/agent/api"
	"github.com/spf13/cobra"
)

func newReleasesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "releases",
		Short: "List an app's releases, newest first",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			rels, err := g.client().Releases(cmd.Context(), app)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if g.json {
				return writeJSON(out, rels)
			}
			if len(rels) == 0 {
				fmt.Fprintf(out, "%s has no releases yet.\n", app)
				return nil
			}
			now := g.env.now()
			t := newTable(out, "VERSION", "STATUS", "BUILD", "CONFIG", "CREATED", "DESCRIPTION")
			for _, r := range rels {
				t.row(fmt.Sprintf("v%d", r.Version), releaseStatus(r), short(r.Build), fmt.Sprintf("%d vars", len(r.ConfigKeys)), ago(now, r.CreatedAt), r.Description)
			}
			return t.flush()
		},
	}
	cmd.AddCommand(newReleasesInfoCmd(g))
	return cmd
}

func newReleasesInfoCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "info vN",
		Short: "Show one release with its config and release-phase output",
		Args:  exactArgs(1, "a release version such as v3"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			v, err := versionArg(cmd, args[0])
			if err != nil {
				return err
			}
			r, err := g.client().Release(cmd.Context(), app, v)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if g.json {
				return writeJSON(out, r)
			}
			t := newTable(out, "Release:", fmt.Sprintf("%s v%d", r.App, r.Version))
			t.row("Status:", releaseStatus(r))
			t.row("Build:", r.Build)
			t.row("Created:", fmt.Sprintf("%s (%s)", r.CreatedAt.UTC().Format("2006-01-02 15:04:05 MST"), ago(g.env.now(), r.CreatedAt)))
			t.row("Description:", r.Description)
			t.row("Formation:", formation(r.Formation))
			if err := t.flush(); err != nil {
				return err
			}
			fmt.Fprintln(out, "Config:")
			if len(r.Config) == 0 {
				fmt.Fprintln(out, "  (none)")
			}
			printConfig(out, r.Config, "  ")
			if r.Output != "" {
				fmt.Fprintln(out, "Release phase output:")
				for _, line := range strings.Split(strings.TrimRight(r.Output, "\n"), "\n") {
					fmt.Fprintf(out, "  %s\n", line)
				}
			}
			return nil
		},
	}
}

// releaseStatus is a release's status, with its reason when it has one:
// "failed (web.1 is not healthy)".
func releaseStatus(r api.Release) string {
	if r.Reason == "" {
		return r.Status
	}
	return r.Status + " (" + r.Reason + ")"
}

// versionArg parses a release version argument ("v3" or "3"); a bad one
// is a usage error of cmd.
func versionArg(cmd *cobra.Command, s string) (int, error) {
	v, err := api.ParseVersion(s)
	if err != nil {
		return 0, usagef(cmd.CommandPath(), "bad release version %q: want vN or N, such as v3", s)
	}
	return v, nil
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
