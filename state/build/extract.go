package build

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kind is what an extracted path is.
type kind uint8

const (
	kindDir kind = iota + 1
	kindFile
	kindSymlink
)

// maxSymlinkHops bounds symlink resolution while checking link targets, as
// the kernel's ELOOP limit does.
const maxSymlinkHops = 40

// maxNameComponent is the longest path component Linux file systems accept.
const maxNameComponent = 255

// copyBufSize is the size of the buffer entries are copied through.
const copyBufSize = 1 << 20

// extractor unpacks one tar stream into a directory through an os.Root,
// checking every entry before anything is written. It remembers what each
// path is, so no check depends on what is on disk.
type extractor struct {
	root   *os.Root
	limits Limits
	// meter reports compressed and decompressed byte counts for the ratio
	// check while a file's content is copied.
	meter *meter
	src   *eofReader

	// sub holds an os.Root for the directory of the previous large file.
	sub dirRoots

	entries map[string]kind   // cleaned relative path -> what it is
	links   map[string]string // symlink path -> target, for resolution
	dirs    []string          // every directory created, for the final chmod

	nEntries int
	nFiles   int
	written  int64 // regular file bytes, for MaxBytes
	buf      []byte

	// Small files are created and written by a pool of writer goroutines
	// (see writers); lanes maps a directory to the writer that creates
	// all of its files.
	w     *writers
	lanes map[string]int
}

func newExtractor(root *os.Root, limits Limits, m *meter) *extractor {
	return &extractor{
		root:    root,
		sub:     dirRoots{root: root},
		limits:  limits,
		meter:   m,
		entries: map[string]kind{"": kindDir},
		links:   make(map[string]string),
		buf:     make([]byte, copyBufSize),
		lanes:   make(map[string]int),
	}
}

// eofReader notes whether its source reached its end. The tar reader reads
// whole blocks and stops after the end-of-archive marker, so if it saw the
// end of the stream the marker was missing.
type eofReader struct {
	r   io.Reader
	eof bool
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if errors.Is(err, io.EOF) {
		e.eof = true
	}
	return n, err
}

// run extracts every entry of the tar stream src, then re-checks every
// symlink against the final tree (a later entry may change where an earlier
// link resolves).
func (x *extractor) run(ctx context.Context, src io.Reader) error {
	x.src = &eofReader{r: src}
	x.w = startWriters(ctx, x.root, numWriters())
	defer x.w.stop()
	tr := tar.NewReader(x.src)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := x.w.failed(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			if x.src.eof {
				// archive/tar accepts an archive that stops at an entry
				// boundary; a complete one ends with two zero blocks.
				return fmt.Errorf("%w: truncated: no end-of-archive marker", ErrCorrupt)
			}
			break
		}
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			return x.readErr(ctx, err, "")
		}
		if err := x.entry(ctx, tr, hdr); err != nil {
			return err
		}
	}
	if err := x.w.wait(); err != nil {
		return err
	}
	for name, target := range x.links {
		if reason := x.escapes(name, target); reason != "" {
			return &UnsafeEntryError{Entry: name, Reason: reason}
		}
	}
	return nil
}

// readErr classifies an error from reading the archive (see corrupt),
// naming the entry being read (if any) in the error, and in a limit the
// reader hit while reading it.
func (x *extractor) readErr(ctx context.Context, err error, entry string) error {
	var le *LimitError
	if errors.As(err, &le) && le.Entry == "" {
		le.Entry = entry
	}
	if entry == "" {
		return corrupt(ctx, err, "")
	}
	return corrupt(ctx, err, fmt.Sprintf("entry %q", entry))
}

// cleanName checks a tar entry name (or hard link target) and returns it as
// a clean relative path ("" for the root itself) with its components.
func (x *extractor) cleanName(entry, name string) (string, []string, error) {
	if name == "" {
		return "", nil, &UnsafeEntryError{Entry: entry, Reason: "empty name"}
	}
	if len(name) > x.limits.MaxPathLen {
		return "", nil, &LimitError{Entry: entry, Limit: "MaxPathLen", Max: int64(x.limits.MaxPathLen)}
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", nil, &UnsafeEntryError{Entry: entry, Reason: "name contains a NUL byte"}
	}
	if name[0] == '/' {
		return "", nil, &UnsafeEntryError{Entry: entry, Reason: "absolute path"}
	}
	parts := strings.Split(name, "/")
	clean := parts[:0]
	for _, p := range parts {
		switch p {
		case "", ".":
			continue
		case "..":
			return "", nil, &UnsafeEntryError{Entry: entry, Reason: `path contains ".."`}
		}
		if len(p) > maxNameComponent {
			return "", nil, &LimitError{Entry: entry, Limit: "name component length", Max: maxNameComponent}
		}
		clean = append(clean, p)
	}
	if len(clean) > x.limits.MaxDepth {
		return "", nil, &LimitError{Entry: entry, Limit: "MaxDepth", Max: int64(x.limits.MaxDepth)}
	}
	return strings.Join(clean, "/"), clean, nil
}

// entry checks and extracts one tar entry.
func (x *extractor) entry(ctx context.Context, tr *tar.Reader, hdr *tar.Header) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		// A pax global header (git archive writes one) is metadata, not a
		// file.
		return nil
	}
	x.nEntries++
	if x.nEntries > x.limits.MaxEntries {
		return &LimitError{Entry: hdr.Name, Limit: "MaxEntries", Max: int64(x.limits.MaxEntries)}
	}
	name, parts, err := x.cleanName(hdr.Name, hdr.Name)
	if err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse, tar.TypeSymlink, tar.TypeLink:
		// archive/tar expands sparse files; reading one yields its holes
		// as zeros, which the ratio cap counts.
	case tar.TypeChar:
		return &UnsafeEntryError{Entry: hdr.Name, Reason: "character device"}
	case tar.TypeBlock:
		return &UnsafeEntryError{Entry: hdr.Name, Reason: "block device"}
	case tar.TypeFifo:
		return &UnsafeEntryError{Entry: hdr.Name, Reason: "FIFO"}
	default:
		return &UnsafeEntryError{Entry: hdr.Name, Reason: fmt.Sprintf("unsupported entry type %q", hdr.Typeflag)}
	}
	if name == "" {
		if hdr.Typeflag == tar.TypeDir {
			return nil // "./": the build root itself
		}
		return &UnsafeEntryError{Entry: hdr.Name, Reason: "replaces the build root"}
	}
	if err := x.parents(hdr.Name, name, parts); err != nil {
		return err
	}
	existing := x.entries[name]
	if hdr.Typeflag == tar.TypeDir {
		switch existing {
		case kindDir:
			return nil // a directory listed twice, or after its children
		case 0:
			return x.mkdir(hdr.Name, name)
		default:
			return &UnsafeEntryError{Entry: hdr.Name, Reason: "directory replaces an earlier file or link"}
		}
	}
	switch existing {
	case kindDir:
		return &UnsafeEntryError{Entry: hdr.Name, Reason: "replaces an earlier directory"}
	case kindSymlink:
		return &UnsafeEntryError{Entry: hdr.Name, Reason: "duplicate entry would write through an earlier symlink"}
	case kindFile:
		return &UnsafeEntryError{Entry: hdr.Name, Reason: "duplicate entry would replace an earlier file (and anything hard-linked to it)"}
	}
	switch hdr.Typeflag {
	case tar.TypeSymlink:
		return x.symlink(hdr, name)
	case tar.TypeLink:
		return x.hardlink(hdr, name)
	default:
		return x.file(ctx, tr, hdr, name)
	}
}

// parents makes sure every parent of an entry is a directory, creating the
// missing ones, and refuses paths that go through a symlink or a file. name
// is the clean path, parts its components: each parent is a prefix of name.
func (x *extractor) parents(entry, name string, parts []string) error {
	end := -1
	for _, part := range parts[:len(parts)-1] {
		end += 1 + len(part)
		p := name[:end]
		switch x.entries[p] {
		case kindDir:
		case kindSymlink:
			return &UnsafeEntryError{Entry: entry, Reason: fmt.Sprintf("writes through symlink %q", p)}
		case kindFile:
			return &UnsafeEntryError{Entry: entry, Reason: fmt.Sprintf("parent %q is a file", p)}
		default:
			if err := x.mkdir(entry, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// mkdir creates a directory, writable for now; finish makes it read-only.
func (x *extractor) mkdir(entry, name string) error {
	if err := x.root.Mkdir(name, 0o755); err != nil {
		return fmt.Errorf("entry %q: %w", entry, err)
	}
	x.entries[name] = kindDir
	x.dirs = append(x.dirs, name)
	return nil
}

// file creates a regular file with its final read-only mode and copies the
// entry's content into it.
func (x *extractor) file(ctx context.Context, tr *tar.Reader, hdr *tar.Header, name string) error {
	if hdr.Size < 0 {
		return fmt.Errorf("%w: entry %q: negative size", ErrCorrupt, hdr.Name)
	}
	if hdr.Size > x.limits.MaxBytes-x.written {
		return &LimitError{Entry: hdr.Name, Limit: "MaxBytes", Max: x.limits.MaxBytes}
	}
	mode := fileMode(hdr.Mode)
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if hdr.Size <= maxQueuedFile {
		return x.queueFile(ctx, tr, hdr, name, dir, base, mode)
	}
	r, err := x.sub.get(dir)
	if err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	f, err := r.OpenFile(base, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, mode)
	if err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	x.entries[name] = kindFile
	x.nFiles++
	return closeFile(f, hdr.Name, mode, hdr.ModTime, x.copy(ctx, f, tr, hdr))
}

// close releases the directory root the extractor holds open.
func (x *extractor) close() { x.sub.close() }

// closeFile finishes a file whose content was written, err being the
// writing's error: unless there was one, it starts the file's writeback
// and sets its final mode and mtime. It always closes the file.
func closeFile(f *os.File, entry string, mode fs.FileMode, mtime time.Time, err error) error {
	if err == nil {
		startWriteback(f, 0, 0)
		// The umask may have cleared read bits; the apps run as another
		// user and must be able to read the build.
		err = f.Chmod(mode)
	}
	if err == nil && !mtime.IsZero() {
		err = setMtime(f, mtime)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("entry %q: %w", entry, cerr)
	}
	return err
}

// dirRoots caches an os.Root for sub, the directory where the previous
// file was created: consecutive files of one directory are created with
// a single openat instead of a walk from the root.
type dirRoots struct {
	root    *os.Root
	sub     *os.Root
	subName string
}

// get returns an os.Root for the directory dir of the tree (already
// checked to be a real directory), reusing the previous one if it is the
// same directory.
func (d *dirRoots) get(dir string) (*os.Root, error) {
	if dir == "" {
		return d.root, nil
	}
	if d.sub != nil && d.subName == dir {
		return d.sub, nil
	}
	d.close()
	r, err := d.root.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	d.sub, d.subName = r, dir
	return r, nil
}

// close releases the cached directory root.
func (d *dirRoots) close() {
	if d.sub != nil {
		d.sub.Close()
		d.sub, d.subName = nil, ""
	}
}

// copy writes an entry's content to f in large chunks, checking the context
// and the limits as it goes.
func (x *extractor) copy(ctx context.Context, f *os.File, tr *tar.Reader, hdr *tar.Header) error {
	var done, flushed int64
	for done < hdr.Size {
		if done-flushed >= writebackChunk {
			startWriteback(f, flushed, done-flushed)
			flushed = done
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		want := int64(len(x.buf))
		if rem := hdr.Size - done; rem < want {
			want = rem
		}
		n, err := io.ReadFull(tr, x.buf[:want])
		if n > 0 {
			if _, werr := f.Write(x.buf[:n]); werr != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, werr)
			}
			done += int64(n)
			x.written += int64(n)
			if err := x.meter.check(x.written); err != nil {
				err.Entry = hdr.Name
				return err
			}
		}
		if err != nil {
			return x.readErr(ctx, err, hdr.Name)
		}
	}
	return nil
}

// symlink checks that a symlink's target stays inside the tree and creates
// it.
func (x *extractor) symlink(hdr *tar.Header, name string) error {
	target := hdr.Linkname
	switch {
	case target == "":
		return &UnsafeEntryError{Entry: hdr.Name, Reason: "symlink with an empty target"}
	case len(target) > x.limits.MaxPathLen:
		return &LimitError{Entry: hdr.Name, Limit: "MaxPathLen", Max: int64(x.limits.MaxPathLen)}
	case strings.IndexByte(target, 0) >= 0:
		return &UnsafeEntryError{Entry: hdr.Name, Reason: "symlink target contains a NUL byte"}
	}
	if reason := x.escapes(name, target); reason != "" {
		return &UnsafeEntryError{Entry: hdr.Name, Reason: reason}
	}
	if err := x.root.Symlink(target, name); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	x.entries[name] = kindSymlink
	x.links[name] = target
	return nil
}

// escapes resolves the symlink name -> target against the tree extracted so
// far, following links inside it, and returns why it leaves the tree, or ""
// if it does not. Components that do not exist yet are taken as plain
// names; run re-checks every link once the tree is complete.
func (x *extractor) escapes(name, target string) string {
	if strings.HasPrefix(target, "/") {
		return fmt.Sprintf("symlink target %q is absolute", target)
	}
	cur := strings.Split(name, "/")
	cur = cur[:len(cur)-1] // the directory holding the link
	pending := strings.Split(target, "/")
	hops := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) == 0 {
				return fmt.Sprintf("symlink target %q leaves the build directory", target)
			}
			cur = cur[:len(cur)-1]
			continue
		}
		p := strings.Join(append(cur[:len(cur):len(cur)], c), "/")
		if next, ok := x.links[p]; ok {
			hops++
			if hops > maxSymlinkHops {
				return fmt.Sprintf("symlink target %q: too many levels of symlinks", target)
			}
			if strings.HasPrefix(next, "/") {
				return fmt.Sprintf("symlink target %q goes through absolute symlink %q", target, p)
			}
			pending = append(strings.Split(next, "/"), pending...)
			continue
		}
		cur = append(cur, c)
	}
	return ""
}

// hardlink links to an earlier regular file of the tree.
func (x *extractor) hardlink(hdr *tar.Header, name string) error {
	target, _, err := x.cleanName(hdr.Name, hdr.Linkname)
	if err != nil {
		var ue *UnsafeEntryError
		if errors.As(err, &ue) {
			ue.Reason = "hard link target: " + ue.Reason
		}
		return err
	}
	switch x.entries[target] {
	case kindFile:
	case 0:
		return &UnsafeEntryError{Entry: hdr.Name, Reason: fmt.Sprintf("hard link target %q is not an earlier entry of the archive", hdr.Linkname)}
	default:
		return &UnsafeEntryError{Entry: hdr.Name, Reason: fmt.Sprintf("hard link target %q is not a regular file", hdr.Linkname)}
	}
	// The target may still be queued for a writer: link to it only once
	// it is complete.
	if err := x.w.wait(); err != nil {
		return err
	}
	if err := x.root.Link(target, name); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	x.entries[name] = kindFile
	x.nFiles++
	return nil
}

// finish makes every directory read-only, the root last.
func (x *extractor) finish() error {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		if err := x.root.Chmod(x.dirs[i], 0o555); err != nil {
			return fmt.Errorf("make %q read-only: %w", x.dirs[i], err)
		}
	}
	return x.root.Chmod(".", 0o555)
}

// fileMode maps a tar mode to the build's: readable by everyone, executable
// by everyone if any execute bit was set, never writable, no setuid, setgid
// or sticky bit.
func fileMode(m int64) fs.FileMode {
	if m&0o111 != 0 {
		return 0o555
	}
	return 0o444
}

// writebackChunk is how much of a large file is written before its
// writeback is started.
const writebackChunk = 8 << 20

// startWriteback asks the kernel to start writing f's dirty pages in
// [off, off+n) (n == 0: to the end) to disk without waiting, so that the
// final syncfs finds little left to do: the disk works while the archive is
// still being unpacked (git's core.fsyncMethod=batch does the same). It is
// only a hint; errors are ignored because syncfs reports write errors.
func startWriteback(f *os.File, off, n int64) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}

// setMtime sets f's modification time from the tarball (futimens(2), which
// x/sys/unix does not wrap).
func setMtime(f *os.File, t time.Time) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	ts := [2]unix.Timespec{{Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(t.UnixNano())}
	var errno unix.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall6(unix.SYS_UTIMENSAT, fd, 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	}); err != nil {
		return err
	}
	if errno != 0 {
		return fmt.Errorf("set mtime of %s: %w", f.Name(), errno)
	}
	return nil
}
