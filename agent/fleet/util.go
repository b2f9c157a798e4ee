package fleet

import (
	"maps"
	"slices"
	"sync"
)

func slicesSorted(set map[string]bool) []string { return slices.Sorted(maps.Keys(set)) }

// notifier wakes every waiter at each change: wait returns a channel
// closed at the next notify.
type notifier struct {
	mu sync.Mutex // guards ch
	ch chan struct{}
}

func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch == nil {
		n.ch = make(chan struct{})
	}
	return n.ch
}

func (n *notifier) notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch != nil {
		close(n.ch)
		n.ch = nil
	}
}

// converging owns the apply goroutines.
type converging struct{ wg sync.WaitGroup }

func (c *converging) start(fn func()) { c.wg.Go(fn) }
func (c *converging) wait()           { c.wg.Wait() }
