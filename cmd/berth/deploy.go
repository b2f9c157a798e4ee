package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/spf13/cobra"
)

func newDeployCmd(g *globals) *cobra.Command {
	var digest string
	cmd := &cobra.Command{
		Use:   "deploy FILE",
		Short: "Upload a release tarball, release it and wait until its processes run",
		Long: `deploy uploads FILE (.tar, .tar.gz or .tar.zst; "-" for stdin) to the agent, which
unpacks it, records a new release with the app's config, runs the release phase and
restarts the app's processes on it. The app is created on its first deploy. FILE is read
with your own rights and streamed over the socket: the agent opens no file for a client.`,
		Args: exactArgs(1, "the tarball FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := g.appName(cmd)
			if err != nil {
				return err
			}
			req := api.DeployRequest{App: app, Digest: digest, Source: "cli"}
			var size int64 = -1
			var body io.Reader = g.env.stdin
			if file := args[0]; file != "-" {
				// Opened with the caller's own rights, and sent: the
				// agent opens no path on a client's behalf.
				f, err := os.Open(file)
				if err != nil {
					return fmt.Errorf("deploy: %w", err)
				}
				defer f.Close()
				if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
					size = fi.Size()
				}
				body = f
			}
			if g.env.isTTY(g.env.stderr) && !g.json {
				bar := &uploadBar{w: g.env.stderr, r: body, size: size, now: g.env.now}
				defer bar.finish()
				body = bar
			}
			req.Body = body
			return releaseOp(g, cmd.OutOrStdout(), func(progress api.ProgressFunc) (api.Release, error) {
				rel, err := g.client().Deploy(switchContext(cmd), req, progress)
				if err != nil {
					return rel, fmt.Errorf("deploy %s: %w", app, err)
				}
				return rel, nil
			})
		},
	}
	cmd.Flags().StringVar(&digest, "digest", "", "the tarball's expected sha256 (hex); the agent refuses a mismatch")
	addWaitFlag(cmd)
	return cmd
}

// addWaitFlag gives a switch command (deploy, rollback, config set and
// unset) its --wait flag.
func addWaitFlag(cmd *cobra.Command) {
	cmd.Flags().Bool("wait", false, "return only once the probation after the switch is over (by default it returns once the new processes are up, and the agent watches them for the rest of the probation)")
}

// switchContext is the command's context, asking the agent to answer
// only after the probation when --wait is given.
func switchContext(cmd *cobra.Command) context.Context {
	ctx := cmd.Context()
	if wait, _ := cmd.Flags().GetBool("wait"); wait {
		ctx = api.WithProbationWait(ctx)
	}
	return ctx
}

// releaseOp runs a long operation that makes a new active release
// (deploy, rollback, config set and unset): it prints the steps as they
// come, then the release with the time the whole operation took.
func releaseOp(g *globals, out io.Writer, op func(api.ProgressFunc) (api.Release, error)) error {
	start := g.env.now()
	rel, err := op(stepPrinter(g, out))
	if err != nil {
		return err
	}
	if g.json {
		return writeJSON(out, rel)
	}
	fmt.Fprintf(out, "Released %s v%d (build %s, %s) in %s: %s\n", rel.App, rel.Version, short(rel.Build), rel.Status, elapsed(g.env.now().Sub(start)), rel.Description)
	switch rel.Probation {
	case api.ProbationWatching:
		fmt.Fprintf(out, "Its processes are up; probation goes on in the agent, which rolls v%d back if they fail (see `berth events`; --wait waits for it).\n", rel.Version)
	case api.ProbationPassed:
		fmt.Fprintf(out, "Its processes stayed up through the probation.\n")
	}
	return nil
}

// stepPrinter prints the steps of a long operation with their timings
// (nothing with --json).
func stepPrinter(g *globals, out io.Writer) api.ProgressFunc {
	if g.json {
		return nil
	}
	return func(p api.Progress) {
		if p.Step == "done" {
			return // the release line that follows says it
		}
		fmt.Fprintf(out, "  %-14s %7s  %s\n", p.Step, elapsed(p.Elapsed), p.Message)
	}
}

// uploadBar reports upload progress on a terminal, at most every 100ms.
type uploadBar struct {
	w    io.Writer
	r    io.Reader
	size int64
	now  func() time.Time

	mu    sync.Mutex // guards n and last: Read runs on the HTTP transport's goroutine
	n     int64
	last  time.Time
	shown bool
}

func (b *uploadBar) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n += int64(n)
	if now := b.now(); now.Sub(b.last) >= 100*time.Millisecond || err == io.EOF {
		b.last = now
		b.draw()
		if err == io.EOF {
			fmt.Fprintln(b.w)
			b.shown = false
		}
	}
	return n, err
}

func (b *uploadBar) draw() {
	b.shown = true
	if b.size > 0 {
		fmt.Fprintf(b.w, "\rupload  %s / %s  %3d%%", bytesHuman(b.n), bytesHuman(b.size), b.n*100/b.size)
		return
	}
	fmt.Fprintf(b.w, "\rupload  %s", bytesHuman(b.n))
}

func (b *uploadBar) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.shown {
		fmt.Fprintln(b.w)
	}
}
