package main

import (
	"io"
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
