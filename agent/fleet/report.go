package fleet

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Reporting: the node writes a Status per app it should run under its
// lease, after every change and every StatusInterval, and only when it
// changed (Updated aside). The status of an app the node is no longer
// placed for is deleted once the node does not run it (stopped, or not
// a fleet app), so `fleet status` and the waves of a rollout no longer
// count the node. A node whose lease ends loses its statuses with its
// presence.

func (f *Fleet) report(ctx context.Context, cli *clientv3.Client) {
	t := time.NewTicker(f.cfg.StatusInterval)
	defer t.Stop()
	for {
		changed := f.changed.Wait()
		f.reportOnce(ctx, cli)
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C:
		}
	}
}

func (f *Fleet) reportOnce(ctx context.Context, cli *clientv3.Client) {
	f.mu.Lock()
	s := f.session
	var apps []string
	targeted := map[string]bool{}
	for _, app := range f.view.apps() {
		if _, ok := f.view.target(f.cfg.Node, app); ok {
			apps = append(apps, app)
			targeted[app] = true
		}
	}
	// The statuses written under this session of apps not targeted any
	// more, unless being converged (a stop in flight).
	var gone []string
	for key := range f.written {
		if kind, app, node := f.keys.parse(key); kind == "status" && node == f.cfg.Node && !targeted[app] && !f.busy[app] {
			gone = append(gone, app)
		}
	}
	f.mu.Unlock()
	if s == nil {
		return
	}
	for _, app := range gone {
		if ls, err := f.node.AppStatus(ctx, app); err != nil || (ls.Version > 0 && !ls.Stopped) {
			continue // still runs it: the status stays until it is stopped
		}
		key := f.keys.status(app, f.cfg.Node)
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := cli.Delete(pctx, key)
		cancel()
		if err != nil {
			return // etcd unreachable: the next change or tick tries again
		}
		f.mu.Lock()
		if f.session == s {
			delete(f.written, key)
		}
		f.mu.Unlock()
	}
	for _, app := range apps {
		st := f.status(ctx, app)
		key := f.keys.status(app, f.cfg.Node)
		cmp := st
		cmp.Updated = time.Time{}
		sig, _ := encode(cmp)
		f.mu.Lock()
		same := f.written[key] == sig
		f.mu.Unlock()
		if same {
			continue
		}
		st.Updated = time.Now().UTC()
		val, err := encode(st)
		if err != nil {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = cli.Put(pctx, key, val, clientv3.WithLease(s.Lease()))
		cancel()
		if err != nil {
			return // etcd unreachable: the next change or tick tries again
		}
		f.mu.Lock()
		if f.session == s {
			f.written[key] = sig
		}
		f.mu.Unlock()
	}
}

// status is the node's status for app now.
func (f *Fleet) status(ctx context.Context, app string) Status {
	st := Status{App: app, Node: f.cfg.Node}
	ls, err := f.node.AppStatus(ctx, app)
	if err == nil {
		st.Version, st.Healthy, st.Instances = ls.Version, ls.Healthy, ls.Instances
		st.Failed, st.Error = ls.Failed, ls.Reason
	}
	// After AppStatus: a switch that began since is then seen as one.
	f.mu.Lock()
	st.Switching = f.busy[app]
	if fl, ok := f.failed[app]; ok {
		st.Failed, st.Error = fl.version, fl.err
	}
	if e, ok := f.fetchErr[app]; ok {
		st.Error = e
	}
	f.mu.Unlock()
	return st
}
