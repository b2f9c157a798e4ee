package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
// A file is acted on once it is complete: after it has seen no write (and
// kept its size and mtime) for Config.InboxQuiet. A file renamed into the
// inbox is complete at once and goes after that same quiet period. This
// cannot tell a writer that pauses longer than InboxQuiet from one that is
// done (checking every /proc/*/fd for an open writer costs too much); the
// rename is the safe way to drop a file, and a file picked up half
// written fails as a corrupt tarball and changes nothing.
//
// Afterwards the file is moved to inbox/.done/<name>, or to
// inbox/.failed/<name> with <name>.error beside it saying why. A file is
// never deployed twice: while the agent runs it remembers each file it
// handled by name, inode, size and mtime, and the move takes it out of
// the inbox for good. Files that arrived while the agent was down are
// picked up at start.

// inboxSuffixes are the tarball names accepted at the top of the inbox.
var inboxSuffixes = []string{".tar.gz", ".tgz", ".tar.zst", ".tar"}

// inboxFile is a file waiting for its quiet period to end.
type inboxFile struct {
	last  time.Time // last event or change seen
	size  int64
	mtime time.Time
}

// fileKey identifies one version of a file, so it is never handled twice.
type fileKey struct {
	path  string
	ino   uint64
	size  int64
	mtime int64
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
		pending[path] = &inboxFile{last: time.Now(), size: fi.Size(), mtime: fi.ModTime()}
	}
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
		next := a.inboxDue(ctx, dir, cfg.InboxQuiet, pending, seen)
		timer.Stop()
		armed = len(pending) > 0
		if armed {
			timer.Reset(next)
		}
	}
}

// inboxDue handles the pending files whose quiet period is over and
// returns how long until the next one is due.
func (a *Agent) inboxDue(ctx context.Context, dir string, quiet time.Duration, pending map[string]*inboxFile, seen map[fileKey]bool) time.Duration {
	next := quiet
	now := time.Now()
	for path, f := range pending {
		if wait := quiet - now.Sub(f.last); wait > 0 {
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
			*f = inboxFile{last: now, size: fi.Size(), mtime: fi.ModTime()}
			continue
		}
		delete(pending, path)
		key := fileKey{path: path, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			key.ino = st.Ino
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		if ctx.Err() != nil {
			return next
		}
		a.inboxDeploy(ctx, dir, path)
	}
	return max(next, time.Millisecond)
}

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
