package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/supervisor"
)

// A one-off command (`berth run -a APP -- CMD...`) runs once in the
// app's active release: in its build dir, with its environment (the
// release's config and BERTH_* as an instance has them, without PORT,
// BERTH_PROCESS=run.N) and as its user, like the release phase. Its
// output streams to the client, its exit is the client's exit code. It
// is never part of the formation and never restarted; ps lists it as
// run.N (mode one-off) while it runs, from the supervisor's list of
// one-offs. When the client goes away it gets the stop signal (SIGTERM,
// SIGKILL after the stop timeout). It takes no app lock: a deploy may
// switch the app meanwhile and the command runs on in the release it
// started in. It takes the app's lock only until it has started, so it
// waits for a change in progress, and a destroy stops it (and waits for
// it to end) before the app's uid is freed.

// oneOff is what the agent knows of a running one-off command; it is
// the supervisor spec's Meta, fixed at the start.
type oneOff struct {
	App      string
	Instance string // run.1
	Release  int
	Command  string

	stop func()        // ends the command's context
	done chan struct{} // closed once RunAttached returned
}

// oneOffName is the supervisor name of one-off n of app.
func oneOffName(app string, n int) string { return fmt.Sprintf("%s/run.%d@one-off", app, n) }

// OneOff runs a one-off command; see api.OneOffBackend.
func (a *Agent) OneOff(ctx context.Context, app string, req api.RunRequest, started func(api.RunStarted), stdout, stderr io.Writer) (api.RunExit, error) {
	check := func() error { return api.CheckRunCommand(req.Command) }
	return do(a, ctx, opts{app: app, exists: true, check: check}, func(ctx context.Context) (api.RunExit, error) {
		return a.oneOff(ctx, app, req.Command, started, stdout, stderr)
	})
}

func (a *Agent) oneOff(ctx context.Context, app string, argv []string, started func(api.RunStarted), stdout, stderr io.Writer) (api.RunExit, error) {
	unlock, err := a.lockApp(ctx, app)
	if err != nil {
		return api.RunExit{}, err
	}
	var once sync.Once
	release := func() { once.Do(unlock) }
	defer release()
	rel, b, err := a.activeBuild(app)
	if errors.Is(err, state.ErrNoActiveRelease) {
		return api.RunExit{}, fmt.Errorf("%w: run on %s: nothing is deployed yet", api.ErrConflict, app)
	} else if err != nil {
		return api.RunExit{}, err
	}
	cfg := a.config()
	who, tmp, err := a.prepare(cfg, app, b)
	if err != nil {
		return api.RunExit{}, err
	}
	// A client that stops reading (its writes fail) is gone: stop the
	// command as when it disconnects.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stdout, stderr = cancelOnError(stdout, cancel), cancelOnError(stderr, cancel)
	// sh execs the program: its exit, or the signal that killed it, is
	// the command's own.
	command := "exec " + shellQuote(argv)
	for n := 1; ; n++ {
		inst := "run." + strconv.Itoa(n)
		meta := &oneOff{App: app, Instance: inst, Release: rel.Version, Command: shellQuote(argv), stop: cancel, done: make(chan struct{})}
		spec := supervisor.Spec{
			Name:    oneOffName(app, n),
			Command: command,
			Env: processEnv(envParams{Config: rel.Config, App: app, Version: rel.Version, Instance: inst,
				Build: rel.Build, TmpDir: tmp, Allow: cfg.AllowEnv}),
			Markers:     processMarkers,
			Dir:         b.Dir,
			Credential:  who.Cred,
			StopTimeout: cfg.StopTimeout,
			Meta:        meta,
		}
		a.log.Info("one-off command", "app", app, "instance", inst, "release", rel.Version)
		exit, err := a.sup.RunAttached(ctx, spec, stdout, stderr, func(pid int) {
			release()
			if started != nil {
				started(api.RunStarted{Instance: inst, PID: pid, Release: rel.Version})
			}
		})
		close(meta.done)
		if errors.Is(err, supervisor.ErrExists) {
			continue // run.n runs already: take the next number
		}
		if err != nil && exit.Time.IsZero() {
			return api.RunExit{}, fmt.Errorf("run on %s: %w", app, err)
		}
		if err != nil {
			a.log.Info("one-off command stopped", "app", app, "instance", inst, "reason", err, "exit", exit.String())
			return api.RunExit{}, fmt.Errorf("run on %s: %s stopped (%s): %w", app, inst, exit, err)
		}
		a.log.Info("one-off command ended", "app", app, "instance", inst, "exit", exit.String())
		return api.RunExit{Code: exit.Code, Signal: int(exit.Signal), Status: exit.String()}, nil
	}
}

// cancelOnError returns w, calling cancel on its first failed write.
func cancelOnError(w io.Writer, cancel func()) io.Writer {
	if w == nil {
		return io.Discard
	}
	return writerFunc(func(p []byte) (int, error) {
		n, err := w.Write(p)
		if err != nil {
			cancel()
		}
		return n, err
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// shellQuote joins argv into a command that /bin/sh runs as exactly
// that argv: words that are not plain are single-quoted.
func shellQuote(argv []string) string {
	parts := make([]string, len(argv))
	for i, w := range argv {
		if w != "" && strings.IndexFunc(w, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-./:,+%@", r))
		}) < 0 {
			parts[i] = w
			continue
		}
		parts[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(parts, " ")
}

// stopOneOffs stops the app's one-off commands and waits until they
// have ended. The caller holds the app's lock, so no new one starts.
func (a *Agent) stopOneOffs(app string) int {
	var runs []*oneOff
	for _, st := range a.sup.OneOffs() {
		if o, ok := st.Meta.(*oneOff); ok && o.App == app {
			o.stop()
			runs = append(runs, o)
		}
	}
	for _, o := range runs {
		<-o.done
	}
	return len(runs)
}

// oneOffProcesses lists the app's running one-off commands (all apps'
// for ""), as ps shows them.
func (a *Agent) oneOffProcesses(app string) []api.Process {
	var out []api.Process
	for _, st := range a.sup.OneOffs() {
		o, ok := st.Meta.(*oneOff)
		if !ok || (app != "" && o.App != app) {
			continue
		}
		out = append(out, api.Process{App: o.App, Instance: o.Instance, Type: "run", State: st.State.String(),
			PID: st.PID, Release: o.Release, StartedAt: st.StartedAt, Mode: "one-off", Command: o.Command})
	}
	return out
}
