package build

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// bigTar returns an uncompressed tarball with a Procfile and n files of
// size bytes each.
func bigTar(t testing.TB, n, size int) []byte {
	t.Helper()
	ents := []ent{procfile, dir("data")}
	body := strings.Repeat("berth ", size/6+1)[:size]
	for i := range n {
		ents = append(ents, file(fmt.Sprintf("data/f%04d", i), body))
	}
	return mkTar(t, ents...)
}

// stallReader serves data up to at bytes, then reports that on reached and
// blocks until ctx is done (or forever if ctx is nil).
type stallReader struct {
	data    []byte
	at      int
	off     int
	reached func()
	ctx     context.Context
}

func (r *stallReader) Read(p []byte) (int, error) {
	if r.off >= r.at {
		if r.reached != nil {
			r.reached()
			r.reached = nil
		}
		if r.ctx == nil {
			select {}
		}
		<-r.ctx.Done()
		return 0, r.ctx.Err()
	}
	n := copy(p, r.data[r.off:min(r.at, r.off+len(p), r.off+64<<10)])
	r.off += n
	return n, nil
}

// slowImportHelper runs in a re-executed test binary: it imports a tarball
// that stalls halfway into the store at $BERTH_BUILD_TEST_DIR, prints
// "stalled" once half has been read, and blocks until it is killed.
func slowImportHelper() int {
	dir := os.Getenv("BERTH_BUILD_TEST_DIR")
	s, err := Open(Config{Dir: dir}, hclog.NewNullLogger())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	data := bigTar(&testing.B{}, 200, 16<<10)
	r := &stallReader{data: data, at: len(data) / 2, reached: func() { fmt.Println("stalled") }}
	_, err = s.Import(context.Background(), r, "")
	fmt.Fprintln(os.Stderr, "import returned:", err)
	return 1
}

// tmpDirs returns the .tmp-* names in dir.
func tmpDirs(t *testing.T, dir string) []string {
	var out []string
	for _, n := range listDir(t, dir) {
		if strings.HasPrefix(n, tmpPrefix) {
			out = append(out, n)
		}
	}
	return out
}

// TestStore_ImportKilled ensures that a SIGKILL in the middle of an import
// leaves no build visible, only a .tmp- directory, which the next Open
// removes.
func TestStore_ImportKilled(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "builds")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=slow-import", "BERTH_BUILD_TEST_DIR="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "stalled\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper said %q (%v), stderr: %s", line, err, stderr.String())
	}
	// The reader stalls once half the upload has been handed out; wait
	// (bounded) for files of the first half to be on disk, so the kill
	// really lands mid-extraction.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, _ := filepath.Glob(filepath.Join(dir, tmpPrefix+"*", "data", "f0050"))
		if len(m) > 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("no partial extraction appeared; stderr: %s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("helper exit = %v, want killed", err)
	}

	names := listDir(t, dir)
	if tmps := tmpDirs(t, dir); len(tmps) != 1 || len(names) != 1 {
		t.Fatalf("after the kill the builds dir holds %v, want exactly one .tmp- dir", names)
	}
	s, err := Open(Config{Dir: dir}, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	if names := listDir(t, dir); len(names) != 0 {
		t.Fatalf("Open left %v", names)
	}
	if l, err := s.List(); err != nil || len(l) != 0 {
		t.Fatalf("List = %v, %v; want nothing", l, err)
	}
}

// TestStore_ImportCancelled ensures that cancelling the context midway
// stops the import, returns the context's error and leaves nothing behind.
func TestStore_ImportCancelled(t *testing.T) {
	s := newStore(t, Limits{})
	data := bigTar(t, 200, 16<<10)
	for _, tc := range []struct {
		name string
		data []byte
	}{{"tar", data}, {"gzip", gz(t, data)}, {"zstd", zst(t, data)}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r := &stallReader{data: tc.data, at: len(tc.data) / 2, ctx: ctx}
			r.reached = cancel
			_, err := s.Import(ctx, r, "")
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Import error = %v, want context.Canceled", err)
			}
			if names := listDir(t, s.Dir()); len(names) != 0 {
				t.Fatalf("builds dir holds %v after a cancelled import", names)
			}
		})
	}
}

// TestOpen_RemovesStaleTemp ensures Open removes leftover extractions, even
// read-only ones with symlinks pointing out, and keeps finished builds.
func TestOpen_RemovesStaleTemp(t *testing.T) {
	s := newStore(t, Limits{})
	b, err := importBytes(t, s, mkTar(t, procfile))
	if err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(s.Dir(), tmpPrefix+"123")
	if err := os.MkdirAll(filepath.Join(stale, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "a", "b", "f"), []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Dir(outside), filepath.Join(stale, "a", "out")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a/b", "a", "."} {
		if err := os.Chmod(filepath.Join(stale, d), 0o555); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Open(Config{Dir: s.Dir()}, hclog.NewNullLogger()); err != nil {
		t.Fatal(err)
	}
	if names := listDir(t, s.Dir()); !slices.Equal(names, []string{b.Digest}) {
		t.Fatalf("builds dir = %v, want only %s", names, b.Digest)
	}
	if got, err := os.ReadFile(outside); err != nil || string(got) != "keep me" {
		t.Fatalf("file outside the stale dir: %q, %v", got, err)
	}
}

var _ = tar.TypeReg
var _ io.Reader = (*stallReader)(nil)
