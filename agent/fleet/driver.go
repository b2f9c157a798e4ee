package fleet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Driving a rollout: every agent watches the rollouts; for each running
// one it tries the app's rollout lock (an etcd mutex under its lease).
// The holder drives the waves, writing each step with a transaction on
// the rollout record's revision; when it dies its lease ends, the lock
// passes to another agent, which goes on from the recorded wave. The
// rollout thus survives the CLI that started it and any one agent.

// drive starts a driver for each running rollout this node does not
// drive yet and should try to, until ctx ends. Trying the lock writes to
// etcd, so a node tries only when nobody holds it: the preferred driver
// (preferredDriver) at once, any other once it has seen the rollout
// without a lock for a lease's time (its driver died, or the preferred
// node cannot reach etcd).
func (f *Fleet) drive(ctx context.Context, cli *clientv3.Client) {
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(f.cfg.Retry)
	defer t.Stop()
	unlocked := map[string]time.Time{} // app -> since when it has run without a lock
	for {
		changed := f.changed.Wait()
		s, apps := f.toDrive(unlocked)
		for _, app := range apps {
			wg.Go(func() {
				defer func() {
					f.mu.Lock()
					delete(f.driving, app)
					f.mu.Unlock()
				}()
				f.driveApp(ctx, cli, s, app)
			})
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-t.C: // the grace of a lock gone passes without a change
		}
	}
}

// toDrive returns the session and the apps whose rollout lock this node
// should try now, marked as driven; unlocked is drive's own record.
func (f *Fleet) toDrive(unlocked map[string]time.Time) (*concurrency.Session, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.session
	grace := time.Duration(f.cfg.LeaseTTL) * time.Second
	var apps []string
	for app, ro := range f.view.rollouts {
		if ro.State != RolloutRunning || len(f.view.locks[app]) > 0 {
			delete(unlocked, app)
			continue
		}
		if _, ok := unlocked[app]; !ok {
			unlocked[app] = time.Now()
		}
		due := f.view.preferredDriver(app) == f.cfg.Node || time.Since(unlocked[app]) > grace
		if due && s != nil && !f.driving[app] {
			f.driving[app] = true
			apps = append(apps, app)
		}
	}
	for app := range unlocked {
		if ro, ok := f.view.rollouts[app]; !ok || ro.State != RolloutRunning {
			delete(unlocked, app)
		}
	}
	return s, apps
}

// driveApp drives app's rollout if it gets the lock, until the rollout
// ends, the lease is lost or ctx ends.
func (f *Fleet) driveApp(ctx context.Context, cli *clientv3.Client, s *concurrency.Session, app string) {
	m := concurrency.NewMutex(s, f.keys.lock(app))
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := m.TryLock(lctx)
	cancel()
	if err != nil {
		return // another agent drives it, or etcd is unreachable
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = m.Unlock(uctx)
	}()
	// Only the driver watches the app's statuses (watch.go).
	sctx, stopStatuses := context.WithCancel(ctx)
	var statuses sync.WaitGroup
	statuses.Go(func() { f.watchStatuses(sctx, cli, app) })
	defer func() {
		stopStatuses()
		statuses.Wait()
		f.mu.Lock()
		delete(f.view.statuses, app)
		f.mu.Unlock()
	}()
	log := f.log.With("app", app)
	log.Info("driving the rollout")
	for {
		changed := f.changed.Wait()
		done, err := f.step(ctx, cli, m, app)
		if err != nil && ctx.Err() == nil {
			log.Warn("rollout step", "error", err)
		}
		if done {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-s.Done():
			return
		case <-changed:
		case <-time.After(f.cfg.Retry): // the wave's timeout
		}
	}
}

// step moves app's rollout on by one step, from what the view says of
// its nodes; done is true once the rollout is no longer running.
func (f *Fleet) step(ctx context.Context, cli *clientv3.Client, m *concurrency.Mutex, app string) (done bool, err error) {
	ro, rev, err := f.readRollout(ctx, cli, app)
	if err != nil || ro.State != RolloutRunning {
		return err == nil || errors.Is(err, ErrNotFound), err
	}
	if ro.Driver != f.cfg.Node {
		ro.Driver, ro.Updated = f.cfg.Node, time.Now().UTC()
		return false, f.writeRollout(ctx, cli, m, rev, ro, nil)
	}
	if len(ro.Waves) == 0 {
		return true, f.finish(ctx, cli, m, rev, ro)
	}
	if ro.Wave < 0 || ro.Wave >= len(ro.Waves) {
		// Not a record berth wrote: end it rather than guess.
		ro.State, ro.Reason, ro.Updated = RolloutFailed, fmt.Sprintf("bad rollout record: wave %d of %d", ro.Wave+1, len(ro.Waves)), time.Now().UTC()
		return true, f.writeRollout(ctx, cli, m, rev, ro, nil)
	}
	f.mu.Lock()
	statuses, nodes := f.view.statusesOf(app), maps.Clone(f.view.nodes)
	f.mu.Unlock()
	res, reason := CheckWave(ro.Waves[ro.Wave], ro.To.Version, statuses, nodes)
	timeout := f.cfg.WaveTimeout
	if ro.WaveTimeout > 0 {
		timeout = ro.WaveTimeout
	}
	if res == WavePending && time.Since(ro.Updated) > timeout {
		res, reason = WaveFailed, fmt.Sprintf("wave %d of %d not up within %s", ro.Wave+1, len(ro.Waves), timeout)
	}
	switch res {
	case WaveFailed:
		ro.State, ro.Reason, ro.Updated = RolloutFailed, reason, time.Now().UTC()
		f.log.Error("rollout failed; the fleet goes back to the previous release", "app", app, "version", ro.To.Version, "reason", reason)
		return true, f.writeRollout(ctx, cli, m, rev, ro, nil)
	case WaveUp:
		if ro.Wave == len(ro.Waves)-1 {
			return true, f.finish(ctx, cli, m, rev, ro)
		}
		ro.Wave++
		ro.Updated = time.Now().UTC()
		f.log.Info("next wave", "app", app, "wave", ro.Wave+1, "of", len(ro.Waves), "nodes", ro.Waves[ro.Wave])
		return false, f.writeRollout(ctx, cli, m, rev, ro, nil)
	}
	return false, nil
}

// finish makes the rollout's release the app's release.
func (f *Fleet) finish(ctx context.Context, cli *clientv3.Client, m *concurrency.Mutex, rev int64, ro Rollout) error {
	ro.State, ro.Updated = RolloutSucceeded, time.Now().UTC()
	rel, err := encode(ro.To)
	if err != nil {
		return err
	}
	f.log.Info("rollout succeeded", "app", ro.App, "version", ro.To.Version)
	return f.writeRollout(ctx, cli, m, rev, ro, []clientv3.Op{
		clientv3.OpPut(f.keys.release(ro.App), rel),
		clientv3.OpPut(f.keys.history(ro.App, ro.To.Version), rel),
	})
}

func (f *Fleet) readRollout(ctx context.Context, cli *clientv3.Client, app string) (Rollout, int64, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return getRollout(rctx, cli, f.keys, app)
}

// writeRollout writes ro, and ops, if the rollout record is still at
// rev and this node still holds the lock.
func (f *Fleet) writeRollout(ctx context.Context, cli *clientv3.Client, m *concurrency.Mutex, rev int64, ro Rollout, ops []clientv3.Op) error {
	val, err := encodeRollout(ro)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Txn(wctx).
		If(clientv3.Compare(clientv3.ModRevision(f.keys.rollout(ro.App)), "=", rev), m.IsOwner()).
		Then(append([]clientv3.Op{clientv3.OpPut(f.keys.rollout(ro.App), val)}, ops...)...).Commit()
	if err != nil {
		return fmt.Errorf("write rollout of %s: %w", ro.App, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("write rollout of %s: changed meanwhile, or the lock was lost", ro.App)
	}
	return nil
}
