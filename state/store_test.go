package state

import (
	"bufio"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestOpen_NewFile ensures a new database is created 0600 (in a directory
// created 0700), at the current schema, and passes the consistency check.
func TestOpen_NewFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "berth.db")
	s := openAt(t, path, Config{})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("db mode = %v, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode = %v, want 0700", di.Mode().Perm())
	}
	v, err := s.SchemaVersion()
	if err != nil || v != SchemaVersion {
		t.Errorf("SchemaVersion = %d, %v; want %d", v, err, SchemaVersion)
	}
	if err := s.Check(); err != nil {
		t.Error(err)
	}
	if s.Path() != path {
		t.Errorf("Path = %q, want %q", s.Path(), path)
	}
}

// TestOpen_TightensMode ensures an existing database with a loose mode is
// set to 0600: it holds config values, which may be secrets.
func TestOpen_TightensMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "berth.db")
	s := openAt(t, path, Config{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	openAt(t, path, Config{})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("db mode = %v, want 0600", fi.Mode().Perm())
	}
}

// TestOpen_NoPath ensures a config without a path is refused.
func TestOpen_NoPath(t *testing.T) {
	if _, err := Open(Config{}, nil); err == nil || !strings.Contains(err.Error(), "no database path") {
		t.Fatalf("Open without path: %v", err)
	}
}

// TestStore_ReopenPersistence ensures everything written is there after
// Close and Open, and that the counters (versions, event sequence) carry
// on rather than restart.
func TestStore_ReopenPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "berth.db")
	s, err := Open(Config{Path: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustApp(t, s, "web")
	if _, err := s.SetAppUser("web", "www-data"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetFormation("web", map[string]int{"web": 2, "worker": 1}); err != nil {
		t.Fatal(err)
	}
	r1 := mustRelease(t, s, "web", NewRelease{Build: testDigest(1), Config: map[string]string{"A": "1"}, Description: "Deploy 1"})
	r2 := mustRelease(t, s, "web", NewRelease{Build: testDigest(2), Config: map[string]string{"A": "2"}, Description: "Deploy 2"})
	if _, err := s.Activate("web", r1.Version); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Activate("web", r2.Version); err != nil {
		t.Fatal(err)
	}
	port, err := s.Port("web", "web.1", 5000)
	if err != nil {
		t.Fatal(err)
	}
	build := BuildRecord{Digest: testDigest(1), Size: 10, Files: 2, Types: []string{"web", "worker"}}
	if err := s.PutBuild(build); err != nil {
		t.Fatal(err)
	}
	proc := ProcRecord{App: "web", Instance: "web.1", Name: "web/web.1", PID: 100, PGID: 100, StartTime: 42, Release: 2}
	if err := s.PutProc(proc); err != nil {
		t.Fatal(err)
	}
	e1, err := s.AppendEvent("web", "deploy", "v2")
	if err != nil {
		t.Fatal(err)
	}
	wantApps, _ := s.Apps()
	wantReleases, _ := s.Releases("web", 0)
	wantBuild, _ := s.Build(build.Digest)
	before := dump(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openAt(t, path, Config{})
	if after := dump(t, s); after != before {
		t.Errorf("database changed across reopen:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	apps, err := s.Apps()
	if err != nil || !reflect.DeepEqual(apps, wantApps) {
		t.Errorf("Apps = %+v, %v; want %+v", apps, err, wantApps)
	}
	rels, err := s.Releases("web", 0)
	if err != nil || !reflect.DeepEqual(rels, wantReleases) {
		t.Errorf("Releases = %+v, %v; want %+v", rels, err, wantReleases)
	}
	active, err := s.ActiveRelease("web")
	if err != nil || active.Version != 2 || active.Status != StatusActive {
		t.Errorf("ActiveRelease = %+v, %v", active, err)
	}
	cfg, err := s.Config("web")
	if err != nil || !maps.Equal(cfg, map[string]string{"A": "2"}) {
		t.Errorf("Config = %v, %v", cfg, err)
	}
	f, err := s.Formation("web")
	if err != nil || !maps.Equal(f, map[string]int{"web": 2, "worker": 1}) {
		t.Errorf("Formation = %v, %v", f, err)
	}
	if p, err := s.Port("web", "web.1", 9000); err != nil || p != port {
		t.Errorf("Port after reopen = %d, %v; want %d", p, err, port)
	}
	if b, err := s.Build(build.Digest); err != nil || !reflect.DeepEqual(b, wantBuild) {
		t.Errorf("Build = %+v, %v; want %+v", b, err, wantBuild)
	}
	if ps, err := s.Procs(); err != nil || len(ps) != 1 || ps[0] != proc {
		t.Errorf("Procs = %+v, %v; want [%+v]", ps, err, proc)
	}
	// Counters carry on.
	r3 := mustRelease(t, s, "web", NewRelease{Build: testDigest(3)})
	if r3.Version != 3 {
		t.Errorf("version after reopen = %d, want 3", r3.Version)
	}
	e2, err := s.AppendEvent("web", "deploy", "v3")
	if err != nil || e2.Seq != e1.Seq+1 {
		t.Errorf("event seq after reopen = %d, %v; want %d", e2.Seq, err, e1.Seq+1)
	}
}

// TestOpen_LockTimeoutSameProcess ensures a second Open of a database that
// is open fails within LockTimeout with ErrLocked and a message that names
// the data directory, and succeeds once the first store is closed. (bbolt
// locks with flock on its own file descriptor, so a second open in the
// same process conflicts like another process would.)
func TestOpen_LockTimeoutSameProcess(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "berth.db")
	first, err := Open(Config{Path: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(Config{Path: path, LockTimeout: 100 * time.Millisecond}, nil)
	wantErr(t, err, ErrLocked, "another agent is using the data directory "+dir)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	openAt(t, path, Config{LockTimeout: 100 * time.Millisecond})
}

// TestOpen_LockTimeoutOtherProcess ensures Open fails with ErrLocked while
// another process (a re-executed test binary) holds the database, and
// succeeds once that process closed it.
func TestOpen_LockTimeoutOtherProcess(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "berth.db")
	cmd := helperCommand("lock-holder", path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill() // only if the test fails half-way
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "locked\n" {
		t.Fatalf("helper said %q, %v", line, err)
	}

	start := time.Now()
	_, err = Open(Config{Path: path, LockTimeout: 200 * time.Millisecond}, nil)
	wantErr(t, err, ErrLocked, "another agent is using the data directory "+dir, "200ms")
	t.Logf("second opener gave up after %v: %v", time.Since(start), err)

	stdin.Close() // the helper closes the store and exits
	if err := cmd.Wait(); err != nil {
		t.Fatalf("lock holder: %v", err)
	}
	openAt(t, path, Config{LockTimeout: 200 * time.Millisecond})
}

// TestOpen_ForeignDatabase ensures a bbolt file that is not berth's is
// refused and left as it was.
func TestOpen_ForeignDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "other.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("foo"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = Open(Config{Path: path}, nil)
	if err == nil || !strings.Contains(err.Error(), "not a berth database") || !strings.Contains(err.Error(), "foo") {
		t.Fatalf("Open(foreign) = %v, want a 'not a berth database' error naming bucket foo", err)
	}
	db, err = bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("meta")) != nil || tx.Bucket([]byte("foo")) == nil {
			t.Error("foreign database was changed")
		}
		return nil
	})
}

// TestStore_ValuesOutliveTransaction ensures every value the store returns
// is a copy: after the store is closed (and bbolt has unmapped the file),
// reading each returned string still gives the stored bytes. A value that
// pointed into the mapping would fault here.
func TestStore_ValuesOutliveTransaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "berth.db")
	s, err := Open(Config{Path: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustApp(t, s, "web")
	s.SetAppUser("web", "www-data")
	r := mustRelease(t, s, "web", NewRelease{Build: testDigest(1), Config: map[string]string{"KEY": "value"}, Description: "Deploy x"})
	mustActivate(t, s, "web", r.Version)
	s.SetFormation("web", map[string]int{"web": 1})
	s.PutBuild(BuildRecord{Digest: testDigest(1), Types: []string{"web"}})
	s.PutProc(ProcRecord{App: "web", Instance: "web.1", Name: "web/web.1", PID: 1, PGID: 1})
	s.AppendEvent("web", "deploy", "message")
	s.Port("web", "web.1", 5000)

	var got []string
	apps, _ := s.Apps()
	rels, _ := s.Releases("web", 0)
	active, _ := s.ActiveRelease("web")
	cfg, _ := s.Config("web")
	form, _ := s.Formation("web")
	builds, _ := s.Builds()
	procs, _ := s.Procs()
	events, _ := s.Events("", 0, 0)
	ports, _ := s.Ports("web")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	got = append(got, apps[0].Name, apps[0].User, rels[0].Build, rels[0].Description, string(rels[0].Status), active.Config["KEY"])
	for k, v := range cfg {
		got = append(got, k, v)
	}
	for k := range form {
		got = append(got, k)
	}
	for k := range ports {
		got = append(got, k)
	}
	got = append(got, builds[0].Digest, builds[0].Types[0], procs[0].Name, procs[0].Instance, events[0].App, events[0].Kind, events[0].Message)
	want := []string{"web", "www-data", testDigest(1), "Deploy x", "active", "value", "KEY", "value", "web", "web.1",
		testDigest(1), "web", "web/web.1", "web.1", "web", "deploy", "message"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("values after close:\n got %q\nwant %q", got, want)
	}
}
