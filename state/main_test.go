package state

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"
)

// helperEnv selects a helper mode when the test binary is re-executed as a
// child process (as Go's os/exec tests do); helperDBEnv is the database.
const (
	helperEnv   = "BERTH_STATE_TEST_HELPER"
	helperDBEnv = "BERTH_STATE_TEST_DB"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		goleak.VerifyTestMain(m)
	case "crash-writer":
		os.Exit(crashWriter(os.Getenv(helperDBEnv)))
	case "lock-holder":
		os.Exit(lockHolder(os.Getenv(helperDBEnv)))
	default:
		fmt.Fprintf(os.Stderr, "unknown helper mode %q\n", os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// lockHolder opens the store, says "locked" and holds the lock until its
// stdin closes.
func lockHolder(path string) int {
	s, err := Open(Config{Path: path}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("locked")
	io.Copy(io.Discard, os.Stdin)
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// crashWriter writes releases in a loop until it is killed. After each
// commit it reports on stdout (unbuffered) what is now durable:
// "created N", "activated N", "event S".
func crashWriter(path string) int {
	s, err := Open(Config{Path: path, LockTimeout: 10 * time.Second, MaxEvents: 50}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := s.CreateApp("crash"); err != nil && !errors.Is(err, ErrAppExists) {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for i := 0; ; i++ {
		r, err := s.CreateRelease("crash", NewRelease{
			Build:       testDigest(i),
			Config:      map[string]string{"I": fmt.Sprint(i), "PAD": strings.Repeat("x", i%700)},
			Description: fmt.Sprintf("Deploy %d", i),
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("created %d\n", r.Version)
		if r.Version%2 == 0 {
			if _, err := s.Activate("crash", r.Version); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			fmt.Printf("activated %d\n", r.Version)
		}
		if i%3 == 0 {
			e, err := s.AppendEvent("crash", "deploy", fmt.Sprintf("v%d", r.Version))
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			fmt.Printf("event %d\n", e.Seq)
		}
	}
}

// helperCommand re-executes the test binary in a helper mode on the
// database at path. A race-enabled child would sleep a second at exit
// (the race detector's atexit_sleep_ms); the tests do not need that.
func helperCommand(mode, path string) *exec.Cmd {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperDBEnv+"="+path,
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return cmd
}

// testDigest returns a valid, distinct build digest for i.
func testDigest(i int) string {
	sum := sha256.Sum256([]byte(fmt.Sprint("build ", i)))
	return hex.EncodeToString(sum[:])
}

// openTest opens a store on a fresh file in a temp dir and closes it when
// the test ends.
func openTest(t testing.TB) *Store {
	t.Helper()
	return openAt(t, t.TempDir()+"/berth.db", Config{})
}

func openAt(t testing.TB, path string, cfg Config) *Store {
	t.Helper()
	cfg.Path = path
	s, err := Open(cfg, hclog.NewNullLogger())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func mustApp(t testing.TB, s *Store, name string) App {
	t.Helper()
	a, err := s.CreateApp(name)
	if err != nil {
		t.Fatalf("CreateApp(%q): %v", name, err)
	}
	return a
}

func mustRelease(t testing.TB, s *Store, app string, nr NewRelease) Release {
	t.Helper()
	r, err := s.CreateRelease(app, nr)
	if err != nil {
		t.Fatalf("CreateRelease(%s): %v", app, err)
	}
	return r
}

// dump renders every bucket, key, value and sequence of the database, to
// show that a refused operation changed nothing.
func dump(t testing.TB, s *Store) string {
	t.Helper()
	var lines []string
	var walk func(prefix string, b *bolt.Bucket) error
	walk = func(prefix string, b *bolt.Bucket) error {
		lines = append(lines, fmt.Sprintf("%s seq=%d", prefix, b.Sequence()))
		return b.ForEach(func(k, v []byte) error {
			if v == nil {
				return walk(prefix+"/"+string(k), b.Bucket(k))
			}
			lines = append(lines, fmt.Sprintf("%s/%x=%s", prefix, k, v))
			return nil
		})
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error { return walk(string(name), b) })
	})
	if err != nil {
		t.Fatalf("dump: %v", err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// wantErr fails unless err wraps target and its message contains every
// fragment.
func wantErr(t testing.TB, err, target error, fragments ...string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error = %v, want one wrapping %v", err, target)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not mention %q", err, f)
		}
	}
}

func mustActivate(t testing.TB, s *Store, app string, version int) {
	t.Helper()
	if _, err := s.Activate(app, version); err != nil {
		t.Fatalf("Activate(%s, %d): %v", app, version, err)
	}
}

func mustFail(t testing.TB, s *Store, app string, version int, reason, output string) {
	t.Helper()
	if err := s.MarkFailed(app, version, reason, output); err != nil {
		t.Fatalf("MarkFailed(%s, %d): %v", app, version, err)
	}
}
