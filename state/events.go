package state

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Event is one entry of the append-only event log.
type Event struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	App     string    `json:"app,omitempty"` // empty for agent-wide events
	Kind    string    `json:"kind"`          // deploy, release, crash, ...
	Message string    `json:"message"`
}

// AppendEvent adds an event to the log and returns it with its sequence
// number (one more than the previous event's). When the log holds more
// than Config.MaxEvents events, the oldest are dropped in the same
// transaction. app is "" for an agent-wide event, else a valid app name
// (the app need not exist any more).
func (s *Store) AppendEvent(app, kind, message string) (Event, error) {
	if app != "" {
		if err := ValidateAppName(app); err != nil {
			return Event{}, fmt.Errorf("append event: %w", err)
		}
	}
	if kind == "" {
		return Event{}, fmt.Errorf("append event: %w", invalidName("event kind", kind, "must not be empty"))
	}
	e := Event{Time: now(), App: app, Kind: kind, Message: message}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		e.Seq = seq
		if err := putJSON(b, itob(seq), &e); err != nil {
			return err
		}
		// Drop from the oldest while more than MaxEvents remain. Sequence
		// numbers are contiguous, so the count is last - first + 1.
		keep := uint64(s.cfg.MaxEvents)
		c := b.Cursor()
		for k, _ := c.First(); k != nil && seq-btoi(k)+1 > keep; k, _ = c.First() {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Event{}, fmt.Errorf("append event: %w", err)
	}
	return e, nil
}

// Events returns events with Seq > since, oldest first: at most limit of
// them (0 means no limit), only the app's when app is not "".
func (s *Store) Events(app string, since uint64, limit int) ([]Event, error) {
	if limit < 0 {
		return nil, fmt.Errorf("list events: %w", invalidValue("limit", fmt.Sprint(limit), "must be 0 (all) or more"))
	}
	out := []Event{}
	if since == math.MaxUint64 {
		return out, nil
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.Seek(itob(since + 1)); k != nil; k, v = c.Next() {
			if limit > 0 && len(out) == limit {
				break
			}
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("event %d: %w", btoi(k), err)
			}
			if app != "" && e.App != app {
				continue
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	return out, nil
}

// LastEventSeq returns the sequence number of the newest event (0 when the
// log is empty), where a follower that only wants new events starts.
func (s *Store) LastEventSeq() (uint64, error) {
	var seq uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		seq = tx.Bucket(bucketEvents).Sequence()
		return nil
	})
	return seq, err
}
