package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/agent/fleet"
	"github.com/berth-dev/berth/state"
	"github.com/spf13/cobra"
)

// `berth fleet` changes and shows the desired state of a fleet in etcd.
// It talks to etcd (and, to upload a build, to one node's build
// endpoint), not to the local agent: a rollout is driven by the agents
// and outlives the command.

// fleetFlags are the flags of every fleet command.
type fleetFlags struct {
	g                         *globals
	etcd                      []string
	etcdCert, etcdKey, etcdCA string
	etcdUser, prefix          string
	peerCA                    string
	waveSize, maxUnavailable  int
	wait                      bool
}

func newFleetCmd(g *globals) *cobra.Command {
	ff := &fleetFlags{g: g}
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Many hosts follow one desired state in etcd: deploy, config, rollback and status in waves",
		Long: `fleet commands change the desired state kept in etcd (--etcd, $BERTH_ETCD) that every agent
started with --etcd follows. A deploy uploads the tarball once, to one node's build endpoint
(--via, default the first node by name; $BERTH_FLEET_TOKEN, --fleet-ca), and the other nodes
fetch it from there by digest. Rollouts go in waves (--wave-size or --max-unavailable); the
agents drive them, so they go on after the command exits (--wait follows one to its end).`,
		Args: noArgs,
	}
	pf := cmd.PersistentFlags()
	pf.StringSliceVar(&ff.etcd, "etcd", nil, "etcd client URLs (default $BERTH_ETCD)")
	pf.StringVar(&ff.etcdCert, "etcd-cert", "", "client certificate for etcd (default $BERTH_ETCD_CERT)")
	pf.StringVar(&ff.etcdKey, "etcd-key", "", "its key (default $BERTH_ETCD_KEY)")
	pf.StringVar(&ff.etcdCA, "etcd-ca", "", "CA that verifies etcd (default $BERTH_ETCD_CA)")
	pf.StringVar(&ff.etcdUser, "etcd-user", "", "etcd user, password from $BERTH_ETCD_PASSWORD (default $BERTH_ETCD_USER)")
	pf.StringVar(&ff.prefix, "etcd-prefix", "", "key prefix (default $BERTH_ETCD_PREFIX, else "+fleet.DefaultPrefix+")")
	cmd.AddCommand(newFleetDeployCmd(ff), newFleetConfigCmd(ff), newFleetRollbackCmd(ff),
		newFleetStatusCmd(ff), newFleetPlacementCmd(ff))
	return cmd
}

// orEnv returns v, else the environment variable.
func (ff *fleetFlags) orEnv(v, env string) string {
	if v != "" {
		return v
	}
	return ff.g.env.getenv(env)
}

// client connects to etcd.
func (ff *fleetFlags) client() (*fleet.Client, error) {
	endpoints := ff.etcd
	if len(endpoints) == 0 {
		if e := ff.g.env.getenv("BERTH_ETCD"); e != "" {
			endpoints = strings.Split(e, ",")
		}
	}
	if len(endpoints) == 0 {
		return nil, usagef("berth fleet", "no etcd: use --etcd URL,... or set BERTH_ETCD")
	}
	tlsCfg, err := fleet.LoadTLS(ff.orEnv(ff.etcdCert, "BERTH_ETCD_CERT"), ff.orEnv(ff.etcdKey, "BERTH_ETCD_KEY"), ff.orEnv(ff.etcdCA, "BERTH_ETCD_CA"))
	if err != nil {
		return nil, err
	}
	return fleet.NewClient(fleet.ClientConfig{Endpoints: endpoints, TLS: tlsCfg,
		Username: ff.orEnv(ff.etcdUser, "BERTH_ETCD_USER"), Password: ff.g.env.getenv("BERTH_ETCD_PASSWORD"),
		Prefix: ff.orEnv(ff.prefix, "BERTH_ETCD_PREFIX")})
}

// addRolloutFlags gives a command that starts a rollout its flags.
func (ff *fleetFlags) addRolloutFlags(cmd *cobra.Command) {
	cmd.Flags().IntVar(&ff.waveSize, "wave-size", 0, "nodes per wave (default: all nodes in one wave)")
	cmd.Flags().IntVar(&ff.maxUnavailable, "max-unavailable", 0, "nodes switching at once (the same as --wave-size; one of the two)")
	cmd.Flags().BoolVar(&ff.wait, "wait", false, "follow the rollout until it ends; exit 1 if it failed")
}

func (ff *fleetFlags) rolloutOptions(cmd *cobra.Command) (fleet.RolloutOptions, error) {
	if ff.waveSize != 0 && ff.maxUnavailable != 0 {
		return fleet.RolloutOptions{}, usagef(cmd.CommandPath(), "give --wave-size or --max-unavailable, not both")
	}
	return fleet.RolloutOptions{WaveSize: ff.waveSize, MaxUnavailable: ff.maxUnavailable}, nil
}

// rollout starts a rollout with start and reports it (and, with
// --wait, follows it).
func (ff *fleetFlags) rollout(cmd *cobra.Command, app string, start func(context.Context, *fleet.Client, fleet.RolloutOptions) (fleet.Rollout, error)) error {
	o, err := ff.rolloutOptions(cmd)
	if err != nil {
		return err
	}
	c, err := ff.client()
	if err != nil {
		return err
	}
	defer c.Close()
	ro, err := start(cmd.Context(), c, o)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if !ff.wait {
		if ff.g.json {
			return writeJSON(out, ro)
		}
		fmt.Fprintf(out, "%s v%d: rollout started in %d wave(s) %v; the agents drive it (berth fleet status -a %s)\n",
			app, ro.To.Version, len(ro.Waves), ro.Waves, app)
		return nil
	}
	ro, err = followRollout(cmd.Context(), c, app, ro.To.Version)
	if err != nil {
		return err
	}
	if ff.g.json {
		if err := writeJSON(out, ro); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "%s v%d: rollout %s", app, ro.To.Version, ro.State)
		if ro.Reason != "" {
			fmt.Fprintf(out, ": %s", ro.Reason)
		}
		fmt.Fprintln(out)
	}
	if ro.State == fleet.RolloutFailed {
		return fmt.Errorf("rollout of %s v%d failed; the fleet went back to the previous release", app, ro.To.Version)
	}
	return nil
}

// followRollout polls the rollout of version until it ends.
func followRollout(ctx context.Context, c *fleet.Client, app string, version int) (fleet.Rollout, error) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		st, err := c.Status(ctx, app)
		if err != nil {
			return fleet.Rollout{}, err
		}
		if ro := st.Rollout; ro != nil && ro.To.Version == version && ro.State != fleet.RolloutRunning {
			return *ro, nil
		}
		select {
		case <-ctx.Done():
			return fleet.Rollout{}, ctx.Err()
		case <-t.C:
		}
	}
}

func newFleetDeployCmd(ff *fleetFlags) *cobra.Command {
	var via, url string
	cmd := &cobra.Command{
		Use:   "deploy FILE",
		Short: "Upload a tarball to one node and roll it out to the app's nodes in waves",
		Args:  exactArgs(1, "the tarball FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := ff.g.appName(cmd)
			if err != nil {
				return err
			}
			return ff.rollout(cmd, app, func(ctx context.Context, c *fleet.Client, o fleet.RolloutOptions) (fleet.Rollout, error) {
				digest, node, err := ff.upload(ctx, c, app, args[0], via)
				if err != nil {
					return fleet.Rollout{}, err
				}
				return c.Deploy(ctx, app, digest, []string{node}, url, o)
			})
		},
	}
	cmd.Flags().StringVar(&via, "via", "", "the node to upload the tarball to (default: the first node by name)")
	cmd.Flags().StringVar(&url, "url", "", "also a URL any node may download the tarball from (its SHA-256 is checked)")
	cmd.Flags().StringVar(&ff.peerCA, "fleet-ca", "", "CA that verifies the node's build endpoint (default $BERTH_FLEET_CA; none: plain HTTP)")
	ff.addRolloutFlags(cmd)
	return cmd
}

// upload hashes file and sends it to a node's build endpoint; it
// returns the digest and the node.
func (ff *fleetFlags) upload(ctx context.Context, c *fleet.Client, app, file, via string) (string, string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", "", fmt.Errorf("fleet deploy: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", "", fmt.Errorf("fleet deploy: %w", err)
	}
	digest := hex.EncodeToString(h.Sum(nil))
	st, err := c.Status(ctx, app)
	if err != nil {
		return "", "", err
	}
	if ro := st.Rollout; ro != nil && ro.State == fleet.RolloutRunning {
		// Refused before the upload; the transaction that starts the
		// rollout refuses it again if one starts meanwhile.
		return "", "", fmt.Errorf("%w: %s v%d, wave %d of %d", fleet.ErrRolloutRunning, app, ro.To.Version, ro.Wave+1, len(ro.Waves))
	}
	if via == "" {
		for _, name := range slices.Sorted(maps.Keys(st.Nodes)) {
			if st.Nodes[name].Address != "" {
				via = name
				break
			}
		}
	}
	node, ok := st.Nodes[via]
	if !ok || node.Address == "" {
		return "", "", fmt.Errorf("fleet deploy: no node %q with a build endpoint (--fleet-listen) is registered", via)
	}
	peerTLS, err := fleet.LoadTLS("", "", ff.orEnv(ff.peerCA, "BERTH_FLEET_CA"))
	if err != nil {
		return "", "", err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", "", err
	}
	if err := fleet.Upload(ctx, node.Address, peerTLS, ff.g.env.getenv("BERTH_FLEET_TOKEN"), f, digest); err != nil {
		return "", "", err
	}
	return digest, via, nil
}

func newFleetConfigCmd(ff *fleetFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Set or unset the app's config vars fleet-wide (a rollout)", Args: noArgs}
	set := &cobra.Command{
		Use:   "set KEY=VALUE...",
		Short: "Set config vars: a new fleet release, rolled out in waves",
		Args:  minArgs(1, "at least one KEY=VALUE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := ff.g.appName(cmd)
			if err != nil {
				return err
			}
			vars := map[string]string{}
			for _, arg := range args {
				k, v, ok := strings.Cut(arg, "=")
				if !ok {
					return usagef(cmd.CommandPath(), "bad argument %q: want KEY=VALUE", arg)
				}
				if err := state.ValidateEnvName(k); err != nil {
					return usagef(cmd.CommandPath(), "bad argument %q: %v", k, err)
				}
				vars[k] = v
			}
			return ff.rollout(cmd, app, func(ctx context.Context, c *fleet.Client, o fleet.RolloutOptions) (fleet.Rollout, error) {
				return c.SetConfig(ctx, app, vars, nil, o)
			})
		},
	}
	unset := &cobra.Command{
		Use:   "unset KEY...",
		Short: "Unset config vars: a new fleet release, rolled out in waves",
		Args:  minArgs(1, "at least one KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := ff.g.appName(cmd)
			if err != nil {
				return err
			}
			return ff.rollout(cmd, app, func(ctx context.Context, c *fleet.Client, o fleet.RolloutOptions) (fleet.Rollout, error) {
				return c.SetConfig(ctx, app, nil, args, o)
			})
		},
	}
	ff.addRolloutFlags(set)
	ff.addRolloutFlags(unset)
	cmd.AddCommand(set, unset)
	return cmd
}

func newFleetRollbackCmd(ff *fleetFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollback [vN]",
		Short: "Roll out again the build and config of fleet version vN (default: the one before the current)",
		Args:  rangeArgs(0, 1, "at most one fleet version"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := ff.g.appName(cmd)
			if err != nil {
				return err
			}
			v := 0
			if len(args) == 1 {
				if v, err = versionArg(cmd, args[0]); err != nil {
					return err
				}
			}
			return ff.rollout(cmd, app, func(ctx context.Context, c *fleet.Client, o fleet.RolloutOptions) (fleet.Rollout, error) {
				return c.Rollback(ctx, app, v, o)
			})
		},
	}
	ff.addRolloutFlags(cmd)
	return cmd
}

func newFleetPlacementCmd(ff *fleetFlags) *cobra.Command {
	var labels string
	var count int
	cmd := &cobra.Command{
		Use:   "placement",
		Short: "Set which nodes run the app: those with --labels, at most --count (from its next rollout on)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			app, err := ff.g.appName(cmd)
			if err != nil {
				return err
			}
			l, err := parseLabels(labels)
			if err != nil {
				return usagef(cmd.CommandPath(), "%v", err)
			}
			c, err := ff.client()
			if err != nil {
				return err
			}
			defer c.Close()
			return c.SetPlacement(cmd.Context(), app, fleet.Placement{Labels: l, Count: count})
		},
	}
	cmd.Flags().StringVar(&labels, "labels", "", "k=v,...: only nodes with all these labels (default: every node)")
	cmd.Flags().IntVar(&count, "count", 0, "at most this many of them, by name order (default: no limit)")
	return cmd
}

func newFleetStatusCmd(ff *fleetFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the app's fleet release, its rollout and what each node runs",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			app, err := ff.g.appName(cmd)
			if err != nil {
				return err
			}
			c, err := ff.client()
			if err != nil {
				return err
			}
			defer c.Close()
			st, err := c.Status(cmd.Context(), app)
			if err != nil {
				return err
			}
			if ff.g.json {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			return printFleetStatus(cmd.OutOrStdout(), st, ff.g.env.now())
		},
	}
}

// printFleetStatus prints the app's fleet state for people.
func printFleetStatus(out io.Writer, st fleet.AppStatus, now time.Time) error {
	if st.Release == nil {
		fmt.Fprintf(out, "%s: no fleet release\n", st.App)
	} else {
		fmt.Fprintf(out, "%s: v%d, build %s (%s)\n", st.App, st.Release.Version, short(st.Release.Build), st.Release.Description)
	}
	if ro := st.Rollout; ro != nil {
		fmt.Fprintf(out, "rollout of v%d: %s, wave %d of %d, driven by %s, updated %s\n",
			ro.To.Version, ro.State, min(ro.Wave+1, len(ro.Waves)), len(ro.Waves), orDash(ro.Driver), ago(now, ro.Updated))
		if ro.Reason != "" {
			fmt.Fprintf(out, "  reason: %s\n", ro.Reason)
		}
	}
	t := newTable(out, "NODE", "VERSION", "UP", "STATE", "ERROR")
	for _, name := range slices.Sorted(maps.Keys(st.Nodes)) {
		s, ok := st.Statuses[name]
		switch {
		case !ok:
			t.row(name, "-", "-", "not placed", "")
		default:
			state := "running"
			if s.Switching {
				state = "switching"
			}
			errText := ""
			if s.Failed != 0 {
				errText = "v" + strconv.Itoa(s.Failed) + ": " + s.Error
			}
			t.row(name, "v"+strconv.Itoa(s.Version), fmt.Sprintf("%d/%d", s.Healthy, s.Instances), state, errText)
		}
	}
	return t.flush()
}
