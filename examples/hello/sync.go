package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
)

// lockedWriter serialises writes so that concurrent request log lines are
// never interleaved.
type lockedWriter struct {
	mu sync.Mutex // guards w
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// connTracker knows which connections were accepted but have not read
// their first request yet (http.StateNew).
type connTracker struct {
	mu      sync.Mutex // guards fresh
	fresh   map[net.Conn]bool
	changed chan struct{} // one pending notice of a change to fresh
}

func newConnTracker() *connTracker {
	return &connTracker{fresh: map[net.Conn]bool{}, changed: make(chan struct{}, 1)}
}

// track is the server's ConnState hook.
func (c *connTracker) track(conn net.Conn, st http.ConnState) {
	c.mu.Lock()
	if st == http.StateNew {
		c.fresh[conn] = true
	} else {
		delete(c.fresh, conn)
	}
	c.mu.Unlock()
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// waitRead waits until no connection is fresh, or ctx ends.
func (c *connTracker) waitRead(ctx context.Context) error {
	for {
		c.mu.Lock()
		n := len(c.fresh)
		c.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-c.changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
