package state

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Config configures a Store. The zero value of each field but Path means
// the documented default.
type Config struct {
	// Path is the bbolt file, e.g. $DATA/berth.db. It is created with mode
	// 0600 (and an existing file is set to 0600: it holds config values,
	// which may be secrets). Its directory is created (0700) if missing.
	Path string
	// LockTimeout is how long Open waits for another process to release
	// the database's lock before it fails with ErrLocked. Zero means 1s;
	// Open never waits forever.
	LockTimeout time.Duration
	// MaxEvents is how many events the log keeps; appending beyond it drops
	// the oldest. Zero means 10000.
	MaxEvents int
}

// Defaults for the zero values of Config.
const (
	DefaultLockTimeout = time.Second
	DefaultMaxEvents   = 10000
)

// Store is berth's single source of truth: apps, builds, releases, config,
// formation, ports, process records and events in one bbolt file. Its
// methods are safe for concurrent use. Every value it returns is a copy
// made inside the transaction that read it.
type Store struct {
	db   *bolt.DB
	log  hclog.Logger
	path string
	cfg  Config
}

// Bucket names. See migrate.go for the layout of each schema version.
var (
	bucketMeta      = []byte("meta")
	bucketApps      = []byte("apps")
	bucketReleases  = []byte("releases")
	bucketConfig    = []byte("config")
	bucketFormation = []byte("formation")
	bucketBuilds    = []byte("builds")
	bucketEvents    = []byte("events")
	bucketPorts     = []byte("ports")
	bucketProcs     = []byte("procs")
	bucketUIDs      = []byte("uids")

	keySchema = []byte("schema")

	// Sub-buckets of ports: by-instance maps "app\x00instance" to a
	// 2-byte big-endian port; by-port is the reverse index, used to find
	// the lowest free port.
	bucketPortsByInstance = []byte("by-instance")
	bucketPortsByPort     = []byte("by-port")

	// Sub-buckets of uids: by-app maps an app name to its 4-byte
	// big-endian uid; by-uid is the reverse index, used to find the
	// lowest free uid and to keep uids unique.
	bucketUIDsByApp = []byte("by-app")
	bucketUIDsByUID = []byte("by-uid")
)

// Open opens (creating if needed) the database at cfg.Path, waits at most
// cfg.LockTimeout for its lock, and brings its schema up to date in one
// transaction. It fails with an error wrapping ErrLocked when another
// process holds the database, and with ErrSchemaTooNew when a newer berth
// wrote it.
func Open(cfg Config, log hclog.Logger) (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("open store: no database path")
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = DefaultLockTimeout
	}
	if cfg.MaxEvents <= 0 {
		cfg.MaxEvents = DefaultMaxEvents
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	dir := filepath.Dir(cfg.Path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{Timeout: cfg.LockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: %w: another agent is using the data directory %s (gave up after the %s lock timeout)",
			cfg.Path, ErrLocked, dir, cfg.LockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", cfg.Path, err)
	}
	s := &Store{db: db, log: log, path: cfg.Path, cfg: cfg}
	if err := s.fixMode(); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.migrate(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", cfg.Path, err)
	}
	return s, nil
}

// fixMode sets the file's mode to 0600 if it has another one.
func (s *Store) fixMode() error {
	fi, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	if fi.Mode().Perm() != 0o600 {
		if err := os.Chmod(s.path, 0o600); err != nil {
			return fmt.Errorf("open store: set mode 0600: %w", err)
		}
		s.log.Warn("database file had a loose mode; set it to 0600", "path", s.path, "was", fi.Mode().Perm().String())
	}
	return nil
}

// Close releases the database and its lock. Calling it twice is harmless.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store %s: %w", s.path, err)
	}
	return nil
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// Check runs bbolt's consistency check (every page reachable exactly once,
// no page both used and free) over the whole file and returns every
// problem found, joined, or nil.
func (s *Store) Check() error {
	return s.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			return fmt.Errorf("check %s: %w", s.path, errors.Join(errs...))
		}
		return nil
	})
}

// SchemaVersion returns the schema version recorded in the database.
func (s *Store) SchemaVersion() (int, error) {
	var v int
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		v, err = readSchema(tx)
		return err
	})
	return v, err
}

// itob encodes a version or sequence number as an 8-byte big-endian key,
// so a cursor walks them in numeric order.
func itob(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// btoi decodes a key written by itob; a malformed key yields 0.
func btoi(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// putJSON stores v as JSON under key.
func putJSON(b *bolt.Bucket, key []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, data)
}

// getJSON decodes the value under key into v (a copy: the bytes bbolt
// returns are only valid inside the transaction). It reports false when
// there is no such key.
func getJSON(b *bolt.Bucket, key []byte, v any) (bool, error) {
	data := b.Get(key)
	if data == nil {
		return false, nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return true, fmt.Errorf("decode record %q: %w", key, err)
	}
	return true, nil
}

// now is the time stamp of new records: UTC, without a monotonic reading,
// so a record equals itself after a round trip through JSON.
func now() time.Time { return time.Now().UTC() }
