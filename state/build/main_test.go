package build

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"go.uber.org/goleak"
)

// helperEnv selects a helper mode when the test binary is re-executed.
const helperEnv = "BERTH_BUILD_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "slow-import" {
		os.Exit(slowImportHelper())
	}
	goleak.VerifyTestMain(m)
}

// ent describes one tar entry for the test tarballs.
type ent struct {
	name string
	typ  byte
	body string
	link string
	mode int64
	size int64 // header size if body is empty and size > 0 (for limits)
	uid  int
	mt   time.Time
}

func file(name, body string) ent { return ent{name: name, typ: tar.TypeReg, body: body, mode: 0o644} }
func exe(name, body string) ent  { return ent{name: name, typ: tar.TypeReg, body: body, mode: 0o755} }
func dir(name string) ent        { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, target string) ent {
	return ent{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}
func hardlink(name, target string) ent { return ent{name: name, typ: tar.TypeLink, link: target} }

// procfile is the minimal valid Procfile entry most test tarballs carry.
var procfile = file("Procfile", "web: ./server\n")

// mkTar writes entries as an uncompressed tar archive.
func mkTar(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		mt := e.mt
		if mt.IsZero() {
			mt = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
		}
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, ModTime: mt, Uid: e.uid, Gid: e.uid, Format: tar.FormatPAX}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("write header %q: %v", e.name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatalf("write body %q: %v", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gz and zst compress data with the formats Import accepts.
func gz(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zst(t testing.TB, data []byte) []byte {
	t.Helper()
	w, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	return w.EncodeAll(data, nil)
}

func sum(data []byte) string { return fmt.Sprintf("%x", sha256.Sum256(data)) }

// newStore opens a store in a fresh directory with the given limits.
func newStore(t testing.TB, limits Limits) *Store {
	t.Helper()
	s, err := Open(Config{Dir: filepath.Join(t.TempDir(), "builds"), Limits: limits}, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// listDir returns the names in dir, sorted.
func listDir(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

// importBytes imports data with no expected digest.
func importBytes(t testing.TB, s *Store, data []byte) (*Build, error) {
	t.Helper()
	return s.Import(context.Background(), bytes.NewReader(data), "")
}
