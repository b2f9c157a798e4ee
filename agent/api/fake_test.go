package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"
)

// fakeBackend is an in-memory Backend: the test double at the package
// boundary. It keeps apps, releases and config like the agent would, but
// runs nothing.
type fakeBackend struct {
	mu       sync.Mutex
	apps     map[string]*App
	releases map[string][]Release // oldest first
	config   map[string]map[string]string
	restarts []string
	logs     []LogLine
	events   []Event
	// failDeployAfterProgress makes Deploy fail after its first progress
	// message, as a failing release phase would.
	failDeployAfterProgress error
	// live receives lines and events for the follow methods.
	liveLogs   chan LogLine
	liveEvents chan Event
	following  chan struct{} // receives when a follow method starts
	uploaded   []byte
}

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func newFake() *fakeBackend {
	return &fakeBackend{
		apps:       map[string]*App{},
		releases:   map[string][]Release{},
		config:     map[string]map[string]string{},
		liveLogs:   make(chan LogLine),
		liveEvents: make(chan Event),
		following:  make(chan struct{}, 4),
	}
}

func (f *fakeBackend) Info(context.Context) (AgentInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return AgentInfo{PID: os.Getpid(), DataDir: "/var/lib/berth", StartedAt: t0, Apps: len(f.apps)}, nil
}

func (f *fakeBackend) Apps(context.Context) ([]App, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []App
	for _, a := range f.apps {
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (f *fakeBackend) app(name string) (*App, error) {
	a, ok := f.apps[name]
	if !ok {
		return nil, fmt.Errorf("%w: app %q", ErrNotFound, name)
	}
	return a, nil
}

func (f *fakeBackend) CreateApp(_ context.Context, name string) (App, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name == "BAD" {
		return App{}, fmt.Errorf("%w: app name %q: want lowercase letters, digits and dashes", ErrInvalid, name)
	}
	if _, ok := f.apps[name]; ok {
		return App{}, fmt.Errorf("%w: app %q exists", ErrConflict, name)
	}
	a := &App{Name: name, CreatedAt: t0, Formation: map[string]int{}}
	f.apps[name] = a
	return *a, nil
}

func (f *fakeBackend) DestroyApp(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.app(name); err != nil {
		return err
	}
	delete(f.apps, name)
	return nil
}

func (f *fakeBackend) SetAppUser(_ context.Context, name, user string) (App, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, err := f.app(name)
	if err != nil {
		return App{}, err
	}
	a.User = user
	return *a, nil
}

func (f *fakeBackend) activate(app string, rel Release, progress ProgressFunc) Release {
	rels := f.releases[app]
	for i := range rels {
		if rels[i].Status == "active" {
			rels[i].Status = "superseded"
		}
	}
	rel.App, rel.Version, rel.Status, rel.CreatedAt = app, len(rels)+1, "active", t0
	rel.ConfigKeys = []string{}
	for k := range rel.Config {
		rel.ConfigKeys = append(rel.ConfigKeys, k)
	}
	sort.Strings(rel.ConfigKeys)
	f.releases[app] = append(rels, rel)
	f.config[app] = rel.Config
	f.apps[app].ActiveRelease = rel.Version
	progress(Progress{Step: "start", Message: "web.1 running", Elapsed: time.Millisecond})
	return rel
}

func (f *fakeBackend) Deploy(ctx context.Context, req DeployRequest, progress ProgressFunc) (Release, error) {
	h := sha256.New()
	b, err := io.ReadAll(io.TeeReader(req.Body, h))
	if err != nil {
		return Release{}, fmt.Errorf("deploy %s: read upload: %w", req.App, err)
	}
	f.mu.Lock()
	f.uploaded = b
	f.mu.Unlock()
	digest := hex.EncodeToString(h.Sum(nil))
	if req.Digest != "" && req.Digest != digest {
		return Release{}, fmt.Errorf("%w: digest mismatch: got %s, want %s", ErrConflict, digest, req.Digest)
	}
	progress(Progress{Step: "upload", Message: "received", Elapsed: 2 * time.Millisecond})
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failDeployAfterProgress; err != nil {
		return Release{}, err
	}
	if _, ok := f.apps[req.App]; !ok {
		f.apps[req.App] = &App{Name: req.App, CreatedAt: t0, Formation: map[string]int{"web": 1}}
	}
	return f.activate(req.App, Release{Build: digest, Description: "deploy from " + req.Source, Config: f.config[req.App]}, progress), nil
}

func (f *fakeBackend) Releases(_ context.Context, app string) ([]Release, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.app(app); err != nil {
		return nil, err
	}
	var out []Release
	for i := len(f.releases[app]) - 1; i >= 0; i-- {
		r := f.releases[app][i]
		r.Config = nil
		out = append(out, r)
	}
	return out, nil
}

func (f *fakeBackend) Release(_ context.Context, app string, version int) (Release, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.app(app); err != nil {
		return Release{}, err
	}
	rels := f.releases[app]
	if version < 1 || version > len(rels) {
		return Release{}, fmt.Errorf("%w: release v%d of %s", ErrNotFound, version, app)
	}
	return rels[version-1], nil
}

func (f *fakeBackend) Rollback(_ context.Context, app string, version int, progress ProgressFunc) (Release, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, err := f.app(app)
	if err != nil {
		return Release{}, err
	}
	if version == 0 {
		version = a.ActiveRelease - 1
	}
	rels := f.releases[app]
	if version < 1 || version > len(rels) {
		return Release{}, fmt.Errorf("%w: release v%d of %s", ErrNotFound, version, app)
	}
	old := rels[version-1]
	return f.activate(app, Release{Build: old.Build, Config: old.Config, Description: fmt.Sprintf("rollback to v%d", version)}, progress), nil
}

func (f *fakeBackend) Config(_ context.Context, app string) (map[string]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.app(app); err != nil {
		return nil, err
	}
	return f.config[app], nil
}

func (f *fakeBackend) SetConfig(_ context.Context, app string, change ConfigChange, progress ProgressFunc) (Release, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, err := f.app(app)
	if err != nil {
		return Release{}, err
	}
	if a.ActiveRelease == 0 {
		return Release{}, fmt.Errorf("%w: app %s has no release yet", ErrConflict, app)
	}
	cfg := map[string]string{}
	for k, v := range f.config[app] {
		cfg[k] = v
	}
	for k, v := range change.Set {
		cfg[k] = v
	}
	for _, k := range change.Unset {
		delete(cfg, k)
	}
	cur := f.releases[app][a.ActiveRelease-1]
	return f.activate(app, Release{Build: cur.Build, Config: cfg, Description: "config change"}, progress), nil
}

func (f *fakeBackend) Scale(_ context.Context, app string, formation map[string]int) ([]Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, err := f.app(app)
	if err != nil {
		return nil, err
	}
	for typ, n := range formation {
		if typ != "web" && typ != "worker" {
			return nil, fmt.Errorf("%w: process type %q", ErrNotFound, typ)
		}
		a.Formation[typ] = n
	}
	return f.procs(app), nil
}

func (f *fakeBackend) procs(app string) []Process {
	var out []Process
	types := make([]string, 0, len(f.apps[app].Formation))
	for t := range f.apps[app].Formation {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		for i := 1; i <= f.apps[app].Formation[t]; i++ {
			out = append(out, Process{App: app, Instance: fmt.Sprintf("%s.%d", t, i), Type: t, State: "running",
				PID: 1000 + i, Release: f.apps[app].ActiveRelease, Port: 5000 + i, StartedAt: t0, Mode: "bind", Command: "sleep 1000"})
		}
	}
	return out
}

func (f *fakeBackend) Processes(_ context.Context, app string) ([]Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if app != "" {
		if _, err := f.app(app); err != nil {
			return nil, err
		}
		return f.procs(app), nil
	}
	var out []Process
	for name := range f.apps {
		out = append(out, f.procs(name)...)
	}
	return out, nil
}

func (f *fakeBackend) Restart(_ context.Context, app, target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.app(app); err != nil {
		return err
	}
	if target == "nope" {
		return fmt.Errorf("%w: no process %q in %s", ErrNotFound, target, app)
	}
	f.restarts = append(f.restarts, app+"/"+target)
	return nil
}

func (f *fakeBackend) Logs(_ context.Context, app string, q LogQuery) ([]LogLine, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.app(app); err != nil {
		return nil, err
	}
	var out []LogLine
	for _, l := range f.logs {
		if l.App == app && (q.Instance == "" || l.Instance == q.Instance) && (q.Release == 0 || l.Release == q.Release) &&
			!l.Time.Before(q.Since) {
			out = append(out, l)
		}
	}
	if q.N > 0 && len(out) > q.N {
		out = out[len(out)-q.N:]
	}
	return out, nil
}

func (f *fakeBackend) FollowLogs(ctx context.Context, app string, q LogQuery, send func(LogLine) error) error {
	var stored []LogLine
	if q.N > 0 || !q.Since.IsZero() {
		var err error
		if stored, err = f.Logs(ctx, app, q); err != nil {
			return err
		}
	}
	FollowStarted(ctx)
	for _, l := range stored {
		if err := send(l); err != nil {
			return err
		}
	}
	f.following <- struct{}{}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case l, ok := <-f.liveLogs:
			if !ok {
				return fmt.Errorf("%w: log stream of %s ended", ErrUnavailable, app)
			}
			if q.Instance != "" && l.Instance != q.Instance {
				continue
			}
			if err := send(l); err != nil {
				return err
			}
		}
	}
}

func (f *fakeBackend) Events(_ context.Context, app string, since uint64, limit int) ([]Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Event
	for _, e := range f.events {
		if e.Seq > since && (app == "" || e.App == app) {
			out = append(out, e)
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

func (f *fakeBackend) FollowEvents(ctx context.Context, app string, since uint64, send func(Event) error) error {
	f.following <- struct{}{}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-f.liveEvents:
			if e.Seq <= since || (app != "" && e.App != app) {
				continue
			}
			if err := send(e); err != nil {
				return err
			}
		}
	}
}
