package fleet

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// watch keeps the view up to date: it lists the prefix, then watches it
// from the next revision. The client resumes a watch after a disconnect
// from the last revision it saw; after a compaction, or when the watch
// ends for another reason, watch lists again.
func (f *Fleet) watch(ctx context.Context, cli *clientv3.Client) {
	for ctx.Err() == nil {
		rev, err := f.list(ctx, cli)
		if err != nil {
			if ctx.Err() == nil {
				f.log.Warn("etcd unreachable; running on", "error", err)
			}
			pause(ctx, f.cfg.Retry)
			continue
		}
		if err := f.follow(ctx, cli, rev+1); err != nil && ctx.Err() == nil {
			f.log.Warn("watch ended; listing again", "error", err)
			pause(ctx, f.cfg.Retry)
		}
	}
}

// list replaces the view with the records under the prefix.
func (f *Fleet) list(ctx context.Context, cli *clientv3.Client) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Get(lctx, f.cfg.Prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", f.cfg.Prefix, err)
	}
	v := newView()
	for _, kv := range resp.Kvs {
		v.apply(f.keys, kv, false)
	}
	v.rev = resp.Header.Revision
	f.mu.Lock()
	f.view = v
	f.mu.Unlock()
	f.changed.notify()
	return v.rev, nil
}

// follow applies the changes from rev on until the watch ends.
func (f *Fleet) follow(ctx context.Context, cli *clientv3.Client, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range cli.Watch(wctx, f.cfg.Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev)) {
		if resp.CompactRevision != 0 {
			return fmt.Errorf("watch from revision %d: compacted up to %d", rev, resp.CompactRevision)
		}
		if err := resp.Err(); err != nil {
			if err == rpctypes.ErrNoLeader {
				return fmt.Errorf("watch: the etcd member lost its leader: %w", err)
			}
			return fmt.Errorf("watch: %w", err)
		}
		f.mu.Lock()
		for _, ev := range resp.Events {
			f.view.apply(f.keys, ev.Kv, ev.Type == clientv3.EventTypeDelete)
		}
		f.view.rev = resp.Header.Revision
		f.mu.Unlock()
		f.changed.notify()
	}
	return ctx.Err()
}
