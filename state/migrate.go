package state

import (
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the layout this berth writes. Open upgrades an older
// database to it, step by step, in one transaction (a crash during the
// upgrade leaves the old layout intact), and refuses a newer one.
//
// Schema 1, the first layout:
//
//	meta       "schema" -> 8-byte big-endian version
//	apps       <app> -> {"name","user","created_at"}
//	releases   <app>/ (a bucket per app): 8-byte big-endian version -> Release JSON
//	config     <app> -> {"NAME": "value", ...}
//	formation  <app> -> {"web": 1, ...}
//	builds     <sha256> -> BuildRecord JSON
//	events     8-byte big-endian seq -> Event JSON (the bucket's sequence is the last seq)
//
// Its next version was the newest key plus one, so a deleted newest
// release would have had its number reused, and finding the active release
// meant scanning every release.
//
// Schema 2 adds to each app record "last_version" (the per-app
// counter, never decremented) and "active" (the active version, 0 for
// none), and the buckets ports (by-instance/ and by-port/ indexes) and
// procs (<name> -> ProcRecord JSON).
//
// Schema 3 (current) adds the bucket uids (by-app/ and by-uid/ indexes:
// each app's own uid, see uids.go).
const SchemaVersion = 3

// migrations[v] upgrades a schema v database to v+1.
var migrations = map[int]func(tx *bolt.Tx) error{
	1: migrate1to2,
	2: createBuckets, // schema 3 only adds the uids bucket
}

// allBuckets are the top-level buckets of the current schema.
var allBuckets = [][]byte{
	bucketMeta, bucketApps, bucketReleases, bucketConfig, bucketFormation,
	bucketBuilds, bucketEvents, bucketPorts, bucketProcs, bucketUIDs,
}

// migrate initialises a new database or upgrades an old one.
func (s *Store) migrate() error {
	// An up-to-date database is only read: opening it writes nothing.
	current := false
	if err := s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) != nil {
			v, err := readSchema(tx)
			current = err == nil && v == SchemaVersion
		}
		return nil
	}); err != nil {
		return err
	}
	if current {
		return nil
	}
	from := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) == nil {
			// A new file has no buckets at all; anything else is not ours.
			var other []string
			tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
				other = append(other, string(name))
				return nil
			})
			if len(other) > 0 {
				return fmt.Errorf("database has buckets %q but no schema version: not a berth database", other)
			}
			if err := createBuckets(tx); err != nil {
				return err
			}
			return writeSchema(tx, SchemaVersion)
		}
		v, err := readSchema(tx)
		if err != nil {
			return err
		}
		from = v
		if v > SchemaVersion {
			return fmt.Errorf("%w: database schema %d, this berth knows up to %d", ErrSchemaTooNew, v, SchemaVersion)
		}
		for ; v < SchemaVersion; v++ {
			step, ok := migrations[v]
			if !ok {
				return fmt.Errorf("no migration from schema %d", v)
			}
			if err := step(tx); err != nil {
				return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
			}
		}
		return writeSchema(tx, SchemaVersion)
	})
	if err != nil {
		return err
	}
	if from != 0 && from != SchemaVersion {
		s.log.Info("migrated database schema", "path", s.path, "from", from, "to", SchemaVersion)
	}
	return nil
}

func createBuckets(tx *bolt.Tx) error {
	for _, name := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	ports := tx.Bucket(bucketPorts)
	for _, name := range [][]byte{bucketPortsByInstance, bucketPortsByPort} {
		if _, err := ports.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket ports/%s: %w", name, err)
		}
	}
	uids := tx.Bucket(bucketUIDs)
	for _, name := range [][]byte{bucketUIDsByApp, bucketUIDsByUID} {
		if _, err := uids.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket uids/%s: %w", name, err)
		}
	}
	return nil
}

func readSchema(tx *bolt.Tx) (int, error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return 0, errors.New("no meta bucket")
	}
	raw := meta.Get(keySchema)
	if len(raw) != 8 {
		return 0, fmt.Errorf("malformed schema version %x", raw)
	}
	return int(btoi(raw)), nil
}

func writeSchema(tx *bolt.Tx, v int) error {
	return tx.Bucket(bucketMeta).Put(keySchema, itob(uint64(v)))
}

// migrate1to2 computes each app's version counter and active pointer from
// its releases, and adds the ports and procs buckets. Should a schema 1
// database hold more than one active release for an app, the newest stays
// active and the others become superseded.
func migrate1to2(tx *bolt.Tx) error {
	apps := tx.Bucket(bucketApps)
	releases := tx.Bucket(bucketReleases)
	if apps == nil || releases == nil {
		return errors.New("schema 1 database lacks the apps or releases bucket")
	}
	var names []string
	if err := apps.ForEach(func(k, _ []byte) error {
		names = append(names, string(k))
		return nil
	}); err != nil {
		return err
	}
	for _, name := range names {
		var rec appRecord
		if _, err := getJSON(apps, []byte(name), &rec); err != nil {
			return err
		}
		rec.LastVersion, rec.Active = 0, 0
		if rb := releases.Bucket([]byte(name)); rb != nil {
			// Collect first: a cursor is not valid across writes.
			var demote []Release
			c := rb.Cursor()
			for k, v := c.Last(); k != nil; k, v = c.Prev() {
				ver := int(btoi(k))
				if rec.LastVersion == 0 {
					rec.LastVersion = ver
				}
				var r Release
				if err := json.Unmarshal(v, &r); err != nil {
					return fmt.Errorf("app %s release %d: %w", name, ver, err)
				}
				if r.Status != StatusActive {
					continue
				}
				if rec.Active == 0 {
					rec.Active = ver
					continue
				}
				r.Status = StatusSuperseded
				demote = append(demote, r)
			}
			for _, r := range demote {
				if err := putJSON(rb, itob(uint64(r.Version)), &r); err != nil {
					return err
				}
			}
		}
		if err := putJSON(apps, []byte(name), &rec); err != nil {
			return err
		}
	}
	return createBuckets(tx)
}
