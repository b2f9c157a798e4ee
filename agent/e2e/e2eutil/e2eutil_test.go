package e2eutil

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRepoRoot(t *testing.T) {
	root := RepoRoot(t)
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatal(err)
	}
	if wd, _ := os.Getwd(); !strings.HasPrefix(wd, root) {
		t.Fatalf("root %s is not above %s", root, wd)
	}
}

func TestTail(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{{"a\nb\nc\n", 2, "b\nc"}, {"a\nb", 5, "a\nb"}, {"", 3, ""}, {"a\nb\n", 0, ""}} {
		if got := Tail(c.in, c.n); got != c.want {
			t.Errorf("Tail(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}

func TestCleanEnv(t *testing.T) {
	t.Setenv("BERTH_SOCKET", "/elsewhere")
	t.Setenv("E2EUTIL_KEPT", "1")
	env := CleanEnv("X=1")
	if slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "BERTH_") }) {
		t.Errorf("BERTH_* left in %v", env)
	}
	if !slices.Contains(env, "E2EUTIL_KEPT=1") || env[len(env)-1] != "X=1" {
		t.Errorf("env = %v", env)
	}
}

func TestWaitFor(t *testing.T) {
	n := 0
	WaitFor(t, "the third poll", 5*time.Second, func() (bool, string) { n++; return n == 3, "" })
	if n != 3 {
		t.Fatalf("%d polls", n)
	}
}

// TestRewriteTarball rewrites one file of a tarball and keeps the
// others, their modes and a directory entry as they were.
func TestRewriteTarball(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, f := range []struct {
		name, body string
		typ        byte
		mode       int64
	}{{"./", "", tar.TypeDir, 0o755}, {"./Procfile", "web: ./hello\n", tar.TypeReg, 0o644}, {"./hello", "#!/bin/sh\n", tar.TypeReg, 0o755}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: f.typ, Mode: f.mode, Size: int64(len(f.body))}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(f.body))
	}
	tw.Close()
	zw.Close()
	path := filepath.Join(t.TempDir(), "app.tar.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out := RewriteTarball(t, path, "Procfile", func(name string, body []byte) []byte {
		if name == "Procfile" {
			return append(body, "release: sleep 8\n"...)
		}
		return body
	})
	zr, err := gzip.NewReader(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	modes := map[string]int64{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[h.Name], modes[h.Name] = string(b), h.Mode
	}
	if got["./Procfile"] != "web: ./hello\nrelease: sleep 8\n" || got["./hello"] != "#!/bin/sh\n" || modes["./hello"] != 0o755 || len(got) != 3 {
		t.Fatalf("rewritten tarball: %q, modes %v", got, modes)
	}
}
