package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	bolt "go.etcd.io/bbolt"
)

// ProcRecord is a running process as the agent last started it. After a
// kill -9 of the agent, these records find the processes it left behind.
type ProcRecord struct {
	App       string `json:"app"`
	Instance  string `json:"instance"` // web.1
	Name      string `json:"name"`     // the record's key, unique across apps
	PID       int    `json:"pid"`
	PGID      int    `json:"pgid"`
	StartTime uint64 `json:"start_time"` // /proc/<pid>/stat field 22, to tell a reused pid apart
	Release   int    `json:"release"`
}

// PutProc records (or replaces) a process record under p.Name. Many
// concurrent callers share one commit (bbolt's Batch), so starting many
// processes at once costs few fsyncs.
func (s *Store) PutProc(p ProcRecord) error {
	if p.Name == "" {
		return fmt.Errorf("put proc: %w", invalidName("process record name", p.Name, "must not be empty"))
	}
	if p.PID <= 0 || p.PGID <= 0 {
		return fmt.Errorf("put proc %s: %w", p.Name, invalidValue("pid/pgid", fmt.Sprintf("%d/%d", p.PID, p.PGID), "must be positive"))
	}
	data, err := json.Marshal(&p)
	if err != nil {
		return fmt.Errorf("put proc %s: %w", p.Name, err)
	}
	// Batch may run the function more than once; it only puts.
	err = s.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketProcs).Put([]byte(p.Name), data)
	})
	if err != nil {
		return fmt.Errorf("put proc %s: %w", p.Name, err)
	}
	return nil
}

// DeleteProc removes a process record; removing one that does not exist
// is not an error (the process is gone either way).
func (s *Store) DeleteProc(name string) error {
	err := s.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketProcs).Delete([]byte(name))
	})
	if err != nil {
		return fmt.Errorf("delete proc %s: %w", name, err)
	}
	return nil
}

// Procs returns every process record, ordered by name.
func (s *Store) Procs() ([]ProcRecord, error) {
	out := []ProcRecord{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketProcs).ForEach(func(k, v []byte) error {
			var p ProcRecord
			if err := json.Unmarshal(v, &p); err != nil {
				return fmt.Errorf("proc %q: %w", k, err)
			}
			out = append(out, p)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list procs: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// deleteProcsOf removes the process records of an app.
func deleteProcsOf(tx *bolt.Tx, app string) error {
	b := tx.Bucket(bucketProcs)
	var doomed [][]byte
	err := b.ForEach(func(k, v []byte) error {
		var p ProcRecord
		if err := json.Unmarshal(v, &p); err != nil {
			return fmt.Errorf("proc %q: %w", k, err)
		}
		if p.App == app {
			doomed = append(doomed, append([]byte(nil), k...))
		}
		return nil
	})
	if err != nil {
		return err
	}
	var errs []error
	for _, k := range doomed {
		errs = append(errs, b.Delete(k))
	}
	return errors.Join(errs...)
}
