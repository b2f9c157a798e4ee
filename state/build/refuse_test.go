package build

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestStore_ImportRefuses ensures every hostile or broken tarball is refused
// with the right error kind, an error naming the entry, and nothing new in
// the builds directory.
func TestStore_ImportRefuses(t *testing.T) {
	longName := strings.Repeat("a", 60)
	deep := "a/b/c/d/file"
	zeroBomb := func(t *testing.T) []byte {
		// 64 MiB of zeros in one file: a few KiB as zstd, far beyond
		// the default 1000:1 ratio. MaxBytes (4 GiB) would not stop it.
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Name: "Procfile", Typeflag: tar.TypeReg, Size: 14, Mode: 0o644})
		tw.Write([]byte("web: ./server\n"))
		const n = 64 << 20
		tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Size: n, Mode: 0o644})
		tw.Write(make([]byte, n))
		tw.Close()
		return zst(t, buf.Bytes())
	}
	good := mkTar(t, procfile, exe("server", "#!/bin/sh\n"))
	cases := []struct {
		name   string
		data   func(t *testing.T) []byte
		limits Limits
		expect string // digest passed to Import
		kind   error
		msg    string // must appear in the error
	}{
		{name: "absolute path", data: tarOf(procfile, file("/etc/cron.d/x", "x")), kind: ErrUnsafeEntry, msg: `"/etc/cron.d/x": unsafe entry: absolute path`},
		{name: "dotdot", data: tarOf(procfile, file("../escape", "x")), kind: ErrUnsafeEntry, msg: `"../escape": unsafe entry: path contains ".."`},
		{name: "dotdot inside", data: tarOf(procfile, file("a/../../escape", "x")), kind: ErrUnsafeEntry, msg: `"a/../../escape"`},
		{name: "dotdot in gzip", data: gzOf(procfile, file("./../x", "x")), kind: ErrUnsafeEntry, msg: `"./../x"`},
		{name: "symlink absolute", data: tarOf(procfile, symlink("etc", "/etc")), kind: ErrUnsafeEntry, msg: `"etc": unsafe entry: symlink target "/etc" is absolute`},
		{name: "symlink relative out", data: tarOf(procfile, dir("a"), symlink("a/up", "../../etc")), kind: ErrUnsafeEntry, msg: `"a/up": unsafe entry: symlink target "../../etc" leaves the build directory`},
		{name: "symlink chain out", data: tarOf(procfile, dir("d"), symlink("d/y", ".."), symlink("x", "d/y/..")), kind: ErrUnsafeEntry, msg: `"x"`},
		{name: "symlink made to escape by a later entry", data: tarOf(procfile, symlink("x", "d/y/.."), dir("d"), symlink("d/y", "..")), kind: ErrUnsafeEntry, msg: `"x": unsafe entry: symlink target "d/y/.." leaves`},
		{name: "symlink into dir then up", data: tarOf(procfile, dir("a"), dir("a/b"), symlink("a/b/l", "../.."), symlink("x", "a/b/l/..")), kind: ErrUnsafeEntry, msg: `"x": unsafe entry: symlink target "a/b/l/.." leaves`},
		{name: "symlink loop", data: tarOf(procfile, symlink("a", "b"), symlink("b", "a")), kind: ErrUnsafeEntry, msg: "too many levels of symlinks"},
		{name: "write through symlink to dir", data: tarOf(procfile, dir("real"), symlink("link", "real"), file("link/x", "x")), kind: ErrUnsafeEntry, msg: `"link/x": unsafe entry: writes through symlink "link"`},
		{name: "file replaces symlink", data: tarOf(procfile, file("target", "a"), symlink("link", "target"), file("link", "b")), kind: ErrUnsafeEntry, msg: `"link": unsafe entry: duplicate entry would write through an earlier symlink`},
		{name: "hardlink absolute", data: tarOf(procfile, hardlink("pw", "/etc/passwd")), kind: ErrUnsafeEntry, msg: `"pw": unsafe entry: hard link target: absolute path`},
		{name: "hardlink dotdot", data: tarOf(procfile, hardlink("pw", "../x")), kind: ErrUnsafeEntry, msg: `"pw": unsafe entry: hard link target: path contains ".."`},
		{name: "hardlink not yet extracted", data: tarOf(procfile, hardlink("early", "late"), file("late", "x")), kind: ErrUnsafeEntry, msg: `"early": unsafe entry: hard link target "late" is not an earlier entry`},
		{name: "hardlink to symlink", data: tarOf(procfile, symlink("s", "Procfile"), hardlink("h", "s")), kind: ErrUnsafeEntry, msg: `hard link target "s" is not a regular file`},
		{name: "hardlink to dir", data: tarOf(procfile, dir("d"), hardlink("h", "d")), kind: ErrUnsafeEntry, msg: `hard link target "d" is not a regular file`},
		{name: "hardlink through symlink", data: tarOf(procfile, dir("d"), file("d/f", "x"), symlink("s", "d"), hardlink("h", "s/f")), kind: ErrUnsafeEntry, msg: `hard link target "s/f" is not an earlier entry`},
		{name: "char device", data: tarOf(procfile, ent{name: "null", typ: tar.TypeChar, mode: 0o666}), kind: ErrUnsafeEntry, msg: `"null": unsafe entry: character device`},
		{name: "block device", data: tarOf(procfile, ent{name: "sda", typ: tar.TypeBlock, mode: 0o660}), kind: ErrUnsafeEntry, msg: `"sda": unsafe entry: block device`},
		{name: "fifo", data: tarOf(procfile, ent{name: "pipe", typ: tar.TypeFifo, mode: 0o644}), kind: ErrUnsafeEntry, msg: `"pipe": unsafe entry: FIFO`},
		{name: "contiguous file type", data: tarOf(procfile, ent{name: "c", typ: tar.TypeCont, mode: 0o644}), kind: ErrUnsafeEntry, msg: `"c": unsafe entry: unsupported entry type '7'`},
		{name: "file replaces dir", data: tarOf(procfile, dir("d"), file("d/x", "x"), file("d", "y")), kind: ErrUnsafeEntry, msg: `"d": unsafe entry: replaces an earlier directory`},
		{name: "dir replaces file", data: tarOf(procfile, file("d", "y"), dir("d")), kind: ErrUnsafeEntry, msg: `"d": unsafe entry: directory replaces an earlier file`},
		{name: "duplicate file", data: tarOf(procfile, file("f", "1"), hardlink("g", "f"), file("f", "2")), kind: ErrUnsafeEntry, msg: `"f": unsafe entry: duplicate entry would replace an earlier file`},
		{name: "file below a file", data: tarOf(procfile, file("f", "1"), file("f/g", "2")), kind: ErrUnsafeEntry, msg: `"f/g": unsafe entry: parent "f" is a file`},
		{name: "file replaces root", data: tarOf(file(".", "x")), kind: ErrUnsafeEntry, msg: "replaces the build root"},
		{name: "MaxBytes", data: tarOf(procfile, file("big", strings.Repeat("x", 2000))), limits: Limits{MaxBytes: 1000}, kind: ErrLimit, msg: `"big": limit exceeded: MaxBytes (1000)`},
		{name: "MaxEntries", data: tarOf(procfile, file("1", ""), file("2", ""), file("3", "")), limits: Limits{MaxEntries: 3}, kind: ErrLimit, msg: `"3": limit exceeded: MaxEntries (3)`},
		{name: "MaxPathLen", data: tarOf(procfile, file(longName, "x")), limits: Limits{MaxPathLen: 50}, kind: ErrLimit, msg: "MaxPathLen (50)"},
		{name: "MaxPathLen symlink target", data: tarOf(procfile, symlink("l", longName)), limits: Limits{MaxPathLen: 50}, kind: ErrLimit, msg: `"l": limit exceeded: MaxPathLen (50)`},
		{name: "MaxDepth", data: tarOf(procfile, file(deep, "x")), limits: Limits{MaxDepth: 4}, kind: ErrLimit, msg: `"a/b/c/d/file": limit exceeded: MaxDepth (4)`},
		{name: "name component too long", data: tarOf(procfile, file(strings.Repeat("n", 256), "x")), kind: ErrLimit, msg: "name component length (255)"},
		{name: "MaxRatio zstd bomb", data: zeroBomb, kind: ErrLimit, msg: `entry "zeros": limit exceeded: MaxRatio (1000)`},
		{name: "MaxRatio small cap gzip", data: func(t *testing.T) []byte {
			return gz(t, mkTar(t, procfile, file("zeros", string(make([]byte, 40<<20)))))
		}, limits: Limits{MaxRatio: 10}, kind: ErrLimit, msg: "MaxRatio (10)"},
		{name: "MaxRatio sparse file", data: sparseTar(64 << 20), kind: ErrLimit, msg: `entry "holes": limit exceeded: MaxRatio (1000)`},
		{name: "empty upload", data: bytesOf(nil), kind: ErrCorrupt, msg: "empty upload"},
		{name: "not an archive", data: bytesOf([]byte("hello, this is not a tarball at all")), kind: ErrCorrupt, msg: "not a tar, tar.gz or tar.zst archive"},
		{name: "xz", data: bytesOf([]byte("\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4F")), kind: ErrCorrupt, msg: "xz compression is not supported"},
		{name: "truncated tar in data", data: func(t *testing.T) []byte { return good[:1024+512+5] }, kind: ErrCorrupt, msg: `entry "server": truncated`},
		{name: "truncated tar at a header", data: func(t *testing.T) []byte { return good[:1024] }, kind: ErrCorrupt, msg: "no end-of-archive marker"},
		{name: "truncated tar in a header", data: func(t *testing.T) []byte { return good[:1024+100] }, kind: ErrCorrupt, msg: "truncated"},
		{name: "truncated gzip", data: func(t *testing.T) []byte { g := gz(t, good); return g[:len(g)-12] }, kind: ErrCorrupt},
		{name: "truncated zstd", data: func(t *testing.T) []byte { z := zst(t, good); return z[:len(z)/2] }, kind: ErrCorrupt},
		{name: "gzip bad checksum", data: func(t *testing.T) []byte {
			g := bytes.Clone(gz(t, good))
			g[len(g)-8] ^= 0xff // CRC-32 in the trailer
			return g
		}, kind: ErrCorrupt, msg: "gzip"},
		{name: "corrupt tar header", data: func(t *testing.T) []byte {
			b := bytes.Clone(good)
			b[1024+148] = 'x' // checksum of the second header
			return b
		}, kind: ErrCorrupt},
		{name: "garbage after gzip", data: func(t *testing.T) []byte { return append(gz(t, good), "garbage"...) }, kind: ErrCorrupt},
		{name: "no Procfile", data: tarOf(exe("server", "x")), kind: ErrNoProcfile, msg: "add a file named Procfile"},
		{name: "Procfile is a directory", data: tarOf(dir("Procfile")), kind: ErrProcfile},
		{name: "bad Procfile", data: tarOf(file("Procfile", "web: ./a\nweb: ./b\n")), kind: ErrProcfile, msg: `line 2: process type "web" already declared on line 1`},
		{name: "10,000 process types", data: tarOf(file("Procfile", manyTypes(10000))), kind: ErrProcfile, msg: "line 1001: more than 1000 process types (MaxProcfileTypes)"},
		{name: "bad manifest", data: tarOf(procfile, file("berth.json", `{"processes":{"web":{"stop_sginal":"SIGTERM"}}}`)), kind: ErrManifest, msg: "stop_sginal"},
		{name: "manifest names unknown type", data: tarOf(procfile, file("berth.json", `{"processes":{"worker":{"stop_signal":"SIGINT"}}}`)), kind: ErrManifest, msg: `"worker" is not declared in the Procfile`},
		{name: "digest mismatch", data: bytesOf(good), expect: strings.Repeat("ab", 32), kind: ErrDigestMismatch, msg: "expected abab"},
		{name: "invalid expected digest", data: bytesOf(good), expect: "ABC", kind: ErrInvalidDigest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t, tc.limits)
			// A build already present must stay, and nothing else may
			// appear.
			if _, err := importBytes(t, s, good); err != nil {
				t.Fatal(err)
			}
			before := listDir(t, s.Dir())
			_, err := s.Import(context.Background(), bytes.NewReader(tc.data(t)), tc.expect)
			if !errors.Is(err, tc.kind) {
				t.Fatalf("Import error = %v, want %v", err, tc.kind)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("Import error is more than one line: %q", err)
			}
			if tc.msg != "" && !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("Import error %q does not contain %q", err, tc.msg)
			}
			if after := listDir(t, s.Dir()); !slices.Equal(before, after) {
				t.Errorf("builds dir changed: before %v, after %v", before, after)
			}
			var ue *UnsafeEntryError
			if errors.Is(err, ErrUnsafeEntry) && (!errors.As(err, &ue) || ue.Entry == "" || ue.Reason == "") {
				t.Errorf("unsafe entry error %v does not carry the entry and reason", err)
			}
		})
	}
}

func tarOf(ents ...ent) func(*testing.T) []byte {
	return func(t *testing.T) []byte { return mkTar(t, ents...) }
}

func gzOf(ents ...ent) func(*testing.T) []byte {
	return func(t *testing.T) []byte { return gz(t, mkTar(t, ents...)) }
}

func bytesOf(b []byte) func(*testing.T) []byte {
	return func(*testing.T) []byte { return b }
}

// sparseTar returns a GNU-format tarball made by tar(1) holding a Procfile
// and a sparse file of size bytes with one byte of data: a few KiB that
// unpack to size bytes.
func sparseTar(size int64) func(t *testing.T) []byte {
	return func(t *testing.T) []byte {
		src := t.TempDir()
		if err := os.WriteFile(filepath.Join(src, "Procfile"), []byte("web: ./x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(filepath.Join(src, "holes"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte{1}, size-1); err != nil {
			t.Fatal(err)
		}
		f.Close()
		out := filepath.Join(t.TempDir(), "sparse.tar")
		if msg, err := exec.Command("tar", "--format=gnu", "--sparse", "-C", src, "-cf", out, "Procfile", "holes").CombinedOutput(); err != nil {
			t.Fatalf("tar: %v: %s", err, msg)
		}
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if len(data) > 64<<10 {
			t.Fatalf("sparse tarball is %d bytes; tar did not store holes", len(data))
		}
		return data
	}
}

// manyTypes is a Procfile declaring n process types.
func manyTypes(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "t%d: sleep 1000\n", i)
	}
	return b.String()
}
