// Package notify wakes any number of waiters at each change, without a
// goroutine or a channel per waiter kept between changes.
package notify

import "sync"

// Notifier wakes any number of waiters: Wait returns a channel closed by
// the next Notify. Its zero value is ready to use.
type Notifier struct {
	mu sync.Mutex // guards ch
	ch chan struct{}
}

// Wait returns a channel closed at the next Notify.
func (n *Notifier) Wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch == nil {
		n.ch = make(chan struct{})
	}
	return n.ch
}

// Notify wakes every waiter of the channels Wait has returned so far.
func (n *Notifier) Notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch != nil {
		close(n.ch)
		n.ch = nil // the next Wait makes a fresh one
	}
}
