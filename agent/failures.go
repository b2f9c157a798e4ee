package agent

// Unrecorded failures: a release that failed when the store could not
// record it (a full disk, an I/O error) must not read pending for as long
// as the agent runs, nor "interrupted" after a restart. The agent marks
// it failed through markFailed, which retries the write; if the store
// still cannot write, the cause is kept
//
//   - in memory: Releases and Release show the release failed with it,
//     and the main loop retries the write every unrecordedRetry (and
//     shutdown once more), so it is recorded as soon as space is back;
//   - in $DATA/unrecorded-failures, a file of unrecordedSize bytes
//     written in full (allocated) at start while there is space, and
//     overwritten in place later: on a full disk such a write needs no
//     new block on tmpfs, ext4 and xfs (a copy-on-write filesystem such
//     as btrfs or ZFS may still refuse it). The next agent reads it at
//     start and marks those releases failed with their cause rather
//     than as interrupted (failInterrupted).
//
// A release is pending from its creation to its activation; whatever
// fails in between fails it through markFailed.

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
)

const (
	// unrecordedSize is the size of the pre-allocated cause file.
	unrecordedSize = 64 << 10
	// unrecordedRetry is how often the main loop retries to record the
	// failures the store refused, while there are any (no timer runs
	// otherwise: an idle agent does not wake up for them).
	unrecordedRetry = 2 * time.Second
	// maxUnrecordedReason bounds a reason kept in the cause file.
	maxUnrecordedReason = 1 << 10
)

// relKey names a release.
type relKey struct {
	App     string `json:"app"`
	Version int    `json:"version"`
}

// unrecordedFailure is a failure the store could not record yet.
type unrecordedFailure struct {
	relKey
	Reason string `json:"reason"`
	Output string `json:"-"` // memory only
}

// unrecorded holds the failures the store could not record, and the
// pre-allocated file they are kept in for the next agent.
type unrecorded struct {
	mu   sync.Mutex // guards m and f
	m    map[relKey]unrecordedFailure
	f    *os.File // nil when it could not be made
	path string
}

// openUnrecorded reads what a previous agent left in the cause file and
// makes the file this agent writes to: unrecordedSize bytes, written in
// full and synced so that later writes over them need no new space.
// Called by Run before failInterrupted. Failing to make the file is
// logged: causes are then kept in memory only.
func (a *Agent) openUnrecorded(path string) map[relKey]string {
	u := &a.unrec
	u.mu.Lock()
	defer u.mu.Unlock()
	u.path = path
	u.m = map[relKey]unrecordedFailure{}
	prev := map[relKey]string{}
	if b, err := os.ReadFile(path); err == nil {
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		for {
			var f unrecordedFailure
			if err := dec.Decode(&f); err != nil {
				if err != io.EOF {
					a.log.Warn("read the causes of unrecorded failures", "path", path, "error", err)
				}
				break
			}
			prev[f.relKey] = f.Reason
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		a.log.Warn("cannot prepare the file that keeps failures the store cannot record across a restart", "path", path, "error", err)
		return prev
	}
	// Written in full, with what it held, until failInterrupted has
	// recorded those (see syncUnrecorded).
	u.f = f
	for k, reason := range prev {
		u.m[k] = unrecordedFailure{relKey: k, Reason: reason}
	}
	err = u.persist()
	clear(u.m)
	if err != nil {
		f.Close()
		u.f = nil
		a.log.Warn("cannot prepare the file that keeps failures the store cannot record across a restart", "path", path, "error", err)
	}
	return prev
}

// syncUnrecorded writes the cause file anew with what is in memory; Run
// calls it once failInterrupted has recorded what a previous agent kept
// there.
func (a *Agent) syncUnrecorded() {
	u := &a.unrec
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := u.persist(); err != nil {
		a.log.Warn("update the causes of unrecorded failures", "path", u.path, "error", err)
	}
}

// closeUnrecorded closes the cause file, leaving its content for the
// next agent.
func (a *Agent) closeUnrecorded() {
	u := &a.unrec
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.f != nil {
		u.f.Close()
		u.f = nil
	}
}

// persist writes the failures in memory over the cause file, NUL
// padded, and syncs it. Called with u.mu held.
func (u *unrecorded) persist() error {
	if u.f == nil {
		return nil
	}
	keys := make([]relKey, 0, len(u.m))
	for k := range u.m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].App != keys[j].App {
			return keys[i].App < keys[j].App
		}
		return keys[i].Version < keys[j].Version
	})
	buf := make([]byte, 0, unrecordedSize)
	for _, k := range keys {
		f := u.m[k]
		if len(f.Reason) > maxUnrecordedReason {
			f.Reason = f.Reason[:maxUnrecordedReason]
		}
		line, _ := json.Marshal(f)
		if len(buf)+len(line)+1 >= unrecordedSize {
			break // the rest stays in memory only
		}
		buf = append(append(buf, line...), '\n')
	}
	buf = append(buf, make([]byte, unrecordedSize-len(buf))...)
	if _, err := u.f.WriteAt(buf, 0); err != nil {
		return err
	}
	return u.f.Sync()
}

// markFailed marks a release that was never activated failed with the
// reason and output. The store's write is retried; if it still fails,
// the cause is kept in memory and in the cause file (see the top of this
// file), and the error is returned.
func (a *Agent) markFailed(app string, version int, reason, output string) error {
	var err error
	for try := 0; try < 3; try++ {
		if err = a.store.MarkFailed(app, version, reason, output); err == nil {
			return nil
		}
		time.Sleep(time.Duration(try+1) * 10 * time.Millisecond)
	}
	a.log.Error("mark release failed; keeping the cause until the store can record it", "app", app, "version", version, "error", err)
	u := &a.unrec
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil {
		u.m = map[relKey]unrecordedFailure{}
	}
	k := relKey{App: app, Version: version}
	u.m[k] = unrecordedFailure{relKey: k, Reason: reason, Output: output}
	if perr := u.persist(); perr != nil {
		a.log.Error("keep the cause of a failure the store cannot record", "path", u.path, "error", perr)
	}
	a.markChanged() // the main loop arms its retry timer
	return err
}

// unrecordedLeft reports whether failures wait to be recorded.
func (a *Agent) unrecordedLeft() bool {
	u := &a.unrec
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.m) > 0
}

// retryUnrecorded tries again to record the failures the store refused;
// those it records are forgotten.
func (a *Agent) retryUnrecorded() {
	u := &a.unrec
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.m) == 0 {
		return
	}
	done := 0
	for k, f := range u.m {
		if err := a.store.MarkFailed(k.App, k.Version, f.Reason, f.Output); err != nil {
			if r, rerr := a.store.Release(k.App, k.Version); errors.Is(rerr, state.ErrAppNotFound) || errors.Is(rerr, state.ErrReleaseNotFound) || (rerr == nil && r.Status != state.StatusPending) {
				delete(u.m, k) // destroyed, or failed otherwise meanwhile
				done++
			}
			continue
		}
		delete(u.m, k)
		done++
		a.log.Info("recorded a release failure the store had refused", "app", k.App, "version", k.Version)
	}
	if done > 0 {
		if err := u.persist(); err != nil {
			a.log.Warn("update the causes of unrecorded failures", "path", u.path, "error", err)
		}
	}
}

// withUnrecorded shows a release the store still has pending as failed
// when its failure could not be recorded yet.
func (a *Agent) withUnrecorded(r api.Release) api.Release {
	if r.Status != "pending" {
		return r
	}
	u := &a.unrec
	u.mu.Lock()
	defer u.mu.Unlock()
	if f, ok := u.m[relKey{App: r.App, Version: r.Version}]; ok {
		r.Status = "failed"
		r.Reason = f.Reason + " (not yet recorded: the store could not write)"
		if r.Output == "" {
			r.Output = f.Output
		}
	}
	return r
}
