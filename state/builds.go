package state

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BuildRecord describes an unpacked build. The files themselves are
// state/build's business; this is what the store knows of them.
type BuildRecord struct {
	Digest     string    `json:"digest"` // sha256 hex of the tarball as uploaded
	Size       int64     `json:"size"`   // bytes unpacked
	Files      int       `json:"files"`
	ImportedAt time.Time `json:"imported_at"`
	Types      []string  `json:"types"` // Procfile process types
}

// PutBuild records (or replaces) a build. Nothing is written if the
// digest or a process type is invalid or a count is negative.
func (s *Store) PutBuild(b BuildRecord) error {
	if err := ValidateDigest(b.Digest); err != nil {
		return fmt.Errorf("put build: %w", err)
	}
	if b.Size < 0 || b.Files < 0 {
		return fmt.Errorf("put build %s: %w", b.Digest, invalidValue("size/files", fmt.Sprintf("%d/%d", b.Size, b.Files), "must not be negative"))
	}
	for _, t := range b.Types {
		if err := ValidateProcessType(t); err != nil {
			return fmt.Errorf("put build %s: %w", b.Digest, err)
		}
	}
	if b.ImportedAt.IsZero() {
		b.ImportedAt = now()
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return putJSON(tx.Bucket(bucketBuilds), []byte(b.Digest), &b)
	})
	if err != nil {
		return fmt.Errorf("put build %s: %w", b.Digest, err)
	}
	return nil
}

// Build returns the record of a build, or ErrBuildNotFound.
func (s *Store) Build(digest string) (BuildRecord, error) {
	var b BuildRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		ok, err := getJSON(tx.Bucket(bucketBuilds), []byte(digest), &b)
		if err == nil && !ok {
			err = fmt.Errorf("%w: %q", ErrBuildNotFound, digest)
		}
		return err
	})
	if err != nil {
		return BuildRecord{}, fmt.Errorf("get build: %w", err)
	}
	return b, nil
}

// Builds returns every build record, ordered by digest.
func (s *Store) Builds() ([]BuildRecord, error) {
	out := []BuildRecord{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBuilds).ForEach(func(k, v []byte) error {
			var b BuildRecord
			if err := json.Unmarshal(v, &b); err != nil {
				return fmt.Errorf("decode record %q: %w", k, err)
			}
			out = append(out, b)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list builds: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out, nil
}

// DeleteBuild removes a build's record, or fails with ErrBuildNotFound.
// It does not check whether releases refer to the build: the caller
// decides with ReferencedBuilds.
func (s *Store) DeleteBuild(digest string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBuilds)
		if b.Get([]byte(digest)) == nil {
			return fmt.Errorf("%w: %q", ErrBuildNotFound, digest)
		}
		return b.Delete([]byte(digest))
	})
	if err != nil {
		return fmt.Errorf("delete build: %w", err)
	}
	return nil
}
