package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// tmpPrefix starts the names of extractions in progress and of builds being
// removed; Open removes whatever carries it.
const tmpPrefix = ".tmp-"

// Limits bounds what one tarball may unpack to. A zero field means its
// default.
type Limits struct {
	// MaxBytes caps the total size of the regular files (default 4 GiB).
	MaxBytes int64
	// MaxEntries caps the number of entries (default 100,000).
	MaxEntries int
	// MaxPathLen caps an entry name or link target in bytes (default 4096).
	MaxPathLen int
	// MaxDepth caps the number of components of an entry name (default 64).
	MaxDepth int
	// MaxRatio caps unpacked bytes per uploaded byte, checked as the
	// archive is read so a decompression bomb stops early (default 1000;
	// the first 16 MiB unpacked are exempt).
	MaxRatio int64
}

// The defaults a zero Limits field stands for.
const (
	DefaultMaxBytes   int64 = 4 << 30
	DefaultMaxEntries       = 100_000
	DefaultMaxPathLen       = 4096
	DefaultMaxDepth         = 64
	DefaultMaxRatio   int64 = 1000
)

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultMaxEntries
	}
	if l.MaxPathLen <= 0 {
		l.MaxPathLen = DefaultMaxPathLen
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	if l.MaxRatio <= 0 {
		l.MaxRatio = DefaultMaxRatio
	}
	return l
}

// Config configures a Store.
type Config struct {
	// Dir holds the builds, one directory per digest ($DATA/builds). It is
	// created if missing. Required.
	Dir string
	// Limits bounds each import; zero fields take the Default* constants.
	Limits Limits
	// Private makes builds reachable only by the agent and the uids
	// granted access with Grant (see acl.go): the directory is made 0711
	// and each build's top directory 0500 before it is published. False
	// keeps builds readable by every user.
	Private bool
}

// Build is an unpacked, read-only build.
type Build struct {
	// Digest is the SHA-256 of the tarball as uploaded, in lowercase hex;
	// it is the build ID.
	Digest string
	// Dir is the build's directory, the working directory of its processes.
	Dir string
	// Procfile is the parsed Procfile at the build root.
	Procfile Procfile
	// Manifest is the parsed berth.json, empty if the build has none.
	Manifest Manifest
	// Size is the total size of the build's regular files in bytes.
	Size int64
	// Files is the number of regular files (hard links count once each).
	Files int
	// Existed is true when Import found the build already unpacked and did
	// not unpack it again.
	Existed bool
}

// Store is the build store: a directory of unpacked builds. Its methods are
// safe for concurrent use.
type Store struct {
	dir     string
	limits  Limits
	log     hclog.Logger
	private bool // Config.Private

	// mu guards publishing a build (the exists check and the rename into
	// place), removing one, and the fields below.
	mu sync.Mutex
	// importing counts imports in progress per expected digest; GC leaves
	// these builds alone.
	importing map[string]int
	// cache holds builds already parsed; builds never change, so entries
	// only go when GC removes the build.
	cache map[string]*Build
	// gcEpoch counts GC runs; returned records, per digest, the epoch in
	// which Import last returned that build, so a GC never removes a build
	// that Import handed out while the GC was running.
	gcEpoch  uint64
	returned map[string]uint64

	// gcMu serializes GC runs.
	gcMu sync.Mutex
}

// Open creates the builds directory if needed and removes extractions left
// over by a crash (.tmp-* directories). It starts nothing.
func Open(cfg Config, log hclog.Logger) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("open build store: Config.Dir is empty")
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	s := &Store{
		dir:       cfg.Dir,
		limits:    cfg.Limits.withDefaults(),
		private:   cfg.Private,
		log:       log,
		importing: make(map[string]int),
		cache:     make(map[string]*Build),
		returned:  make(map[string]uint64),
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return nil, fmt.Errorf("open build store: %w", err)
	}
	if s.private {
		// Searchable, not listable: no one learns another app's digest.
		if err := os.Chmod(s.dir, 0o711); err != nil {
			return nil, fmt.Errorf("open build store: %w", err)
		}
	}
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("open build store: %w", err)
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), tmpPrefix) {
			continue
		}
		p := filepath.Join(s.dir, e.Name())
		if err := removeTree(p); err != nil {
			return nil, fmt.Errorf("open build store: remove stale %s: %w", p, err)
		}
		s.log.Info("removed unfinished build directory", "path", p)
	}
	return s, nil
}

// Dir returns the builds directory.
func (s *Store) Dir() string { return s.dir }

// ValidateDigest returns an error wrapping ErrInvalidDigest unless d is a
// SHA-256 digest in lowercase hex (64 characters).
func ValidateDigest(d string) error {
	if len(d) != 64 {
		return fmt.Errorf("%w: %q: want 64 lowercase hex characters", ErrInvalidDigest, d)
	}
	for i := 0; i < len(d); i++ {
		if c := d[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("%w: %q: want 64 lowercase hex characters", ErrInvalidDigest, d)
		}
	}
	return nil
}

// Has reports whether the build with digest d is unpacked.
func (s *Store) Has(d string) bool {
	if ValidateDigest(d) != nil {
		return false
	}
	fi, err := os.Lstat(filepath.Join(s.dir, d))
	return err == nil && fi.IsDir()
}

// List returns the digests of the unpacked builds, sorted.
func (s *Store) List() ([]string, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list builds: %w", err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && ValidateDigest(e.Name()) == nil {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// Get returns the build with digest d, parsing its Procfile and manifest.
// It returns an error wrapping ErrNotFound if there is no such build.
func (s *Store) Get(d string) (*Build, error) {
	if err := ValidateDigest(d); err != nil {
		return nil, err
	}
	s.mu.Lock()
	b, ok := s.cache[d]
	s.mu.Unlock()
	if ok {
		c := *b
		return &c, nil
	}
	dir := filepath.Join(s.dir, d)
	root, err := os.OpenRoot(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("get build %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get build %s: %w", d, err)
	}
	defer root.Close()
	b = &Build{Digest: d, Dir: dir}
	if b.Procfile, b.Manifest, err = readMeta(root); err != nil {
		return nil, fmt.Errorf("get build %s: %w", d, err)
	}
	if b.Size, b.Files, err = treeSize(root); err != nil {
		return nil, fmt.Errorf("get build %s: %w", d, err)
	}
	s.remember(b)
	c := *b
	return &c, nil
}

// remember caches b (without its Existed flag).
func (s *Store) remember(b *Build) {
	c := *b
	c.Existed = false
	s.mu.Lock()
	s.cache[b.Digest] = &c
	s.mu.Unlock()
}

// treeSize counts the regular files of a build and their bytes.
func treeSize(root *os.Root) (int64, int, error) {
	var size int64
	var files int
	err := fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			size += fi.Size()
			files++
		}
		return nil
	})
	return size, files, err
}

// readMeta reads and checks the Procfile and the optional manifest at the
// build root.
func readMeta(root *os.Root) (Procfile, Manifest, error) {
	f, err := openRegular(root, ProcfileName)
	if errors.Is(err, fs.ErrNotExist) {
		return Procfile{}, Manifest{}, fmt.Errorf("%w: add a file named Procfile at the root of the tarball with lines such as \"web: ./server\"", ErrNoProcfile)
	}
	if err != nil {
		return Procfile{}, Manifest{}, fmt.Errorf("%w: %v", ErrProcfile, err)
	}
	pf, err := ParseProcfile(f)
	f.Close()
	if err != nil {
		return Procfile{}, Manifest{}, err
	}
	var m Manifest
	mf, err := openRegular(root, ManifestName)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return pf, m, nil
	case err != nil:
		return Procfile{}, Manifest{}, fmt.Errorf("%w: %v", ErrManifest, err)
	}
	data, err := io.ReadAll(io.LimitReader(mf, maxManifestSize+1))
	mf.Close()
	if err != nil {
		return Procfile{}, Manifest{}, fmt.Errorf("%w: read %s: %v", ErrManifest, ManifestName, err)
	}
	if m, err = ParseManifest(data); err != nil {
		return Procfile{}, Manifest{}, err
	}
	if err := m.checkTypes(pf); err != nil {
		return Procfile{}, Manifest{}, err
	}
	return pf, m, nil
}

// openRegular opens name in root (following symlinks inside the root) and
// checks that it is a regular file.
func openRegular(root *os.Root, name string) (*os.File, error) {
	f, err := root.Open(name)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", name)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// Import reads a release tarball (.tar, .tar.gz or .tar.zst, detected from
// its first bytes) from r, unpacks it into a temporary directory, checks
// every entry, the Procfile and the manifest, and moves it into place as
// builds/<sha256 of the upload>. If expectedDigest is not empty it must be
// a valid digest; when that build already exists Import returns it without
// reading r, and when the upload's digest differs Import fails with
// ErrDigestMismatch. On any error nothing new is left in the builds
// directory. Cancelling ctx stops the import at the next read from r.
func (s *Store) Import(ctx context.Context, r io.Reader, expectedDigest string) (*Build, error) {
	if expectedDigest != "" {
		if err := ValidateDigest(expectedDigest); err != nil {
			return nil, fmt.Errorf("import build: %w", err)
		}
		s.mu.Lock()
		s.importing[expectedDigest]++
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			if s.importing[expectedDigest]--; s.importing[expectedDigest] == 0 {
				delete(s.importing, expectedDigest)
			}
			s.mu.Unlock()
		}()
		if s.Has(expectedDigest) {
			b, err := s.Get(expectedDigest)
			if err != nil {
				return nil, fmt.Errorf("import build: %w", err)
			}
			s.mu.Lock()
			s.returned[b.Digest] = s.gcEpoch
			s.mu.Unlock()
			b.Existed = true
			return b, nil
		}
	}
	tmp, err := os.MkdirTemp(s.dir, tmpPrefix)
	if err != nil {
		return nil, fmt.Errorf("import build: %w", err)
	}
	b, err := s.unpack(ctx, r, tmp, expectedDigest)
	if err != nil {
		if rerr := removeTree(tmp); rerr != nil {
			s.log.Error("cannot remove failed import", "path", tmp, "error", rerr)
		}
		return nil, fmt.Errorf("import build: %w", err)
	}
	return b, nil
}

// unpack extracts r into tmp and publishes it. The caller removes tmp on
// error.
func (s *Store) unpack(ctx context.Context, r io.Reader, tmp, expectedDigest string) (*Build, error) {
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return nil, err
	}
	defer root.Close()

	m := &meter{maxRatio: s.limits.MaxRatio}
	st, err := openStream(ctx, r, m)
	if err != nil {
		return nil, err
	}
	defer st.close()
	// Decompression, hashing and reading the upload run in their own
	// goroutine, overlapping with writing the files.
	async := newAsyncReader(st.tar, 4, copyBufSize)
	defer async.close()

	start := time.Now()
	x := newExtractor(root, s.limits, m)
	defer x.close()
	if err := x.run(ctx, async); err != nil {
		return nil, err
	}
	digest, err := st.finish(ctx, async)
	if err != nil {
		return nil, err
	}
	if expectedDigest != "" && digest != expectedDigest {
		return nil, fmt.Errorf("%w: upload has sha256 %s, expected %s", ErrDigestMismatch, digest, expectedDigest)
	}
	b := &Build{Digest: digest, Dir: filepath.Join(s.dir, digest), Size: x.written, Files: x.nFiles}
	if b.Procfile, b.Manifest, err = readMeta(root); err != nil {
		return nil, err
	}
	if err := x.finish(); err != nil {
		return nil, err
	}
	unpacked := time.Now()
	// One syncfs(2) flushes every file and directory of the extraction;
	// it is much cheaper than an fsync per file (see BenchmarkImport).
	if err := syncfs(root); err != nil {
		return nil, fmt.Errorf("sync %s: %w", tmp, err)
	}
	s.log.Debug("unpacked build", "digest", digest, "format", st.format.String(),
		"unpack", unpacked.Sub(start), "sync", time.Since(unpacked))
	return s.publish(tmp, b)
}

// publish renames tmp to the build's directory, unless a build with the
// same digest appeared meanwhile, in which case that one is returned and
// tmp is removed.
func (s *Store) publish(tmp string, b *Build) (*Build, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.returned[b.Digest] = s.gcEpoch
	if fi, err := os.Lstat(b.Dir); err == nil && fi.IsDir() {
		if err := removeTree(tmp); err != nil {
			s.log.Error("cannot remove duplicate import", "path", tmp, "error", err)
		}
		b.Existed = true
		return b, nil
	}
	if s.private {
		// No uid is granted yet: only the agent can enter it.
		if err := os.Chmod(tmp, 0o500); err != nil {
			return nil, err
		}
	}
	if err := os.Rename(tmp, b.Dir); err != nil {
		return nil, err
	}
	if err := syncDir(s.dir); err != nil {
		return nil, err
	}
	c := *b
	s.cache[b.Digest] = &c
	s.log.Info("imported build", "digest", b.Digest, "files", b.Files, "bytes", b.Size)
	return b, nil
}

// GC removes every build for which keep returns false, and returns the
// digests it removed. It never removes a build whose import with that
// expected digest is in progress, nor one that Import returned after this GC
// started; a build Import returned earlier must be recorded by the caller
// (so that keep reports it) before GC runs. Each build is first renamed to a
// .tmp- name, so a crash mid-removal never leaves a partial build under its
// digest. keep is called without locks held.
func (s *Store) GC(keep func(digest string) bool) (removed []string, err error) {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	s.mu.Lock()
	s.gcEpoch++
	epoch := s.gcEpoch
	s.mu.Unlock()
	digests, err := s.List()
	if err != nil {
		return nil, err
	}
	for _, d := range digests {
		if keep(d) {
			continue
		}
		gone, err := s.remove(d, epoch)
		if err != nil {
			return removed, fmt.Errorf("gc build %s: %w", d, err)
		}
		if gone {
			removed = append(removed, d)
		}
	}
	return removed, nil
}

// remove takes build d out of view and deletes it, unless an import of it
// is in progress or Import returned it during GC run epoch.
func (s *Store) remove(d string, epoch uint64) (bool, error) {
	s.mu.Lock()
	if e, ok := s.returned[d]; s.importing[d] > 0 || ok && e == epoch {
		s.mu.Unlock()
		return false, nil
	}
	trash, err := os.MkdirTemp(s.dir, tmpPrefix+"gc-")
	if err != nil {
		s.mu.Unlock()
		return false, err
	}
	dst := filepath.Join(trash, d)
	err = os.Rename(filepath.Join(s.dir, d), dst)
	if err == nil {
		delete(s.cache, d)
		delete(s.returned, d)
		err = syncDir(s.dir)
	}
	s.mu.Unlock()
	if err != nil {
		_ = removeTree(trash)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	s.log.Info("removed build", "digest", d)
	return true, removeTree(trash)
}

// removeTree removes a directory tree that may have been made read-only.
// Only directories are made writable again (through an os.Root, so symlinks
// in the tree are never followed out of it).
func removeTree(p string) error {
	if err := os.Chmod(p, 0o700); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	root, err := os.OpenRoot(p)
	if err != nil {
		return err
	}
	werr := fs.WalkDir(root.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || name == "." {
			return nil // best effort; RemoveAll reports what is left
		}
		return root.Chmod(name, 0o700)
	})
	root.Close()
	if err := os.RemoveAll(p); err != nil {
		return err
	}
	return werr
}

// syncfs flushes the file system holding root: every file and directory
// the extraction wrote, in one call.
func syncfs(root *os.Root) error {
	f, err := root.Open(".")
	if err != nil {
		return err
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Syncfs(int(fd)) }); err != nil {
		return err
	}
	return serr
}

// syncDir fsyncs a directory so a rename in it survives a power cut.
func syncDir(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", p, err)
	}
	return nil
}
