package agent

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/rollout"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/state/build"
	"github.com/berth-dev/berth/supervisor"
)

// specFor turns one instance of a release into what the supervisor runs.
// An instance of a socket-activated type is named after its release
// ("app/web.1@v8"), so the new one can run beside the old one during a
// switch; the caller adds its socket.
func (a *Agent) specFor(cfg Config, app string, rel state.Release, b *build.Build, inst string, who runAs, tmp string) (supervisor.Spec, *instance, error) {
	typ, _ := rollout.SplitInstance(inst)
	command, ok := b.Procfile.Command(typ)
	if !ok {
		return supervisor.Spec{}, nil, fmt.Errorf("%w: process type %q is not in the Procfile of build %s", api.ErrNotFound, typ, shortDigest(b.Digest))
	}
	port, err := a.store.Port(app, inst, cfg.BasePort)
	if err != nil {
		return supervisor.Spec{}, nil, mapErr(fmt.Errorf("allocate port: %w", err))
	}
	pm := b.Manifest.Processes[typ]
	sig, err := parseSignal(pm.StopSignal)
	if err != nil {
		return supervisor.Spec{}, nil, fmt.Errorf("%w: manifest of %s: %w", api.ErrInvalid, typ, err)
	}
	check, err := checkOf(pm.Healthcheck)
	if err != nil {
		return supervisor.Spec{}, nil, fmt.Errorf("%w: manifest of %s: %w", api.ErrInvalid, typ, err)
	}
	stopTimeout := cfg.StopTimeout
	if pm.StopTimeout > 0 {
		stopTimeout = time.Duration(pm.StopTimeout)
	}
	backoff, err := backoffOf(cfg.Backoff, pm.Restart)
	if err != nil {
		return supervisor.Spec{}, nil, fmt.Errorf("%w: manifest of %s: %w", api.ErrInvalid, typ, err)
	}
	name, mode := app+"/"+inst, "bind"
	if pm.SocketActivation {
		name, mode = fmt.Sprintf("%s/%s@v%d", app, inst, rel.Version), "socket"
	}
	steered := a.steerable(typ, pm)
	if steered {
		// Old and new instances of the slot run side by side.
		name = fmt.Sprintf("%s/%s@v%d", app, inst, rel.Version)
	}
	logPath := a.appDir(app, "logs", inst+".log")
	spec := supervisor.Spec{
		Name:    name,
		Command: command,
		Env: processEnv(envParams{Config: rel.Config, App: app, Version: rel.Version, Instance: inst,
			Build: rel.Build, Port: port, TmpDir: tmp, Allow: cfg.AllowEnv}),
		Markers:     processMarkers,
		Dir:         b.Dir,
		Credential:  who.Cred,
		StopSignal:  sig,
		StopTimeout: stopTimeout,
		Backoff:     backoff,
		Limits:      limitsOf(pm.Limits),
		Log: supervisor.LogConfig{
			Path: logPath, MaxSize: cfg.LogMaxSize, MaxFiles: cfg.LogMaxFiles, Tag: logTag(rel.Version),
			// Logs are read from the files; memory keeps what a failed
			// release reports (failureOutput) and what a file could not
			// take. Few lines: each read copies them.
			Memory: logMemory,
			Fields: map[string]string{"BERTH_APP": app, "BERTH_PROCESS": inst, "BERTH_RELEASE": "v" + strconv.Itoa(rel.Version)},
		},
	}
	var st *steerInst
	if steered {
		if st, spec.Env, err = newSteerInst(pm.SocketActivation, pm, spec.Env); err != nil {
			return supervisor.Spec{}, nil, fmt.Errorf("%w: %s: %w", api.ErrUnavailable, inst, err)
		}
		if st.sock != nil {
			spec.ListenFiles = []*os.File{st.sock}
		}
	}
	in := &instance{Name: name, App: app, Instance: inst, Type: typ, Release: rel.Version,
		Build: rel.Build, Port: port, Command: command, Mode: mode, LogPath: logPath, Check: check, spec: spec, steer: st}
	// The supervisor carries the instance: its list is the agent's.
	spec.Meta = in
	a.noteUnenforced(in)
	return spec, in, nil
}

// backoffOf is the restart backoff of a process type: the manifest's
// restart settings over the agent's Config.Backoff, field by field. The
// pair of a manifest value and an agent one (or the supervisor's
// default) is checked here, so a bad mix (backoff_initial 1m with the
// default cap of 30s) fails the deploy before any process is touched.
func backoffOf(agent supervisor.Backoff, r *build.Restart) (supervisor.Backoff, error) {
	if r == nil {
		return agent, nil
	}
	b := agent
	for _, f := range []struct {
		v  build.Duration
		to *time.Duration
	}{{r.MinRun, &b.MinRun}, {r.Settle, &b.Settle}, {r.BackoffInitial, &b.Initial}, {r.BackoffMax, &b.Max}} {
		if f.v > 0 {
			*f.to = time.Duration(f.v)
		}
	}
	if _, err := b.WithDefaults(); err != nil {
		return supervisor.Backoff{}, fmt.Errorf("restart, with the agent's defaults for what it leaves out: %w", err)
	}
	return b, nil
}
