package state

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// writeSchema1 writes a database in schema 1's layout with raw bbolt, as
// the first berth wrote it (see migrate.go): app records without a version
// counter or active pointer, no ports or procs buckets.
func writeSchema1(t *testing.T, path string, extra func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	created := time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC)
	put := func(b *bolt.Bucket, k []byte, v any) {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Put(k, data); err != nil {
			t.Fatal(err)
		}
	}
	type oldApp struct {
		Name      string    `json:"name"`
		User      string    `json:"user,omitempty"`
		CreatedAt time.Time `json:"created_at"`
	}
	release := func(app string, v, build int, status Status) Release {
		return Release{App: app, Version: v, Build: testDigest(build), Config: map[string]string{"V": string(rune('0' + v))},
			Formation: map[string]int{"web": 1}, Description: "Deploy", CreatedAt: created, Status: status}
	}
	err = db.Update(func(tx *bolt.Tx) error {
		buckets := map[string]*bolt.Bucket{}
		for _, name := range []string{"meta", "apps", "releases", "config", "formation", "builds", "events"} {
			b, err := tx.CreateBucket([]byte(name))
			if err != nil {
				return err
			}
			buckets[name] = b
		}
		buckets["meta"].Put([]byte("schema"), itob(1))
		apps := map[string][]Release{
			"old": {release("old", 1, 1, StatusSuperseded), release("old", 2, 2, StatusActive), release("old", 3, 3, StatusFailed)},
			// Two active releases: schema 1 could not rule it out.
			"twoactive": {release("twoactive", 1, 1, StatusActive), release("twoactive", 2, 4, StatusActive)},
			"fresh":     nil,
		}
		for name, rels := range apps {
			put(buckets["apps"], []byte(name), oldApp{Name: name, User: "u-" + name, CreatedAt: created})
			rb, err := buckets["releases"].CreateBucket([]byte(name))
			if err != nil {
				return err
			}
			for _, r := range rels {
				put(rb, itob(uint64(r.Version)), r)
			}
		}
		put(buckets["config"], []byte("old"), map[string]string{"V": "2"})
		put(buckets["formation"], []byte("old"), map[string]int{"web": 2})
		put(buckets["builds"], []byte(testDigest(1)), BuildRecord{Digest: testDigest(1), Size: 5, ImportedAt: created})
		for i := 1; i <= 3; i++ {
			seq, _ := buckets["events"].NextSequence()
			put(buckets["events"], itob(seq), Event{Seq: seq, Time: created, App: "old", Kind: "deploy", Message: "v"})
		}
		if extra != nil {
			return extra(tx)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestOpen_MigratesSchema1 ensures a database written in schema 1 is
// upgraded at open: version counters and active pointers come from the
// releases, a second active release is demoted, the new buckets work, old
// records are kept, and a second open changes nothing.
func TestOpen_MigratesSchema1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "berth.db")
	writeSchema1(t, path, nil)
	s, err := Open(Config{Path: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.SchemaVersion(); err != nil || v != SchemaVersion {
		t.Errorf("SchemaVersion = %d, %v", v, err)
	}
	if err := s.Check(); err != nil {
		t.Error(err)
	}
	apps, err := s.Apps()
	if err != nil || len(apps) != 3 || apps[0].Name != "fresh" || apps[1].User != "u-old" {
		t.Fatalf("Apps = %+v, %v", apps, err)
	}
	if a, _ := s.App("old"); a.ActiveRelease != 2 {
		t.Errorf("old: ActiveRelease = %d, want 2", a.ActiveRelease)
	}
	active, err := s.ActiveRelease("old")
	if err != nil || active.Version != 2 || active.Build != testDigest(2) || !maps.Equal(active.Config, map[string]string{"V": "2"}) {
		t.Errorf("old: ActiveRelease = %+v, %v", active, err)
	}
	if r, err := s.Release("old", 3); err != nil || r.Status != StatusFailed {
		t.Errorf("old v3 = %+v, %v", r, err)
	}
	// The counter continues after the newest release.
	if r := mustRelease(t, s, "old", NewRelease{Build: testDigest(9)}); r.Version != 4 {
		t.Errorf("next version of old = %d, want 4", r.Version)
	}
	if r := mustRelease(t, s, "fresh", NewRelease{Build: testDigest(9)}); r.Version != 1 {
		t.Errorf("first version of fresh = %d, want 1", r.Version)
	}
	// The newer of two active releases stays active.
	if n, v := activeCount(t, s, "twoactive"); n != 1 || v != 2 {
		t.Errorf("twoactive: %d active (v%d), want only v2", n, v)
	}
	if r, _ := s.Release("twoactive", 1); r.Status != StatusSuperseded {
		t.Errorf("twoactive v1 = %s, want superseded", r.Status)
	}
	if f, _ := s.Formation("old"); !maps.Equal(f, map[string]int{"web": 2}) {
		t.Errorf("Formation(old) = %v", f)
	}
	if b, err := s.Build(testDigest(1)); err != nil || b.Size != 5 {
		t.Errorf("Build = %+v, %v", b, err)
	}
	// Buckets new in schema 2 work.
	if p, err := s.Port("old", "web.1", 5000); err != nil || p != 5000 {
		t.Errorf("Port = %d, %v", p, err)
	}
	if err := s.PutProc(ProcRecord{App: "old", Instance: "web.1", Name: "old/web.1", PID: 1, PGID: 1}); err != nil {
		t.Error(err)
	}
	// And the bucket new in schema 3.
	if uid, err := s.AppUID("old", UIDRange{Min: 61184, Max: 65519}, nil); err != nil || uid != 61184 {
		t.Errorf("AppUID = %d, %v", uid, err)
	}
	if e, err := s.AppendEvent("old", "deploy", "v4"); err != nil || e.Seq != 4 {
		t.Errorf("AppendEvent = %+v, %v; want seq 4", e, err)
	}
	before := dump(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path, Config{})
	if after := dump(t, s); after != before {
		t.Errorf("second open changed the database:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// rawDump is dump for a closed database file.
func rawDump(t *testing.T, path string) []byte {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var buf bytes.Buffer
	err = db.View(func(tx *bolt.Tx) error {
		var walk func(b *bolt.Bucket, depth int) error
		walk = func(b *bolt.Bucket, depth int) error {
			return b.ForEach(func(k, v []byte) error {
				buf.Write(bytes.Repeat([]byte(" "), depth))
				buf.Write(k)
				buf.WriteByte('=')
				buf.Write(v)
				buf.WriteByte('\n')
				if v == nil {
					return walk(b.Bucket(k), depth+1)
				}
				return nil
			})
		}
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			buf.Write(name)
			buf.WriteByte('\n')
			return walk(b, 1)
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestOpen_FailedMigrationChangesNothing ensures a migration that fails
// half-way (a corrupt release record) leaves the schema 1 database exactly
// as it was: migrations run in one transaction.
func TestOpen_FailedMigrationChangesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "berth.db")
	writeSchema1(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("releases")).Bucket([]byte("twoactive")).Put(itob(3), []byte("{not json"))
	})
	before := rawDump(t, path)
	_, err := Open(Config{Path: path}, nil)
	if err == nil {
		t.Fatal("Open of a corrupt schema 1 database succeeded")
	}
	t.Logf("Open: %v", err)
	if after := rawDump(t, path); !bytes.Equal(before, after) {
		t.Errorf("failed migration changed the database:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestOpen_SchemaTooNew ensures a database from a newer berth is refused
// with ErrSchemaTooNew and left untouched.
func TestOpen_SchemaTooNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "berth.db")
	writeSchema1(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), itob(SchemaVersion+1))
	})
	before := rawDump(t, path)
	_, err := Open(Config{Path: path}, nil)
	wantErr(t, err, ErrSchemaTooNew, fmt.Sprintf("schema %d", SchemaVersion+1), fmt.Sprintf("up to %d", SchemaVersion))
	if after := rawDump(t, path); !bytes.Equal(before, after) {
		t.Error("refused database was changed")
	}
}

// TestOpen_CurrentSchemaWritesNothing ensures opening an up-to-date
// database does not write to it (no needless commit and fsync at every
// start).
func TestOpen_CurrentSchemaWritesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "berth.db")
	s, err := Open(Config{Path: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustApp(t, s, "web")
	s.Close()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err = Open(Config{Path: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("opening an up-to-date database changed the file")
	}
}
