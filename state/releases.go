package state

import (
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Status is where a release stands.
type Status string

// Release statuses. A release is created pending; Activate makes it
// active (and the previously active one superseded); MarkFailed makes a
// pending or active one failed. At most one release per app is active.
const (
	StatusPending    Status = "pending"
	StatusActive     Status = "active"
	StatusFailed     Status = "failed"
	StatusSuperseded Status = "superseded"
)

// Release is a build plus a config, numbered per app. Everything but
// Status, Reason and Output is immutable once created.
type Release struct {
	App         string            `json:"app"`
	Version     int               `json:"version"`
	Build       string            `json:"build"` // sha256 hex digest of the tarball
	Config      map[string]string `json:"config"`
	Formation   map[string]int    `json:"formation"`
	Description string            `json:"description"`
	CreatedAt   time.Time         `json:"created_at"`
	Status      Status            `json:"status"`
	Reason      string            `json:"reason,omitempty"` // why it failed
	Output      string            `json:"output,omitempty"` // release-phase output
}

// NewRelease is what CreateRelease needs from the caller.
type NewRelease struct {
	Build       string            // sha256 hex digest
	Config      map[string]string // the full config snapshot
	Formation   map[string]int    // nil means the app's current formation
	Description string            // "Deploy 3f2a9c1", "Set FOO, BAR", "Rollback to v3"
}

// releaseBucket returns the app's releases bucket (created by CreateApp).
func releaseBucket(tx *bolt.Tx, app string) (*bolt.Bucket, error) {
	b := tx.Bucket(bucketReleases).Bucket([]byte(app))
	if b == nil {
		return nil, fmt.Errorf("%w: %q has no releases bucket", ErrAppNotFound, app)
	}
	return b, nil
}

// loadRelease reads one release of the app, with the app's record and
// its releases bucket, so callers need not load the app again.
func loadRelease(tx *bolt.Tx, app string, version int) (Release, appRecord, *bolt.Bucket, error) {
	rec, err := loadApp(tx, app)
	if err != nil {
		return Release{}, rec, nil, err
	}
	b, err := releaseBucket(tx, app)
	if err != nil {
		return Release{}, rec, nil, err
	}
	r, err := getRelease(b, app, version)
	return r, rec, b, err
}

// getRelease reads one release from the app's releases bucket b.
func getRelease(b *bolt.Bucket, app string, version int) (Release, error) {
	var r Release
	if version <= 0 {
		return r, fmt.Errorf("%w: %s v%d", ErrReleaseNotFound, app, version)
	}
	ok, err := getJSON(b, itob(uint64(version)), &r)
	if err != nil {
		return r, err
	}
	if !ok {
		return r, fmt.Errorf("%w: %s v%d", ErrReleaseNotFound, app, version)
	}
	return r, nil
}

func putRelease(b *bolt.Bucket, r *Release) error {
	return putJSON(b, itob(uint64(r.Version)), r)
}

// CreateRelease records a pending release of the app. Its version is the
// app's counter plus one, allocated in the same transaction that writes
// the record, so versions are unique, contiguous and never reused, however
// many goroutines or processes create releases at once. Nothing is written
// if the build digest, a config name or the formation is invalid.
func (s *Store) CreateRelease(app string, nr NewRelease) (Release, error) {
	if err := ValidateDigest(nr.Build); err != nil {
		return Release{}, fmt.Errorf("create release of %s: %w", app, err)
	}
	if err := validateConfig(nr.Config); err != nil {
		return Release{}, fmt.Errorf("create release of %s: %w", app, err)
	}
	if err := validateFormation(nr.Formation); err != nil {
		return Release{}, fmt.Errorf("create release of %s: %w", app, err)
	}
	r := Release{
		App:         app,
		Build:       nr.Build,
		Config:      maps.Clone(nr.Config),
		Formation:   maps.Clone(nr.Formation),
		Description: nr.Description,
		CreatedAt:   now(),
		Status:      StatusPending,
	}
	if r.Config == nil {
		r.Config = map[string]string{}
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		rec, err := loadApp(tx, app)
		if err != nil {
			return err
		}
		b, err := releaseBucket(tx, app)
		if err != nil {
			return err
		}
		if r.Formation == nil {
			if r.Formation, err = loadFormation(tx, app); err != nil {
				return err
			}
		}
		rec.LastVersion++
		r.Version = rec.LastVersion
		if err := putRelease(b, &r); err != nil {
			return err
		}
		return saveApp(tx, rec)
	})
	if err != nil {
		return Release{}, fmt.Errorf("create release of %s: %w", app, err)
	}
	return r, nil
}

// Activate makes the release the app's active one, in one transaction:
// the release becomes active, the previously active release (if any)
// becomes superseded, and the app's config becomes the release's config.
// It returns the previously active release as now stored (status
// superseded), or a zero Release if there was none. A pending or
// superseded release can be activated (the latter is how a caller reverts
// a switch that failed); a failed one cannot (ErrBadTransition).
// Activating the release that is already active changes nothing and
// returns a zero Release.
func (s *Store) Activate(app string, version int) (prev Release, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		prev, err = activate(tx, app, version)
		return err
	})
	if err != nil {
		return Release{}, fmt.Errorf("activate release: %w", err)
	}
	return prev, nil
}

// activate is Activate inside tx.
func activate(tx *bolt.Tx, app string, version int) (prev Release, err error) {
	r, rec, b, err := loadRelease(tx, app, version)
	if err != nil {
		return prev, err
	}
	switch r.Status {
	case StatusActive:
		return prev, nil
	case StatusPending, StatusSuperseded:
	default:
		return prev, fmt.Errorf("%w: %s v%d is %s", ErrBadTransition, app, version, r.Status)
	}
	if rec.Active != 0 {
		old, err := getRelease(b, app, rec.Active)
		if err != nil {
			return prev, fmt.Errorf("previously active release: %w", err)
		}
		old.Status = StatusSuperseded
		if err := putRelease(b, &old); err != nil {
			return prev, err
		}
		prev = old
	}
	r.Status = StatusActive
	r.Reason = ""
	if err := putRelease(b, &r); err != nil {
		return prev, err
	}
	rec.Active = version
	if err := saveApp(tx, rec); err != nil {
		return prev, err
	}
	return prev, putJSON(tx.Bucket(bucketConfig), []byte(app), r.Config)
}

// MarkFailed records that a pending or active release failed, with the
// reason (made one line by OneLine; a longer one is kept at the head of
// the output) and the release-phase output (its tail is kept when longer than
// MaxOutputBytes). If the release was active, the app has no active
// release afterwards (ActiveRelease returns ErrNoActiveRelease) until the
// caller activates another, typically the one Activate returned as prev.
// A superseded release cannot fail (ErrBadTransition); marking a failed
// release again replaces its reason and output.
func (s *Store) MarkFailed(app string, version int, reason, output string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		return markFailed(tx, app, version, reason, output)
	})
	if err != nil {
		return fmt.Errorf("mark release failed: %w", err)
	}
	return nil
}

// FailAndActivate undoes a failed switch in one transaction: it marks
// failed as failed (as MarkFailed) and makes to the active release (as
// Activate), so a crash can never leave the app between the two with no
// active release. to 0 activates nothing (a first deploy that failed).
func (s *Store) FailAndActivate(app string, failed int, reason, output string, to int) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := markFailed(tx, app, failed, reason, output); err != nil {
			return err
		}
		if to == 0 {
			return nil
		}
		_, err := activate(tx, app, to)
		return err
	})
	if err != nil {
		return fmt.Errorf("fail v%d and activate v%d: %w", failed, to, err)
	}
	return nil
}

// markFailed is MarkFailed inside tx.
func markFailed(tx *bolt.Tx, app string, version int, reason, output string) error {
	// The reason is one line (a table cell); a longer one goes whole
	// into the output, which the release keeps apart.
	if short := OneLine(reason); short != reason {
		if !strings.Contains(output, strings.TrimSpace(reason)) {
			output = strings.TrimSpace(reason) + "\n" + output
		}
		reason = short
	}
	output = CutOutput(output)
	r, rec, b, err := loadRelease(tx, app, version)
	if err != nil {
		return err
	}
	switch r.Status {
	case StatusPending, StatusActive, StatusFailed:
	default:
		return fmt.Errorf("%w: %s v%d is %s", ErrBadTransition, app, version, r.Status)
	}
	if r.Status == StatusActive {
		rec.Active = 0
		if err := saveApp(tx, rec); err != nil {
			return err
		}
	}
	r.Status, r.Reason, r.Output = StatusFailed, reason, output
	return putRelease(b, &r)
}

// SetOutput records the output of a pending or active release's release
// phase (its tail when longer than MaxOutputBytes, see CutOutput), so
// that `releases info` shows what a successful release phase said. A
// failed or superseded release keeps its output (ErrBadTransition).
func (s *Store) SetOutput(app string, version int, output string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		r, _, b, err := loadRelease(tx, app, version)
		if err != nil {
			return err
		}
		if r.Status != StatusPending && r.Status != StatusActive {
			return fmt.Errorf("%w: %s v%d is %s", ErrBadTransition, app, version, r.Status)
		}
		r.Output = CutOutput(output)
		return putRelease(b, &r)
	})
	if err != nil {
		return fmt.Errorf("record release output: %w", err)
	}
	return nil
}

// cutNotice starts an output whose beginning was cut, with the count of
// bytes cut. The supervisor's RunCommand writes the same notice.
const cutNotice = "[... %d bytes of output dropped ...]\n"

// CutOutput returns output, or its last MaxOutputBytes behind a notice
// that says how many bytes were cut: "[... N bytes of output dropped
// ...]". When the part cut holds such a notice already (output that was
// cut before it reached the store), N counts the bytes that notice
// counted too, so the notice always tells the whole loss.
func CutOutput(output string) string {
	if len(output) <= MaxOutputBytes {
		return output
	}
	cut := len(output) - MaxOutputBytes
	n := cut
	if i := strings.Index(output[:cut], "[... "); i >= 0 {
		var before int
		if _, err := fmt.Sscanf(output[i:], cutNotice, &before); err == nil {
			n += before - len(fmt.Sprintf(cutNotice, before))
		}
	}
	return fmt.Sprintf(cutNotice, n) + output[cut:]
}

// Release returns one release of the app: ErrAppNotFound for an unknown
// app, ErrReleaseNotFound for an unknown version.
func (s *Store) Release(app string, version int) (Release, error) {
	var r Release
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		r, _, _, err = loadRelease(tx, app, version)
		return err
	})
	if err != nil {
		return Release{}, fmt.Errorf("get release: %w", err)
	}
	return r, nil
}

// ActiveRelease returns the app's active release, or ErrNoActiveRelease.
func (s *Store) ActiveRelease(app string) (Release, error) {
	var r Release
	err := s.db.View(func(tx *bolt.Tx) error {
		rec, err := loadApp(tx, app)
		if err != nil {
			return err
		}
		if rec.Active == 0 {
			return fmt.Errorf("%w: %s", ErrNoActiveRelease, app)
		}
		b, err := releaseBucket(tx, app)
		if err != nil {
			return err
		}
		r, err = getRelease(b, app, rec.Active)
		return err
	})
	if err != nil {
		return Release{}, fmt.Errorf("get active release: %w", err)
	}
	return r, nil
}

// Releases returns the app's releases, newest first: the newest limit of
// them, or all when limit is 0.
func (s *Store) Releases(app string, limit int) ([]Release, error) {
	if limit < 0 {
		return nil, fmt.Errorf("list releases of %s: %w", app, invalidValue("limit", fmt.Sprint(limit), "must be 0 (all) or more"))
	}
	out := []Release{}
	err := s.db.View(func(tx *bolt.Tx) error {
		rec, err := loadApp(tx, app)
		if err != nil {
			return err
		}
		b, err := releaseBucket(tx, app)
		if err != nil {
			return err
		}
		n := rec.LastVersion // releases are never deleted alone: the count
		if limit > 0 && limit < n {
			n = limit
		}
		out = make([]Release, 0, n)
		c := b.Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			if limit > 0 && len(out) == limit {
				break
			}
			out = append(out, Release{})
			if err := json.Unmarshal(v, &out[len(out)-1]); err != nil {
				return fmt.Errorf("%s v%d: %w", app, btoi(k), err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list releases: %w", err)
	}
	return out, nil
}

// PendingReleases returns the pending releases of every app (ordered by
// app, then version). At start-up they are the switches a crash
// interrupted, which the agent marks failed.
func (s *Store) PendingReleases() ([]Release, error) {
	out := []Release{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketReleases).ForEachBucket(func(app []byte) error {
			return tx.Bucket(bucketReleases).Bucket(app).ForEach(func(k, v []byte) error {
				var r Release
				if err := json.Unmarshal(v, &r); err != nil {
					return fmt.Errorf("%s v%d: %w", app, btoi(k), err)
				}
				if r.Status == StatusPending {
					out = append(out, r)
				}
				return nil
			})
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list pending releases: %w", err)
	}
	return out, nil
}

// ReferencedBuilds returns the digests that garbage collection must keep:
// those of the newest keep releases of each app, of every active release
// and of every pending one (a deploy in progress). It fails for a
// negative keep.
func (s *Store) ReferencedBuilds(keep int) (map[string]bool, error) {
	if keep < 0 {
		return nil, fmt.Errorf("referenced builds: %w", invalidValue("keep", fmt.Sprint(keep), "must be 0 or more"))
	}
	out := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketReleases).ForEachBucket(func(app []byte) error {
			c := tx.Bucket(bucketReleases).Bucket(app).Cursor()
			i := 0
			for k, v := c.Last(); k != nil; k, v = c.Prev() {
				var r struct {
					Build  string `json:"build"`
					Status Status `json:"status"`
				}
				if err := json.Unmarshal(v, &r); err != nil {
					return fmt.Errorf("%s v%d: %w", app, btoi(k), err)
				}
				if i < keep || r.Status == StatusActive || r.Status == StatusPending {
					out[r.Build] = true
				}
				i++
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("referenced builds: %w", err)
	}
	return out, nil
}
