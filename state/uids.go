package state

import (
	"bytes"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// App identities: each app the agent runs as root gets a uid of its own
// (used as its gid too), allocated once from a reserved range, as
// systemd's DynamicUser does, and kept until the app is deleted. The uids
// bucket holds two indexes written together: by-app maps an app name to a
// 4-byte big-endian uid, by-uid maps the uid back to the app, so no two
// apps ever hold the same uid.

// UIDRange is a closed range of uids reserved for apps.
type UIDRange struct {
	Min, Max int
}

// valid reports whether the range is usable: unprivileged (above 0) and
// within 32 bits minus the "no user" value.
func (r UIDRange) valid() error {
	if r.Min < 1 || r.Max < r.Min || r.Max >= 1<<32-1 {
		return invalidValue("uid range", fmt.Sprintf("%d-%d", r.Min, r.Max), "must be MIN-MAX with 0 < MIN <= MAX < 4294967295")
	}
	return nil
}

func uidBytes(uid int) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, uint32(uid))
	return b
}

// AppUID returns the uid of the app. The first call allocates the lowest
// uid of r that no app holds and for which taken (nil: none) returns
// false, in one transaction, and stores it; every later call returns the
// same uid, whatever range it passes, across releases and restarts, until
// the app is deleted (DeleteApp frees it). It fails with ErrUIDsExhausted
// when every uid of r is held or taken, and with ErrAppNotFound for an
// app that does not exist. taken is called inside the write transaction:
// it must be quick and must not use the store.
func (s *Store) AppUID(app string, r UIDRange, taken func(uid int) bool) (int, error) {
	if err := r.valid(); err != nil {
		return 0, fmt.Errorf("uid of app %s: %w", app, err)
	}
	uid := 0
	// Most calls find a stored uid: try a read-only transaction first.
	err := s.db.View(func(tx *bolt.Tx) error {
		if _, err := loadApp(tx, app); err != nil {
			return err
		}
		if v := tx.Bucket(bucketUIDs).Bucket(bucketUIDsByApp).Get([]byte(app)); len(v) == 4 {
			uid = int(binary.BigEndian.Uint32(v))
		}
		return nil
	})
	if err == nil && uid == 0 {
		err = s.db.Update(func(tx *bolt.Tx) error {
			if _, err := loadApp(tx, app); err != nil {
				return err
			}
			byApp := tx.Bucket(bucketUIDs).Bucket(bucketUIDsByApp)
			byUID := tx.Bucket(bucketUIDs).Bucket(bucketUIDsByUID)
			if v := byApp.Get([]byte(app)); len(v) == 4 { // allocated meanwhile
				uid = int(binary.BigEndian.Uint32(v))
				return nil
			}
			// Walk the held uids from Min in order; the first gap that
			// taken does not claim is the uid.
			want := r.Min
			c := byUID.Cursor()
			k, _ := c.Seek(uidBytes(r.Min))
			for want <= r.Max {
				if k != nil && int(binary.BigEndian.Uint32(k)) == want {
					want++
					k, _ = c.Next()
					continue
				}
				if taken == nil || !taken(want) {
					break
				}
				want++
			}
			if want > r.Max {
				return fmt.Errorf("%w: all of %d-%d are held by apps or by users of this host", ErrUIDsExhausted, r.Min, r.Max)
			}
			uid = want
			if err := byApp.Put([]byte(app), uidBytes(uid)); err != nil {
				return err
			}
			return byUID.Put(uidBytes(uid), []byte(app))
		})
	}
	if err != nil {
		return 0, fmt.Errorf("uid of app %s: %w", app, err)
	}
	return uid, nil
}

// AppUIDs returns the uid of every app that has one.
func (s *Store) AppUIDs() (map[string]int, error) {
	out := map[string]int{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUIDs).Bucket(bucketUIDsByApp).ForEach(func(k, v []byte) error {
			if len(v) == 4 {
				out[string(k)] = int(binary.BigEndian.Uint32(v))
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list app uids: %w", err)
	}
	return out, nil
}

// deleteUID frees the app's uid, if it has one.
func deleteUID(tx *bolt.Tx, app string) error {
	byApp := tx.Bucket(bucketUIDs).Bucket(bucketUIDsByApp)
	byUID := tx.Bucket(bucketUIDs).Bucket(bucketUIDsByUID)
	v := byApp.Get([]byte(app))
	if v == nil {
		return nil
	}
	uid := bytes.Clone(v)
	if err := byApp.Delete([]byte(app)); err != nil {
		return err
	}
	if owner := byUID.Get(uid); string(owner) == app {
		return byUID.Delete(uid)
	}
	return nil
}
