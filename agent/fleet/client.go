package fleet

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"regexp"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Client changes and reads the desired state in etcd: what `berth fleet`
// does. Starting a rollout is one etcd transaction that fails when a
// rollout of the app is running; the agents drive it from there, so the
// client may exit at once.
type Client struct {
	cli  *clientv3.Client
	keys keys
}

// ClientConfig is how a Client reaches etcd; see Config for the fields.
type ClientConfig struct {
	Endpoints          []string
	TLS                *tls.Config
	Username, Password string
	Prefix             string
}

// NewClient returns a client of etcd; Close it.
func NewClient(cfg ClientConfig) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: no etcd endpoints (--etcd)", ErrInvalid)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: cfg.Endpoints, TLS: cfg.TLS,
		Username: cfg.Username, Password: cfg.Password, DialTimeout: 5 * time.Second, Logger: zapLogger()})
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	return &Client{cli: cli, keys: keys{prefix: normPrefix(cfg.Prefix)}}, nil
}

// Close closes the connection to etcd.
func (c *Client) Close() error { return c.cli.Close() }

// RolloutOptions say how a rollout goes.
type RolloutOptions struct {
	// WaveSize is the number of nodes per wave; MaxUnavailable, used
	// when WaveSize is 0, is the number of nodes switching at once
	// (the same thing: a node is unavailable while it switches). Both 0:
	// one wave of every node.
	WaveSize, MaxUnavailable int
	// WaveTimeout is how long a wave may take before the rollout fails
	// (0: the driving agent's default, 15 minutes).
	WaveTimeout time.Duration
}

func (o RolloutOptions) size() (int, error) {
	if o.WaveSize < 0 || o.MaxUnavailable < 0 || o.WaveTimeout < 0 {
		return 0, fmt.Errorf("%w: wave size, max unavailable and wave timeout must not be negative", ErrInvalid)
	}
	if o.WaveSize > 0 {
		return o.WaveSize, nil
	}
	return o.MaxUnavailable, nil
}

var appRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`) })

// ValidateApp refuses a bad app name (the agent's rules).
func ValidateApp(app string) error {
	if !appRE().MatchString(app) {
		return fmt.Errorf("%w: app name %q: want a lower-case letter, then letters, digits or '-' (at most 63)", ErrInvalid, app)
	}
	return nil
}

// Deploy starts a rollout of build (a digest the nodes named in sources
// have, or url serves) with the app's current config and formation.
func (c *Client) Deploy(ctx context.Context, app, build string, sources []string, url string, o RolloutOptions) (Rollout, error) {
	if err := ValidateDigest(build); err != nil {
		return Rollout{}, err
	}
	return c.start(ctx, app, o, func(prev *Release) (Release, error) {
		next := Release{Build: build, Sources: sources, URL: url, Description: "Deploy " + short(build)}
		if prev != nil {
			next.Config, next.Formation = maps.Clone(prev.Config), maps.Clone(prev.Formation)
		}
		return next, nil
	})
}

// SetConfig starts a rollout of the app's build with config vars set
// and unset.
func (c *Client) SetConfig(ctx context.Context, app string, set map[string]string, unset []string, o RolloutOptions) (Rollout, error) {
	if len(set) == 0 && len(unset) == 0 {
		return Rollout{}, fmt.Errorf("%w: config: nothing to set or unset", ErrInvalid)
	}
	return c.start(ctx, app, o, func(prev *Release) (Release, error) {
		if prev == nil {
			return Release{}, fmt.Errorf("%w: %s has no fleet release yet: deploy first", ErrNotFound, app)
		}
		next := *prev
		next.Config = maps.Clone(prev.Config)
		if next.Config == nil {
			next.Config = map[string]string{}
		}
		maps.Copy(next.Config, set)
		for _, k := range unset {
			delete(next.Config, k)
		}
		next.Description = "Config change"
		return next, nil
	})
}

// Rollback starts a rollout of the build and config of fleet version
// (0: the release before the app's current one).
func (c *Client) Rollback(ctx context.Context, app string, version int, o RolloutOptions) (Rollout, error) {
	return c.start(ctx, app, o, func(prev *Release) (Release, error) {
		if prev == nil {
			return Release{}, fmt.Errorf("%w: %s has no fleet release", ErrNotFound, app)
		}
		target, err := c.historic(ctx, app, prev.Version, version)
		if err != nil {
			return Release{}, err
		}
		target.Description = fmt.Sprintf("Rollback to v%d", target.Version)
		return target, nil
	})
}

// historic returns fleet version v of app (0: the newest before cur).
func (c *Client) historic(ctx context.Context, app string, cur, v int) (Release, error) {
	resp, err := c.cli.Get(ctx, c.keys.prefix+"apps/"+app+"/releases/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	if err != nil {
		return Release{}, fmt.Errorf("rollback %s: %w", app, err)
	}
	for _, kv := range resp.Kvs {
		var r Release
		if json.Unmarshal(kv.Value, &r) == nil && ((v == 0 && r.Version < cur) || (v != 0 && r.Version == v)) {
			return r, nil
		}
	}
	if v == 0 {
		return Release{}, fmt.Errorf("%w: %s: no release before v%d", ErrNotFound, app, cur)
	}
	return Release{}, fmt.Errorf("%w: %s v%d", ErrNotFound, app, v)
}

// start plans a rollout of the release change makes of the app's
// current one and records it, in one transaction that fails if a
// rollout is running or the app's release changed meanwhile.
func (c *Client) start(ctx context.Context, app string, o RolloutOptions, change func(prev *Release) (Release, error)) (Rollout, error) {
	if err := ValidateApp(app); err != nil {
		return Rollout{}, err
	}
	size, err := o.size()
	if err != nil {
		return Rollout{}, err
	}
	st, err := c.Status(ctx, app)
	if err != nil {
		return Rollout{}, err
	}
	if st.Rollout != nil && st.Rollout.State == RolloutRunning {
		return Rollout{}, fmt.Errorf("%w: %s v%d, wave %d of %d", ErrRolloutRunning, app, st.Rollout.To.Version, st.Rollout.Wave+1, len(st.Rollout.Waves))
	}
	next, err := change(st.Release)
	if err != nil {
		return Rollout{}, err
	}
	next.App, next.CreatedAt = app, time.Now().UTC()
	next.Version = 1
	ro := Rollout{App: app, To: next, State: RolloutRunning, Started: next.CreatedAt, Updated: next.CreatedAt,
		Waves: Waves(Placed(st.Placement, st.Nodes), size), WaveTimeout: o.WaveTimeout}
	if st.Release != nil {
		ro.From = st.Release.Version
		next.Version = st.Release.Version + 1
	}
	if st.Rollout != nil {
		next.Version = max(next.Version, st.Rollout.To.Version+1)
	}
	ro.To = next
	val, err := encodeRollout(ro)
	if err != nil {
		return Rollout{}, err
	}
	plan, err := encode(rolloutPlan{Version: next.Version, Waves: ro.Waves})
	if err != nil {
		return Rollout{}, err
	}
	resp, err := c.cli.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(c.keys.rollout(app)), "=", st.rolloutRev),
		clientv3.Compare(clientv3.ModRevision(c.keys.release(app)), "=", st.releaseRev),
	).Then(clientv3.OpPut(c.keys.plan(app), plan), clientv3.OpPut(c.keys.rollout(app), val)).Commit()
	if err != nil {
		return Rollout{}, fmt.Errorf("start rollout of %s: %w", app, err)
	}
	if !resp.Succeeded {
		return Rollout{}, fmt.Errorf("%w: %s (another rollout started meanwhile)", ErrRolloutRunning, app)
	}
	return ro, nil
}

// AppStatus is an app's desired state and what its nodes report.
type AppStatus struct {
	App       string              `json:"app"`
	Release   *Release            `json:"release,omitempty"`
	Placement Placement           `json:"placement"`
	Rollout   *Rollout            `json:"rollout,omitempty"`
	Nodes     map[string]NodeInfo `json:"nodes"`
	Statuses  map[string]Status   `json:"statuses"`

	rolloutRev, releaseRev int64
}

// Status reads the app's records, its statuses and the nodes at one
// revision: not the other apps' records (at 10,000 nodes each app's
// statuses are about 1.4 MB).
func (c *Client) Status(ctx context.Context, app string) (AppStatus, error) {
	if err := ValidateApp(app); err != nil {
		return AppStatus{}, err
	}
	resp, err := c.cli.Txn(ctx).Then(
		clientv3.OpGet(c.keys.release(app)), clientv3.OpGet(c.keys.placement(app)),
		clientv3.OpGet(c.keys.rollout(app)), clientv3.OpGet(c.keys.plan(app)),
		clientv3.OpGet(c.keys.node(""), clientv3.WithPrefix()),
		clientv3.OpGet(c.keys.statuses(app), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return AppStatus{}, fmt.Errorf("read the fleet's state: %w", err)
	}
	var kvs []*mvccpb.KeyValue
	for _, r := range resp.Responses {
		kvs = append(kvs, r.GetResponseRange().Kvs...)
	}
	v := newView()
	st := AppStatus{App: app}
	for _, kv := range kvs {
		v.apply(c.keys, kv, false)
		switch string(kv.Key) {
		case c.keys.rollout(app):
			st.rolloutRev = kv.ModRevision
		case c.keys.release(app):
			st.releaseRev = kv.ModRevision
		}
	}
	if r, ok := v.releases[app]; ok {
		st.Release = &r
	}
	if r, ok := v.rollouts[app]; ok {
		st.Rollout = &r
	}
	st.Placement, st.Nodes, st.Statuses = v.placements[app], v.nodes, v.statusesOf(app)
	if st.Statuses == nil {
		st.Statuses = map[string]Status{}
	}
	return st, nil
}

// SetPlacement sets which nodes run the app from its next rollout on.
func (c *Client) SetPlacement(ctx context.Context, app string, p Placement) error {
	if err := ValidateApp(app); err != nil {
		return err
	}
	if p.Count < 0 {
		return fmt.Errorf("%w: placement count %d: must not be negative", ErrInvalid, p.Count)
	}
	val, err := encode(p)
	if err != nil {
		return err
	}
	if _, err := c.cli.Put(ctx, c.keys.placement(app), val); err != nil {
		return fmt.Errorf("set placement of %s: %w", app, err)
	}
	return nil
}

// getRollout reads app's rollout, with its plan, and the rollout
// record's mod revision, at one revision.
func getRollout(ctx context.Context, cli *clientv3.Client, k keys, app string) (Rollout, int64, error) {
	resp, err := cli.Txn(ctx).Then(clientv3.OpGet(k.rollout(app)), clientv3.OpGet(k.plan(app))).Commit()
	if err != nil {
		return Rollout{}, 0, fmt.Errorf("read rollout of %s: %w", app, err)
	}
	rkvs, pkvs := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	if len(rkvs) == 0 {
		return Rollout{}, 0, fmt.Errorf("%w: rollout of %s", ErrNotFound, app)
	}
	var ro Rollout
	if err := json.Unmarshal(rkvs[0].Value, &ro); err != nil {
		return Rollout{}, 0, fmt.Errorf("read rollout of %s: %w", app, err)
	}
	var p rolloutPlan
	ok := len(pkvs) > 0 && json.Unmarshal(pkvs[0].Value, &p) == nil
	return withPlan(ro, p, ok), rkvs[0].ModRevision, nil
}

// Upload sends a tarball to a node's build endpoint (PUT), which keeps
// it, verified, for the other nodes. peerTLS verifies the node (nil:
// plain HTTP); token is the fleet's build token.
func Upload(ctx context.Context, addr string, peerTLS *tls.Config, token string, body io.Reader, digest string) error {
	if err := ValidateDigest(digest); err != nil {
		return err
	}
	scheme, tr := "http", &http.Transport{}
	if peerTLS != nil {
		scheme, tr.TLSClientConfig = "https", peerTLS
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, scheme+"://"+addr+"/v1/builds/"+digest, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("upload build to %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("upload build to %s: %s: %s", addr, resp.Status, msg)
	}
	return nil
}

// Revision returns etcd's current revision (each write adds one).
func (c *Client) Revision(ctx context.Context) (int64, error) {
	resp, err := c.cli.Get(ctx, c.keys.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("read etcd's revision: %w", err)
	}
	return resp.Header.Revision, nil
}

// Nodes returns the registered nodes (those whose lease is alive), by
// name.
func (c *Client) Nodes(ctx context.Context) (map[string]NodeInfo, error) {
	resp, err := c.cli.Get(ctx, c.keys.prefix+"nodes/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read the fleet's nodes: %w", err)
	}
	v := newView()
	for _, kv := range resp.Kvs {
		v.apply(c.keys, kv, false)
	}
	return v.nodes, nil
}
