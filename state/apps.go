package state

import (
	"encoding/json"
	"fmt"
	"maps"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// App is an application.
type App struct {
	Name          string
	User          string // run-as user; empty means the agent's default
	CreatedAt     time.Time
	ActiveRelease int // the active version, 0 when none
	// Stopped says the fleet stopped the app on this node (StopApp):
	// every type is scaled to 0 until ResumeApp.
	Stopped bool
}

// appRecord is an app as stored under apps/<name>.
type appRecord struct {
	Name        string    `json:"name"`
	User        string    `json:"user,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	LastVersion int       `json:"last_version"` // the newest version allocated; never decremented
	Active      int       `json:"active"`       // the active version, 0 when none
	Stopped     bool      `json:"stopped,omitempty"`
}

func (r appRecord) app() App {
	return App{Name: r.Name, User: r.User, CreatedAt: r.CreatedAt, ActiveRelease: r.Active, Stopped: r.Stopped}
}

// loadApp reads the app's record, failing with ErrAppNotFound (or a
// validation error for a name no app can have).
func loadApp(tx *bolt.Tx, name string) (appRecord, error) {
	var rec appRecord
	if err := ValidateAppName(name); err != nil {
		return rec, err
	}
	ok, err := getJSON(tx.Bucket(bucketApps), []byte(name), &rec)
	if err != nil {
		return rec, err
	}
	if !ok {
		return rec, fmt.Errorf("%w: %q", ErrAppNotFound, name)
	}
	return rec, nil
}

func saveApp(tx *bolt.Tx, rec appRecord) error {
	return putJSON(tx.Bucket(bucketApps), []byte(rec.Name), &rec)
}

// CreateApp creates an app with no releases, an empty config and an empty
// formation. It fails with ErrAppExists if the name is taken. An app
// created again after DeleteApp starts over at v1: it is a new app.
func (s *Store) CreateApp(name string) (App, error) {
	if err := ValidateAppName(name); err != nil {
		return App{}, fmt.Errorf("create app: %w", err)
	}
	rec := appRecord{Name: name, CreatedAt: now()}
	err := s.db.Update(func(tx *bolt.Tx) error {
		apps := tx.Bucket(bucketApps)
		if apps.Get([]byte(name)) != nil {
			return fmt.Errorf("%w: %q", ErrAppExists, name)
		}
		if _, err := tx.Bucket(bucketReleases).CreateBucket([]byte(name)); err != nil {
			return fmt.Errorf("releases bucket: %w", err)
		}
		return saveApp(tx, rec)
	})
	if err != nil {
		return App{}, fmt.Errorf("create app: %w", err)
	}
	return rec.app(), nil
}

// App returns the named app, or ErrAppNotFound.
func (s *Store) App(name string) (App, error) {
	var rec appRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		rec, err = loadApp(tx, name)
		return err
	})
	if err != nil {
		return App{}, fmt.Errorf("get app: %w", err)
	}
	return rec.app(), nil
}

// Apps returns every app, sorted by name.
func (s *Store) Apps() ([]App, error) {
	out := []App{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketApps).ForEach(func(k, v []byte) error {
			var rec appRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("app %q: %w", k, err)
			}
			out = append(out, rec.app())
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list apps: %w", err)
	}
	// bbolt keys are sorted bytewise, which for app names is by name;
	// sort anyway so the order does not rest on the key encoding.
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DeleteApp removes the app with its releases, config, formation, ports,
// uid and process records, in one transaction. Its events stay in the log and
// its builds stay (other apps may share them; garbage collection decides).
func (s *Store) DeleteApp(name string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		if _, err := loadApp(tx, name); err != nil {
			return err
		}
		key := []byte(name)
		if err := tx.Bucket(bucketApps).Delete(key); err != nil {
			return err
		}
		if tx.Bucket(bucketReleases).Bucket(key) != nil {
			if err := tx.Bucket(bucketReleases).DeleteBucket(key); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketConfig).Delete(key); err != nil {
			return err
		}
		if err := tx.Bucket(bucketFormation).Delete(key); err != nil {
			return err
		}
		if err := deletePorts(tx, name); err != nil {
			return err
		}
		if err := deleteUID(tx, name); err != nil {
			return err
		}
		return deleteProcsOf(tx, name)
	})
	if err != nil {
		return fmt.Errorf("delete app: %w", err)
	}
	return nil
}

// SetAppUser sets the user the app's processes run as; "" means the
// agent's default.
func (s *Store) SetAppUser(name, user string) (App, error) {
	if err := ValidateUser(user); err != nil {
		return App{}, fmt.Errorf("set user of app %s: %w", name, err)
	}
	var rec appRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		if rec, err = loadApp(tx, name); err != nil {
			return err
		}
		rec.User = user
		return saveApp(tx, rec)
	})
	if err != nil {
		return App{}, fmt.Errorf("set user of app: %w", err)
	}
	return rec.app(), nil
}

// StopApp scales every type of types (and of the app's formation) to 0
// and marks the app stopped, in one transaction, so an agent restarted
// afterwards starts none of its processes. Its releases stay.
func (s *Store) StopApp(name string, types []string) (App, error) {
	var rec appRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		if rec, err = loadApp(tx, name); err != nil {
			return err
		}
		f, err := loadFormation(tx, name)
		if err != nil {
			return err
		}
		for t := range f {
			f[t] = 0
		}
		for _, t := range types {
			if err := ValidateProcessType(t); err != nil {
				return err
			}
			f[t] = 0
		}
		if err := putJSON(tx.Bucket(bucketFormation), []byte(name), f); err != nil {
			return err
		}
		rec.Stopped = true
		return saveApp(tx, rec)
	})
	if err != nil {
		return App{}, fmt.Errorf("stop app: %w", err)
	}
	return rec.app(), nil
}

// ResumeApp merges formation into the app's formation (as SetFormation)
// and clears the mark StopApp set, in one transaction.
func (s *Store) ResumeApp(name string, formation map[string]int) (App, error) {
	if err := validateFormation(formation); err != nil {
		return App{}, fmt.Errorf("resume app %s: %w", name, err)
	}
	var rec appRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		if rec, err = loadApp(tx, name); err != nil {
			return err
		}
		cur, err := loadFormation(tx, name)
		if err != nil {
			return err
		}
		maps.Copy(cur, formation)
		if err := checkTotals(tx, name, cur); err != nil {
			return err
		}
		if err := putJSON(tx.Bucket(bucketFormation), []byte(name), cur); err != nil {
			return err
		}
		rec.Stopped = false
		return saveApp(tx, rec)
	})
	if err != nil {
		return App{}, fmt.Errorf("resume app: %w", err)
	}
	return rec.app(), nil
}
