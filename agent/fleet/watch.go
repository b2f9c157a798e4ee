package fleet

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// What a node watches. Every node watches the desired state: the apps'
// records, the rollout locks and the nodes (apps/, locks/ and nodes/,
// which sort before status/). The statuses of an app's nodes are
// watched only by the node driving its rollout, for as long as it
// drives it: were every node to watch every status, each status write
// would reach every node and a rollout would cost N² events (SCALE.md).

// watch keeps the view of the desired state up to date until ctx ends.
func (f *Fleet) watch(ctx context.Context, cli *clientv3.Client) {
	start, end := f.keys.desired()
	f.watchRange(ctx, cli, start, end, f.installDesired)
}

// watchStatuses keeps the view's statuses of app up to date until ctx
// ends; the driver of app's rollout runs it.
func (f *Fleet) watchStatuses(ctx context.Context, cli *clientv3.Client, app string) {
	start := f.keys.statuses(app)
	f.watchRange(ctx, cli, start, clientv3.GetPrefixRangeEnd(start), func(kvs []*mvccpb.KeyValue) {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.view.statuses, app)
		for _, kv := range kvs {
			f.view.apply(f.keys, kv, false)
		}
	})
}

// installDesired replaces the view's desired state with the records
// listed; the statuses a driver watches stay.
func (f *Fleet) installDesired(kvs []*mvccpb.KeyValue) {
	v := newView()
	for _, kv := range kvs {
		v.apply(f.keys, kv, false)
	}
	f.mu.Lock()
	v.statuses = f.view.statuses
	f.view = v
	f.mu.Unlock()
}

// watchRange lists the keys in [start, end), hands them to install,
// then applies their changes to the view from the next revision on. The
// client resumes a watch after a disconnect from the last revision it
// saw; after a compaction, or when the watch ends for another reason,
// watchRange lists again.
func (f *Fleet) watchRange(ctx context.Context, cli *clientv3.Client, start, end string, install func([]*mvccpb.KeyValue)) {
	for ctx.Err() == nil {
		rev, err := f.list(ctx, cli, start, end, install)
		if err != nil {
			if ctx.Err() == nil {
				f.log.Warn("etcd unreachable; running on", "error", err)
			}
			pause(ctx, f.cfg.Retry)
			continue
		}
		if err := f.follow(ctx, cli, start, end, rev+1); err != nil && ctx.Err() == nil {
			f.log.Warn("watch ended; listing again", "error", err)
			pause(ctx, f.cfg.Retry)
		}
	}
}

// list reads the keys in [start, end) and installs them; it returns the
// revision read.
func (f *Fleet) list(ctx context.Context, cli *clientv3.Client, start, end string, install func([]*mvccpb.KeyValue)) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Get(lctx, start, clientv3.WithRange(end))
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", start, err)
	}
	install(resp.Kvs)
	f.changed.Notify()
	return resp.Header.Revision, nil
}

// follow applies the changes in [start, end) from rev on until the watch
// ends.
func (f *Fleet) follow(ctx context.Context, cli *clientv3.Client, start, end string, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range cli.Watch(wctx, start, clientv3.WithRange(end), clientv3.WithRev(rev)) {
		if resp.CompactRevision != 0 {
			return fmt.Errorf("watch %s from revision %d: compacted up to %d", start, rev, resp.CompactRevision)
		}
		if err := resp.Err(); err != nil {
			if err == rpctypes.ErrNoLeader {
				return fmt.Errorf("watch %s: the etcd member lost its leader: %w", start, err)
			}
			return fmt.Errorf("watch %s: %w", start, err)
		}
		f.mu.Lock()
		for _, ev := range resp.Events {
			f.view.apply(f.keys, ev.Kv, ev.Type == clientv3.EventTypeDelete)
		}
		f.mu.Unlock()
		f.changed.Notify()
	}
	return ctx.Err()
}
