package state

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"

	bolt "go.etcd.io/bbolt"
)

// Config returns the app's current config: the active release's config,
// or what PutConfig stored before the first deploy. The map is the
// caller's to change.
func (s *Store) Config(app string) (map[string]string, error) {
	cfg := map[string]string{}
	err := s.db.View(func(tx *bolt.Tx) error {
		if _, err := loadApp(tx, app); err != nil {
			return err
		}
		_, err := getJSON(tx.Bucket(bucketConfig), []byte(app), &cfg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("get config: %w", err)
	}
	return cfg, nil
}

// PutConfig replaces the app's current config. Config changes of a
// deployed app go through a release (CreateRelease, then Activate, which
// overwrites what PutConfig stored); PutConfig is for an app that has no
// release yet, so its first deploy starts from that config. Nothing is
// written if a name is invalid.
func (s *Store) PutConfig(app string, cfg map[string]string) error {
	if err := validateConfig(cfg); err != nil {
		return fmt.Errorf("put config of %s: %w", app, err)
	}
	if cfg == nil {
		cfg = map[string]string{}
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		if _, err := loadApp(tx, app); err != nil {
			return err
		}
		return putJSON(tx.Bucket(bucketConfig), []byte(app), cfg)
	})
	if err != nil {
		return fmt.Errorf("put config: %w", err)
	}
	return nil
}

func loadFormation(tx *bolt.Tx, app string) (map[string]int, error) {
	f := map[string]int{}
	if _, err := getJSON(tx.Bucket(bucketFormation), []byte(app), &f); err != nil {
		return nil, err
	}
	return f, nil
}

// Formation returns the app's formation: process type -> count, for the
// types that were ever set (a type not in it runs with the agent's
// default). It outlives releases.
func (s *Store) Formation(app string) (map[string]int, error) {
	var f map[string]int
	err := s.db.View(func(tx *bolt.Tx) error {
		if _, err := loadApp(tx, app); err != nil {
			return err
		}
		var err error
		f, err = loadFormation(tx, app)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("get formation: %w", err)
	}
	return f, nil
}

// SetFormation merges the given counts into the app's formation (types
// not given keep their count; a count of 0 is kept, meaning scaled to
// zero) and returns the whole formation. Counts run from 0 to
// MaxProcessCount, and add up to at most MaxAppProcesses for the app and
// MaxAgentProcesses for all apps; type names follow ValidateProcessType.
// Nothing is written if any entry is invalid.
func (s *Store) SetFormation(app string, f map[string]int) (map[string]int, error) {
	if err := validateFormation(f); err != nil {
		return nil, fmt.Errorf("set formation of %s: %w", app, err)
	}
	var out map[string]int
	err := s.db.Update(func(tx *bolt.Tx) error {
		if _, err := loadApp(tx, app); err != nil {
			return err
		}
		cur, err := loadFormation(tx, app)
		if err != nil {
			return err
		}
		maps.Copy(cur, f)
		if err := checkTotals(tx, app, cur); err != nil {
			return err
		}
		out = cur
		return putJSON(tx.Bucket(bucketFormation), []byte(app), cur)
	})
	if err != nil {
		return nil, fmt.Errorf("set formation: %w", err)
	}
	return out, nil
}

// checkTotals refuses a formation f of app whose counts add up to more
// than MaxAppProcesses, or that would bring the counts of all apps above
// MaxAgentProcesses.
func checkTotals(tx *bolt.Tx, app string, f map[string]int) error {
	n := 0
	for _, c := range f {
		n += c
	}
	if n > MaxAppProcesses {
		return invalidValue("formation", fmt.Sprintf("%d instances", n), fmt.Sprintf("an app may run at most %d instances (MaxAppProcesses)", MaxAppProcesses))
	}
	total := n
	err := tx.Bucket(bucketFormation).ForEach(func(k, v []byte) error {
		if string(k) == app {
			return nil
		}
		other, err := loadFormation(tx, string(k))
		for _, c := range other {
			total += c
		}
		return err
	})
	if err != nil {
		return err
	}
	if total > MaxAgentProcesses {
		return invalidValue("formation", fmt.Sprintf("%d instances on this agent", total), fmt.Sprintf("all apps together may run at most %d instances (MaxAgentProcesses)", MaxAgentProcesses))
	}
	return nil
}

// portKey is the by-instance key of an app's instance. NUL cannot occur
// in either name.
func portKey(app, instance string) []byte {
	return []byte(app + "\x00" + instance)
}

// Port returns the port of the app's instance (such as "web.1"). The first
// call allocates the lowest port >= base that no instance of any app
// holds, and stores it; every later call returns the same port, whatever
// base it passes, across releases and restarts, until the app is deleted.
// It fails with ErrPortsExhausted when no port from base to 65535 is free.
func (s *Store) Port(app, instance string, base int) (int, error) {
	if err := ValidateInstance(instance); err != nil {
		return 0, fmt.Errorf("port of %s %s: %w", app, instance, err)
	}
	if base < 1 || base > 65535 {
		return 0, fmt.Errorf("port of %s %s: %w", app, instance, invalidValue("base port", fmt.Sprint(base), "must be from 1 to 65535"))
	}
	key := portKey(app, instance)
	port := 0
	// Most calls find a stored port: try a read-only transaction first.
	err := s.db.View(func(tx *bolt.Tx) error {
		if _, err := loadApp(tx, app); err != nil {
			return err
		}
		if v := tx.Bucket(bucketPorts).Bucket(bucketPortsByInstance).Get(key); len(v) == 2 {
			port = int(binary.BigEndian.Uint16(v))
		}
		return nil
	})
	if err == nil && port == 0 {
		err = s.db.Update(func(tx *bolt.Tx) error {
			if _, err := loadApp(tx, app); err != nil {
				return err
			}
			byInst := tx.Bucket(bucketPorts).Bucket(bucketPortsByInstance)
			byPort := tx.Bucket(bucketPorts).Bucket(bucketPortsByPort)
			if v := byInst.Get(key); len(v) == 2 { // allocated meanwhile
				port = int(binary.BigEndian.Uint16(v))
				return nil
			}
			// The lowest free port is the first gap in by-port from base.
			want := base
			c := byPort.Cursor()
			for k, _ := c.Seek(portBytes(base)); k != nil && int(binary.BigEndian.Uint16(k)) == want; k, _ = c.Next() {
				want++
			}
			if want > 65535 {
				return fmt.Errorf("%w from %d", ErrPortsExhausted, base)
			}
			port = want
			if err := byInst.Put(key, portBytes(port)); err != nil {
				return err
			}
			return byPort.Put(portBytes(port), key)
		})
	}
	if err != nil {
		return 0, fmt.Errorf("port of %s %s: %w", app, instance, err)
	}
	return port, nil
}

// Ports returns the ports allocated to the app's instances.
func (s *Store) Ports(app string) (map[string]int, error) {
	out := map[string]int{}
	err := s.db.View(func(tx *bolt.Tx) error {
		if _, err := loadApp(tx, app); err != nil {
			return err
		}
		prefix := []byte(app + "\x00")
		c := tx.Bucket(bucketPorts).Bucket(bucketPortsByInstance).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if len(v) == 2 {
				out[string(k[len(prefix):])] = int(binary.BigEndian.Uint16(v))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list ports: %w", err)
	}
	return out, nil
}

// deletePorts frees every port of the app.
func deletePorts(tx *bolt.Tx, app string) error {
	byInst := tx.Bucket(bucketPorts).Bucket(bucketPortsByInstance)
	byPort := tx.Bucket(bucketPorts).Bucket(bucketPortsByPort)
	prefix := []byte(app + "\x00")
	var keys, ports [][]byte
	c := byInst.Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		keys = append(keys, append([]byte(nil), k...))
		ports = append(ports, append([]byte(nil), v...))
	}
	for i := range keys {
		if err := byInst.Delete(keys[i]); err != nil {
			return err
		}
		if err := byPort.Delete(ports[i]); err != nil {
			return err
		}
	}
	return nil
}

func portBytes(p int) []byte {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, uint16(p))
	return b
}
