package build

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestStore_ImportFormats ensures tar, tar.gz and tar.zst unpack to the
// same read-only tree, the digest is the SHA-256 of the upload, modes are
// normalized (no write, setuid, setgid or sticky bits; everyone can read)
// and owners come from the importing process, not the tarball.
func TestStore_ImportFormats(t *testing.T) {
	mt := time.Date(2023, 3, 4, 5, 6, 7, 0, time.UTC)
	ents := []ent{
		dir("./"),
		ent{name: "./Procfile", typ: '0', body: "web: ./bin/server\nworker: ./bin/worker --queue=default\n", mode: 0o600, uid: 4242, mt: mt},
		file("./berth.json", `{"processes":{"web":{"healthcheck":{"http":"/up","interval":"2s"},"stop_signal":"SIGINT"}}}`),
		ent{name: "./bin/server", typ: '0', body: "#!/bin/sh\necho hi\n", mode: 0o4755, uid: 4242},
		ent{name: "./bin/worker", typ: '0', body: "#!/bin/sh\n", mode: 0o2711},
		ent{name: "./tmp/", typ: '5', mode: 0o1777},
		ent{name: "./secret/", typ: '5', mode: 0o700},
		file("./secret/key", "k"),
		file("implicit/parent/file", "no directory entries before me"),
	}
	plain := mkTar(t, ents...)
	var wantSize int64
	for _, e := range ents {
		wantSize += int64(len(e.body))
	}
	uploads := map[string][]byte{"tar": plain, "gzip": gz(t, plain), "zstd": zst(t, plain)}
	for name, data := range uploads {
		t.Run(name, func(t *testing.T) {
			s := newStore(t, Limits{})
			b, err := s.Import(context.Background(), bytes.NewReader(data), sum(data))
			if err != nil {
				t.Fatal(err)
			}
			if b.Digest != sum(data) || b.Dir != filepath.Join(s.Dir(), sum(data)) || b.Existed {
				t.Fatalf("build = %+v, want digest %s, not existed", b, sum(data))
			}
			if b.Files != 6 || b.Size != wantSize {
				t.Errorf("Files, Size = %d, %d", b.Files, b.Size)
			}
			if got := b.Procfile.Types(); !slices.Equal(got, []string{"web", "worker"}) {
				t.Errorf("Procfile types = %v", got)
			}
			if hc := b.Manifest.Processes["web"].Healthcheck; hc == nil || hc.HTTP != "/up" || time.Duration(hc.Interval) != 2*time.Second {
				t.Errorf("manifest = %+v", b.Manifest)
			}
			want := map[string]os.FileMode{
				".":                    os.ModeDir | 0o555,
				"Procfile":             0o444,
				"berth.json":           0o444,
				"bin":                  os.ModeDir | 0o555,
				"bin/server":           0o555,
				"bin/worker":           0o555,
				"tmp":                  os.ModeDir | 0o555,
				"secret":               os.ModeDir | 0o555,
				"secret/key":           0o444,
				"implicit":             os.ModeDir | 0o555,
				"implicit/parent":      os.ModeDir | 0o555,
				"implicit/parent/file": 0o444,
			}
			got := map[string]os.FileMode{}
			err = filepath.WalkDir(b.Dir, func(p string, d os.DirEntry, err error) error {
				if err != nil {
					return err
				}
				fi, err := os.Lstat(p)
				if err != nil {
					return err
				}
				rel, _ := filepath.Rel(b.Dir, p)
				got[rel] = fi.Mode()
				if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Getuid() {
					t.Errorf("%s is owned by uid %d, want %d", rel, st.Uid, os.Getuid())
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for p, m := range want {
				if got[p] != m {
					t.Errorf("%s: mode %v, want %v", p, got[p], m)
				}
			}
			if len(got) != len(want) {
				t.Errorf("tree = %v, want %v", got, want)
			}
			fi, err := os.Stat(filepath.Join(b.Dir, "Procfile"))
			if err != nil || !fi.ModTime().Equal(mt) {
				t.Errorf("Procfile mtime = %v (%v), want %v", fi.ModTime(), err, mt)
			}
			if f, err := os.OpenFile(filepath.Join(b.Dir, "new"), os.O_CREATE|os.O_WRONLY, 0o644); err == nil && os.Getuid() != 0 {
				f.Close()
				t.Errorf("could create a file in the read-only build")
			} else if f != nil {
				f.Close()
			}
		})
	}
}

// failReader fails the test if the body is read.
type failReader struct{ t *testing.T }

func (r failReader) Read([]byte) (int, error) {
	r.t.Error("body read although the build exists")
	return 0, io.ErrUnexpectedEOF
}

// TestStore_ImportSameDigestTwice ensures a second import of the same
// tarball reuses the build: unpacked once, and not even read when the
// expected digest is given.
func TestStore_ImportSameDigestTwice(t *testing.T) {
	s := newStore(t, Limits{})
	data := gz(t, mkTar(t, procfile, exe("server", "x")))
	first, err := importBytes(t, s, data)
	if err != nil || first.Existed {
		t.Fatalf("first import: %+v, %v", first, err)
	}
	marker := filepath.Join(first.Dir, "server")
	fi1, _ := os.Stat(marker)

	second, err := importBytes(t, s, data)
	if err != nil || !second.Existed || second.Digest != first.Digest || second.Dir != first.Dir {
		t.Fatalf("second import without digest: %+v, %v", second, err)
	}
	third, err := s.Import(context.Background(), failReader{t}, first.Digest)
	if err != nil || !third.Existed || third.Procfile.Entries[0].Command != "./server" {
		t.Fatalf("third import with digest: %+v, %v", third, err)
	}
	fi2, _ := os.Stat(marker)
	if !os.SameFile(fi1, fi2) {
		t.Error("build was unpacked again")
	}
	if names := listDir(t, s.Dir()); !slices.Equal(names, []string{first.Digest}) {
		t.Errorf("builds dir = %v", names)
	}
}

// TestStore_ImportConcurrentSame ensures two concurrent imports of the same
// tarball both succeed with one build on disk.
func TestStore_ImportConcurrentSame(t *testing.T) {
	s := newStore(t, Limits{})
	data := zst(t, bigTar(t, 50, 4096))
	var wg sync.WaitGroup
	builds := make([]*Build, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() { builds[i], errs[i] = importBytes(t, s, data) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if builds[0].Digest != builds[1].Digest || builds[0].Existed == builds[1].Existed && builds[0].Existed {
		t.Fatalf("builds = %+v, %+v", builds[0], builds[1])
	}
	if names := listDir(t, s.Dir()); !slices.Equal(names, []string{sum(data)}) {
		t.Errorf("builds dir = %v", names)
	}
}

// TestStore_ImportLinks ensures hard links to earlier files and symlinks
// that stay inside the tree (including dangling ones and links through
// links) are created as such.
func TestStore_ImportLinks(t *testing.T) {
	s := newStore(t, Limits{})
	b, err := importBytes(t, s, mkTar(t,
		procfile,
		dir("lib"),
		exe("lib/libfoo.so.1.2", "ELF"),
		symlink("lib/libfoo.so.1", "libfoo.so.1.2"),
		symlink("lib/libfoo.so", "./libfoo.so.1"),
		dir("bin"),
		hardlink("bin/server", "lib/libfoo.so.1.2"),
		symlink("bin/lib", "../lib"),
		symlink("current", "."),
		symlink("via", "current/bin/lib/libfoo.so"),
		symlink("dangling", "not/yet/there"),
	))
	if err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"lib/libfoo.so": "./libfoo.so.1", "bin/lib": "../lib", "dangling": "not/yet/there"} {
		if got, err := os.Readlink(filepath.Join(b.Dir, link)); err != nil || got != target {
			t.Errorf("readlink %s = %q, %v; want %q", link, got, err, target)
		}
	}
	if got, err := os.ReadFile(filepath.Join(b.Dir, "via")); err != nil || string(got) != "ELF" {
		t.Errorf("read through symlinks = %q, %v", got, err)
	}
	a, _ := os.Stat(filepath.Join(b.Dir, "bin/server"))
	c, _ := os.Stat(filepath.Join(b.Dir, "lib/libfoo.so.1.2"))
	if !os.SameFile(a, c) || a.Mode() != 0o555 {
		t.Errorf("hard link: same file %v, mode %v", os.SameFile(a, c), a.Mode())
	}
	if b.Files != 3 {
		t.Errorf("Files = %d, want 3 (hard links count)", b.Files)
	}
}

// TestStore_GetListGC ensures Get reads a build back, List lists builds
// only, and GC removes exactly what keep rejects, even read-only trees.
func TestStore_GetListGC(t *testing.T) {
	s := newStore(t, Limits{})
	var digests []string
	for _, cmd := range []string{"./a", "./b", "./c"} {
		b, err := importBytes(t, s, mkTar(t, file("Procfile", "web: "+cmd+"\n"), dir("ro"), file("ro/f", cmd)))
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, b.Digest)
	}
	slices.Sort(digests)
	if err := os.Mkdir(filepath.Join(s.Dir(), "not-a-digest"), 0o755); err != nil {
		t.Fatal(err)
	}
	if l, err := s.List(); err != nil || !slices.Equal(l, digests) {
		t.Fatalf("List = %v, %v; want %v", l, err, digests)
	}
	// A fresh store reads builds from disk, not from its cache.
	s2, err := Open(Config{Dir: s.Dir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s2.Get(digests[0])
	if err != nil || b.Files != 2 || len(b.Procfile.Entries) != 1 || b.Existed {
		t.Fatalf("Get = %+v, %v", b, err)
	}
	if _, err := s2.Get(sum([]byte("nothing"))); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get unknown = %v, want ErrNotFound", err)
	}
	if _, err := s2.Get("../../etc"); !errors.Is(err, ErrInvalidDigest) {
		t.Errorf("Get invalid = %v, want ErrInvalidDigest", err)
	}
	if s2.Has("../" + digests[0][3:]) {
		t.Error("Has accepted an invalid digest")
	}

	removed, err := s2.GC(func(d string) bool { return d == digests[1] })
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{digests[0], digests[2]}) {
		t.Errorf("GC removed %v", removed)
	}
	if names := listDir(t, s.Dir()); !slices.Equal(names, []string{digests[1], "not-a-digest"}) {
		t.Errorf("builds dir after GC = %v", names)
	}
	if _, err := s2.Get(digests[0]); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after GC = %v, want ErrNotFound", err)
	}
}

// TestStore_GCKeepsBuildImportedDuringGC ensures a build that Import hands
// out while a GC runs is not removed by that GC.
func TestStore_GCKeepsBuildImportedDuringGC(t *testing.T) {
	s := newStore(t, Limits{})
	data := mkTar(t, procfile)
	b, err := importBytes(t, s, data)
	if err != nil {
		t.Fatal(err)
	}
	removed, err := s.GC(func(d string) bool {
		// The agent deploys this build again while GC is deciding.
		again, err := s.Import(context.Background(), bytes.NewReader(data), "")
		if err != nil || !again.Existed {
			t.Errorf("Import during GC = %+v, %v", again, err)
		}
		return false
	})
	if err != nil || len(removed) != 0 || !s.Has(b.Digest) {
		t.Fatalf("GC removed %v (%v); build present: %v", removed, err, s.Has(b.Digest))
	}
}

// TestStore_ImportSparse ensures a GNU sparse file (written by tar(1))
// unpacks to its full size with its data in place.
func TestStore_ImportSparse(t *testing.T) {
	data := sparseTar(1 << 20)(t)
	if i := bytes.Index(data, []byte("holes\x00")); i < 0 || data[i+156] != tar.TypeGNUSparse {
		t.Fatal("tar(1) did not write an old GNU sparse entry")
	}
	s := newStore(t, Limits{})
	b, err := importBytes(t, s, data)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(b.Dir, "holes"))
	if err != nil || len(got) != 1<<20 || got[len(got)-1] != 1 || bytes.Count(got, []byte{0}) != 1<<20-1 {
		t.Fatalf("sparse file: %d bytes, %v", len(got), err)
	}
}

// TestStore_ImportManyDirs ensures files handed to the writer pool land
// with the right content, mode and mtime when many directories are
// written at once, interleaved with files too large to queue (written by
// the extractor itself), empty files, files directly in the root, and
// hard links to files that may still be queued.
func TestStore_ImportManyDirs(t *testing.T) {
	type want struct {
		body string
		mode os.FileMode
		mt   time.Time
	}
	wants := map[string]want{}
	ents := []ent{procfile}
	wants["Procfile"] = want{procfile.body, 0o444, time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)}
	big := strings.Repeat("0123456789abcdef", (maxQueuedFile+4096)/16)
	for d := range 12 {
		for i := range 30 {
			name := fmt.Sprintf("d%02d/f%02d", d, i)
			e := ent{name: name, typ: tar.TypeReg, body: fmt.Sprintf("%s %d\n", name, d*i), mode: 0o644,
				mt: time.Date(2020, 1, 1+d, i, 0, 0, 0, time.UTC)}
			w := want{e.body, 0o444, e.mt}
			switch {
			case i == 7:
				e.body, w.body = big+name, big+name
			case i == 11:
				e.body, w.body = "", ""
			case i%5 == 0:
				e.mode, w.mode = 0o755, 0o555
			}
			ents = append(ents, e)
			wants[name] = w
		}
		// A hard link in another directory to the file just queued, and
		// a file in the root between directories.
		target := fmt.Sprintf("d%02d/f29", d)
		ents = append(ents, hardlink(fmt.Sprintf("links/l%02d", d), target), file(fmt.Sprintf("root%02d", d), target))
		wants[fmt.Sprintf("links/l%02d", d)] = wants[target]
		wants[fmt.Sprintf("root%02d", d)] = want{target, 0o444, time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)}
	}
	s := newStore(t, Limits{})
	b, err := importBytes(t, s, mkTar(t, ents...))
	if err != nil {
		t.Fatal(err)
	}
	if b.Files != len(wants) {
		t.Errorf("Files = %d, want %d", b.Files, len(wants))
	}
	for name, w := range wants {
		p := filepath.Join(b.Dir, name)
		got, err := os.ReadFile(p)
		if err != nil || string(got) != w.body {
			t.Errorf("%s = %.40q (%d bytes), %v; want %.40q (%d bytes)", name, got, len(got), err, w.body, len(w.body))
			continue
		}
		fi, err := os.Stat(p)
		if err != nil || fi.Mode() != w.mode || !fi.ModTime().Equal(w.mt) {
			t.Errorf("%s: mode %v mtime %v (%v), want %v %v", name, fi.Mode(), fi.ModTime(), err, w.mode, w.mt)
		}
	}
	for d := range 12 {
		a, _ := os.Stat(filepath.Join(b.Dir, fmt.Sprintf("links/l%02d", d)))
		c, _ := os.Stat(filepath.Join(b.Dir, fmt.Sprintf("d%02d/f29", d)))
		if !os.SameFile(a, c) {
			t.Errorf("links/l%02d is not a hard link to d%02d/f29", d, d)
		}
	}
}
