package agent

import (
	"runtime"
	"sync"
	"time"

	"github.com/berth-dev/berth/agent/internal/imagetrim"
)

// The agent gives back its mappings of its own executable's read-only
// pages (imagetrim explains why) once it has gone quiet: quietDelay
// after the last burst of work that maps many of them (the start-up, a
// switch, an API request, a GC cycle), and at most once every
// minTrimInterval, so a busy agent keeps its pages and a steady trickle
// of requests costs one trim a minute at most. What the agent runs next
// comes back as minor faults from the page cache.
//
// Trimming at the end of the work itself is too early: every page fault
// maps 64 KiB of file around it (the kernel's fault-around), so the
// 120-odd faults of answering the request and of the GC cycle that
// follows a deploy bring back 8 MiB of the 11 MiB just released.
const (
	quietDelay      = time.Second
	minTrimInterval = time.Minute
)

// imageTrimmer runs the trim when the agent has been quiet for
// quietDelay. Its timer is armed only after work, so an idle agent has
// no timer pending and is never woken by it.
type imageTrimmer struct {
	trim func() // the trim itself; nil turns the trimmer off

	mu      sync.Mutex
	timer   *time.Timer
	due     time.Time // when the armed timer fires; zero if none
	last    time.Time // the last trim
	stopped bool
}

// poke notes work just done: the trim runs quietDelay from now, or
// later if the last trim was less than minTrimInterval ago.
func (t *imageTrimmer) poke() {
	if t == nil || t.trim == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	at := time.Now().Add(quietDelay)
	if !t.last.IsZero() {
		if next := t.last.Add(minTrimInterval); next.After(at) {
			at = next
		}
	}
	if !t.due.IsZero() && t.due.After(at) {
		return // already due later, after more work or the interval
	}
	t.due = at
	if t.timer == nil {
		t.timer = time.AfterFunc(time.Until(at), t.fire)
		return
	}
	t.timer.Reset(time.Until(at))
}

func (t *imageTrimmer) fire() {
	t.mu.Lock()
	if t.stopped || t.due.IsZero() {
		t.mu.Unlock()
		return
	}
	t.due = time.Time{}
	t.last = time.Now()
	t.mu.Unlock()
	t.trim()
}

// stop disarms the trimmer for good.
func (t *imageTrimmer) stop() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	if t.timer != nil {
		t.timer.Stop()
	}
}

// gcSentinel is garbage made to be found by the next GC cycle: its
// finalizer reports the cycle. It holds a pointer so that it is not
// batched with other tiny objects, whose finalizers run late.
type gcSentinel struct{ _ *int }

// pokeAfterGC calls t.poke after every GC cycle from now until t
// stops: a cycle walks the heap's types and the goroutines' stack maps,
// which maps pages of the executable back.
func (t *imageTrimmer) pokeAfterGC() {
	if t == nil || t.trim == nil {
		return
	}
	runtime.SetFinalizer(&gcSentinel{}, func(*gcSentinel) {
		t.mu.Lock()
		stopped := t.stopped
		t.mu.Unlock()
		if stopped {
			return
		}
		t.poke()
		t.pokeAfterGC()
	})
}

// trimImage releases the executable's pages now, unless the config
// says to keep them (--keep-image-mapped).
func (a *Agent) trimImage() {
	if a.config().KeepImageMapped {
		return
	}
	start := time.Now()
	released, _, err := imagetrim.Trim()
	if err != nil {
		a.log.Debug("executable pages not released", "error", err)
		return
	}
	a.log.Debug("executable pages released", "kib", released>>10, "took", time.Since(start))
}
