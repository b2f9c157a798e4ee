package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
)

// Inbox: a tarball dropped into $DATA/inbox is deployed.
//
//   - inbox/<app>.tar.gz, .tgz, .tar.zst or .tar deploys to <app>;
//   - any file anywhere under inbox/<app>/ deploys to <app>;
//   - dotfiles, dot directories and names ending in .tmp or .part are
//     ignored, so a writer can upload under such a name and rename.
//
// A file is deployed once it is complete: it has seen no write (and kept
// its size and mtime) for Config.InboxQuiet, and it reads as a whole
// archive: its gzip or zstd stream ends properly and its tar reaches the
// end-of-archive marker. A file that stopped short ("unexpected EOF") is
// taken for one still being written, however long its writer pauses, and
// looked at again after each change and every InboxQuiet, for at most
// inboxIncompleteMax; then it fails as incomplete. A file renamed into
// the inbox is complete at once and goes after that same quiet period.
//
// Each app has its own queue, and apps are deployed in parallel (a slow
// release phase of one holds up none of the others). In an app's queue,
// files go in order of arrival: oldest mtime first, then by name; the
// files found at start and those that come due together are queued
// together, so of ten files dropped at once the newest ends active.
//
// Afterwards the file is moved to inbox/.done/<name>, or to
// inbox/.failed/<name> with <name>.error beside it saying why. Every
// entry that is not deployed and not ignored gets such a reason: a name
// that is not a tarball's, a symlink, a FIFO, a device or a socket (never
// opened: only regular files are read), a directory at the top of the
// inbox named like a tarball, a file that is no archive or an invalid
// build. A file is never deployed twice: while the agent runs it
// remembers each file it handled by name, inode, size and mtime, and the
// move takes it out of the inbox for good. Files that arrived while the
// agent was down are picked up at start.

// inboxIncompleteMax bounds how long a file that reads as a truncated
// archive is waited for before it fails as incomplete.
const inboxIncompleteMax = 10 * time.Minute

// inboxSuffixes are the tarball names accepted at the top of the inbox.
var inboxSuffixes = []string{".tar.gz", ".tgz", ".tar.zst", ".tar"}

// inboxFile is a file waiting for its quiet period to end.
type inboxFile struct {
	last       time.Time // last event or change seen
	size       int64
	mtime      time.Time
	incomplete time.Time // when it was first found a truncated archive; zero if never
	// checkedSize and checkedMtime are what it was when last found
	// truncated: unchanged, it is not read again.
	checkedSize  int64
	checkedMtime time.Time
}

// fileKey identifies one version of a file, so it is never handled twice.
type fileKey struct {
	path  string
	ino   uint64
	size  int64
	mtime int64
}

// hasInboxSuffix reports whether name ends like a tarball the top of the
// inbox accepts.
func hasInboxSuffix(name string) bool {
	for _, suf := range inboxSuffixes {
		if strings.HasSuffix(name, suf) {
			return true
		}
	}
	return false
}

// inboxTarget decides what a path under the inbox is: the app it deploys
// to, whether to ignore it, or why it is refused.
func inboxTarget(rel string) (app string, ignore bool, err error) {
	parts := strings.Split(filepath.ToSlash(rel), "/")
	for _, p := range parts {
		if strings.HasPrefix(p, ".") {
			return "", true, nil
		}
	}
	base := parts[len(parts)-1]
	if strings.HasSuffix(base, ".tmp") || strings.HasSuffix(base, ".part") {
		return "", true, nil
	}
	if len(parts) > 1 {
		app = parts[0]
	} else {
		for _, suf := range inboxSuffixes {
			if strings.HasSuffix(base, suf) {
				app = strings.TrimSuffix(base, suf)
				break
			}
		}
		if app == "" {
			return "", false, fmt.Errorf("inbox file %q: name it <app>.tar.gz, <app>.tgz, <app>.tar.zst or <app>.tar, or put it in the directory <app>/", base)
		}
	}
	if err := state.ValidateAppName(app); err != nil {
		return "", false, fmt.Errorf("inbox file %q: %w", rel, err)
	}
	return app, false, nil
}

// runInbox watches the inbox until ctx ends.
func (a *Agent) runInbox(ctx context.Context) error {
	cfg := a.config()
	dir := cfg.path("inbox")
	for _, d := range []string{dir, filepath.Join(dir, ".done"), filepath.Join(dir, ".failed")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create inbox: %w", err)
		}
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch inbox: %w", err)
	}
	defer w.Close()

	pending := map[string]*inboxFile{}
	seen := map[fileKey]bool{}
	// note marks a file as changed now.
	note := func(path string) {
		fi, err := os.Lstat(path)
		if err != nil || fi.IsDir() {
			delete(pending, path)
			return
		}
		f := &inboxFile{last: time.Now(), size: fi.Size(), mtime: fi.ModTime()}
		if old, ok := pending[path]; ok {
			f.incomplete, f.checkedSize, f.checkedMtime = old.incomplete, old.checkedSize, old.checkedMtime
		}
		pending[path] = f
	}
	q := newInboxQueues(ctx, a, dir)
	defer q.wait()
	// addTree watches a directory and its subdirectories, and notes the
	// files already in them.
	addTree := func(root string) {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.IsDir() {
				if p != dir && strings.HasPrefix(d.Name(), ".") {
					return filepath.SkipDir
				}
				if filepath.Dir(p) == dir && hasInboxSuffix(d.Name()) {
					a.inboxRefuse(dir, p, fmt.Errorf("%w: inbox entry %q is a directory, not a tarball", api.ErrInvalid, d.Name()))
					return filepath.SkipDir
				}
				if err := w.Add(p); err != nil {
					a.log.Error("watch inbox directory", "path", p, "error", err)
				}
				return nil
			}
			note(p)
			return nil
		})
	}
	addTree(dir)
	a.log.Info("watching the inbox", "dir", dir, "files", len(pending))

	// The timer is armed only while files are pending: an idle inbox
	// wakes the agent for nothing but an event.
	timer := time.NewTimer(cfg.InboxQuiet)
	defer timer.Stop()
	armed := len(pending) > 0
	if !armed {
		timer.Stop()
	}
	for {
		var due <-chan time.Time
		if armed {
			due = timer.C
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			switch {
			case ev.Has(fsnotify.Create):
				if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() {
					addTree(ev.Name)
				} else {
					note(ev.Name)
				}
			case ev.Has(fsnotify.Write), ev.Has(fsnotify.Chmod):
				note(ev.Name)
			case ev.Has(fsnotify.Remove), ev.Has(fsnotify.Rename):
				delete(pending, ev.Name)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// An overflowed event queue loses events: rescan.
			a.log.Warn("inbox watcher", "error", err)
			addTree(dir)
		case <-due:
		}
		next := a.inboxDue(ctx, dir, cfg.InboxQuiet, pending, seen, q)
		timer.Stop()
		armed = len(pending) > 0
		if armed {
			timer.Reset(next)
		}
	}
}

// inboxDue queues the pending files whose quiet period is over and that
// read as complete archives, and returns how long until the next one is
// due. The files that come due together are queued together, so each
// app's queue can take them in order.
func (a *Agent) inboxDue(ctx context.Context, dir string, quiet time.Duration, pending map[string]*inboxFile, seen map[fileKey]bool, q *inboxQueues) time.Duration {
	next := quiet
	now := time.Now()
	var due []inboxItem
	for path, f := range pending {
		// Files noted within a few milliseconds of each other (found
		// at start, dropped together) come due together.
		if wait := quiet - now.Sub(f.last); wait > quiet/8 {
			next = min(next, wait)
			continue
		}
		fi, err := os.Lstat(path)
		if err != nil || fi.IsDir() {
			delete(pending, path)
			continue
		}
		if fi.Size() != f.size || !fi.ModTime().Equal(f.mtime) {
			// Changed without an event we saw: wait another period.
			f.last, f.size, f.mtime = now, fi.Size(), fi.ModTime()
			continue
		}
		key := fileKey{path: path, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			key.ino = st.Ino
		}
		if seen[key] {
			delete(pending, path)
			continue
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			delete(pending, path)
			continue
		}
		_, ignore, terr := inboxTarget(rel)
		if ignore {
			delete(pending, path)
			continue
		}
		var failNow error
		if terr != nil {
			failNow = terr // no app: refused as it is
		} else if err := a.inboxComplete(dir, rel, f); err != nil {
			if f.incomplete.IsZero() {
				f.incomplete = now
			}
			if now.Sub(f.incomplete) < inboxIncompleteMax {
				// Still being written, most likely: look again later.
				a.log.Debug("inbox file is not a complete archive yet", "file", rel, "error", err)
				f.last = now
				continue
			}
			failNow = fmt.Errorf("%w: inbox file %q is an incomplete archive (no change for %s): %w",
				api.ErrInvalid, rel, now.Sub(f.mtime).Round(time.Second), err)
		}
		delete(pending, path)
		seen[key] = true
		due = append(due, inboxItem{path: path, rel: rel, mtime: fi.ModTime(), fail: failNow})
	}
	if ctx.Err() == nil {
		q.add(due)
	}
	return max(next, time.Millisecond)
}

// inboxComplete is archiveComplete, except that a file found truncated
// before is not read again until its size or mtime change.
func (a *Agent) inboxComplete(dir, rel string, f *inboxFile) error {
	if !f.incomplete.IsZero() && f.size == f.checkedSize && f.mtime.Equal(f.checkedMtime) {
		return fmt.Errorf("unchanged since: %w", errIncomplete)
	}
	err := archiveComplete(dir, rel)
	if err != nil {
		f.checkedSize, f.checkedMtime = f.size, f.mtime
	}
	return err
}

// inboxItem is a complete inbox file waiting in its app's queue.
type inboxItem struct {
	path, rel string
	mtime     time.Time
	fail      error // set: not deployed, moved to .failed with this reason
}

// before orders an app's queue: arrival (mtime), then name.
func (it inboxItem) before(o inboxItem) bool {
	if !it.mtime.Equal(o.mtime) {
		return it.mtime.Before(o.mtime)
	}
	return it.rel < o.rel
}

// inboxQueues are the per-app queues of complete inbox files, each
// served by one goroutine while it has files; runInbox owns them and
// waits for them when it returns.
type inboxQueues struct {
	ctx context.Context
	a   *Agent
	dir string
	wg  sync.WaitGroup

	mu     sync.Mutex // guards queues
	queues map[string][]inboxItem
}

func newInboxQueues(ctx context.Context, a *Agent, dir string) *inboxQueues {
	return &inboxQueues{ctx: ctx, a: a, dir: dir, queues: map[string][]inboxItem{}}
}

// add queues items, each to its app's queue (a name that maps to no app
// goes to a queue of its own: it only fails), starting a queue's
// goroutine when it has none.
func (q *inboxQueues) add(items []inboxItem) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, it := range items {
		app, _, err := inboxTarget(it.rel)
		if err != nil {
			app = "\x00" + it.rel
		}
		_, busy := q.queues[app]
		q.queues[app] = append(q.queues[app], it)
		if !busy {
			q.wg.Add(1)
			go q.serve(app) // owned: wait waits for it
		}
	}
}

// serve deploys the files of one app's queue, the first by arrival
// first, until it is empty.
func (q *inboxQueues) serve(app string) {
	defer q.wg.Done()
	for {
		q.mu.Lock()
		items := q.queues[app]
		if len(items) == 0 || q.ctx.Err() != nil {
			delete(q.queues, app) // what is left stays in the inbox for the next start
			q.mu.Unlock()
			return
		}
		first := 0
		for i, it := range items {
			if it.before(items[first]) {
				first = i
			}
		}
		it := items[first]
		q.queues[app] = append(items[:first:first], items[first+1:]...)
		q.mu.Unlock()
		if it.fail != nil {
			q.a.inboxRefuse(q.dir, it.path, it.fail)
			continue
		}
		q.a.inboxDeploy(q.ctx, q.dir, it.path)
	}
}

// wait waits for every queue's goroutine; called once ctx has ended.
func (q *inboxQueues) wait() { q.wg.Wait() }

// inboxDeploy deploys one complete inbox file and moves it to .done or
// .failed.
func (a *Agent) inboxDeploy(ctx context.Context, dir, path string) {
	rel, err := filepath.Rel(dir, path)
	if err != nil {
		return
	}
	app, ignore, err := inboxTarget(rel)
	if ignore {
		return
	}
	if err == nil {
		a.log.Info("deploying from the inbox", "file", rel, "app", app)
		var f *os.File
		if f, err = openInboxFile(dir, rel); err == nil {
			var r api.Release
			r, err = a.Deploy(ctx, api.DeployRequest{App: app, Body: f, Source: "inbox"}, nil)
			f.Close()
			if err == nil {
				a.log.Info("inbox deploy done", "file", rel, "app", app, "release", r.Version)
			}
		}
	}
	if (ctx.Err() != nil && errors.Is(err, ctx.Err())) || errors.Is(err, ErrShuttingDown) {
		// Shutting down: the file stays and is deployed at the next
		// start (a switch it began is recorded as interrupted).
		return
	}
	a.inboxMove(dir, path, rel, err)
}

// inboxRefuse moves an inbox entry that is not deployed to .failed with
// its reason.
func (a *Agent) inboxRefuse(dir, path string, reason error) {
	rel, err := filepath.Rel(dir, path)
	if err != nil {
		return
	}
	a.inboxMove(dir, path, rel, reason)
}

// inboxMove moves an inbox entry to .done (err nil) or to .failed with
// err in <name>.error beside it.
func (a *Agent) inboxMove(dir, path, rel string, err error) {
	sub := ".done"
	if err != nil {
		sub = ".failed"
		a.log.Warn("inbox deploy failed", "file", rel, "error", err)
	}
	dst := filepath.Join(dir, sub, rel)
	if mkErr := os.MkdirAll(filepath.Dir(dst), 0o755); mkErr != nil {
		a.log.Error("move inbox file", "file", rel, "error", mkErr)
		return
	}
	if err != nil {
		if werr := writeFileAtomic(dst+".error", []byte(err.Error()+"\n"), 0o644); werr != nil {
			a.log.Error("write inbox error file", "file", rel, "error", werr)
		}
	} else {
		os.Remove(dst + ".error")
	}
	if fi, serr := os.Lstat(dst); serr == nil && fi.IsDir() {
		os.RemoveAll(dst) // a directory refused before under the same name
	}
	if mvErr := os.Rename(path, dst); mvErr != nil {
		a.log.Error("move inbox file", "file", rel, "to", dst, "error", mvErr)
	}
}

// openInboxFile opens the inbox file rel for reading. The agent (root)
// opens what a local user dropped, so only a regular file is opened: a
// symlink is not followed, a FIFO does not block (O_NONBLOCK; Fd puts the
// file back in blocking mode), and anything else is refused with what it
// is. The checks are made again on the open file, in case rel was
// replaced after the first look.
func openInboxFile(dir, rel string) (*os.File, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open inbox file %q: %w", rel, err)
	}
	defer root.Close()
	fi, err := root.Lstat(rel)
	if err != nil {
		return nil, fmt.Errorf("open inbox file %q: %w", rel, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: inbox file %q is not a regular file but %s; only regular files are deployed", api.ErrInvalid, rel, fileKind(fi.Mode()))
	}
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open inbox file %q: %w", rel, err)
	}
	if fi, err = f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("open inbox file %q: %w", rel, err)
		}
		return nil, fmt.Errorf("%w: inbox file %q is not a regular file but %s; only regular files are deployed", api.ErrInvalid, rel, fileKind(fi.Mode()))
	}
	f.Fd() // back to blocking mode
	return f, nil
}

// fileKind names what a non-regular file is, for an error.
func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m.IsDir():
		return "a directory"
	}
	return "not a regular file (" + m.Type().String() + ")"
}

// writeFileAtomic writes a file through a temporary name, fsync and
// rename.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}
