package agent

import (
	"runtime"
	"sync"
	"time"

	"github.com/berth-dev/berth/agent/internal/imagetrim"
)

// The agent gives back its mappings of its own executable's read-only
// pages (imagetrim explains why) once it has gone quiet: quietDelay
// after the last burst of work that maps many of them. A change to an
// app (a deploy, config change, rollback, scale or restart, under the
// app's lock) and the probation after a switch hold the trim off while
// they run and ask for one when they end, as the start-up does. An API
// request or a GC cycle asks for one too, but at most every
// minTrimInterval, so that a steady trickle of requests costs a trim
// (1 to 2 ms) every few seconds at most. A busy agent keeps its pages;
// what it runs after a trim comes back as minor faults from the page
// cache.
//
// Trimming at the end of the work itself is too early: every page fault
// maps 64 KiB of file around it (the kernel's fault-around), so the
// 120-odd faults of answering the request and of the GC cycle that
// follows a deploy, all within 10 ms of the switch's end, brought back
// 8 MiB of the 11 MiB just released.
const (
	quietDelay      = 250 * time.Millisecond
	minTrimInterval = 5 * time.Second
)

// imageTrimmer runs trim when the agent has been quiet for quiet. Its
// timer is armed only after work, so an idle agent has no timer pending
// and is never woken by it.
type imageTrimmer struct {
	trim         func() // the trim itself; nil turns the trimmer off
	quiet, every time.Duration

	mu      sync.Mutex
	busy    int // holds not yet released
	timer   *time.Timer
	due     time.Time // when the armed timer fires; zero if none
	heavy   bool      // the armed trim follows held work: no interval
	last    time.Time // the last trim
	stopped bool
}

// begin keeps the trim off until a matching end, which then asks for
// a trim after quiet, however recent the last one.
func (t *imageTrimmer) begin() {
	if t == nil || t.trim == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.busy++
	t.disarm()
}

// end ends what begin began.
func (t *imageTrimmer) end() {
	if t == nil || t.trim == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.busy--
	t.arm(true)
}

// hold is begin, and returns the matching end (a no-op once called).
func (t *imageTrimmer) hold() (release func()) {
	t.begin()
	var once sync.Once
	return func() { once.Do(t.end) }
}

// poke notes light work just done: the trim runs quiet from now, or
// later if the last trim was less than every ago.
func (t *imageTrimmer) poke() {
	if t == nil || t.trim == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.arm(false)
}

// arm sets the timer for quiet from now or, unless heavy, for every
// after the last trim if that is later. A trim armed heavy stays so
// until it runs: later light work only puts it off by quiet. t.mu is
// held.
func (t *imageTrimmer) arm(heavy bool) {
	if t.stopped || t.busy > 0 {
		return // the last release arms it
	}
	heavy = heavy || (t.heavy && !t.due.IsZero())
	at := time.Now().Add(t.quiet)
	if !heavy && !t.last.IsZero() {
		if next := t.last.Add(t.every); next.After(at) {
			at = next
		}
	}
	if !t.due.IsZero() && t.due.After(at) && !heavy {
		return // already due later: after more work, or the interval
	}
	t.due, t.heavy = at, heavy
	if t.timer == nil {
		t.timer = time.AfterFunc(time.Until(at), t.fire)
		return
	}
	t.timer.Reset(time.Until(at))
}

// disarm stops the timer; t.mu is held.
func (t *imageTrimmer) disarm() {
	t.due, t.heavy = time.Time{}, false
	if t.timer != nil {
		t.timer.Stop()
	}
}

func (t *imageTrimmer) fire() {
	t.mu.Lock()
	if t.stopped || t.busy > 0 || t.due.IsZero() || time.Until(t.due) > time.Millisecond {
		t.mu.Unlock()
		return // disarmed, held, or re-armed for later meanwhile
	}
	t.due, t.heavy = time.Time{}, false
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
	t.disarm()
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
		t.pokeAfterGC() // the next cycle's sentinel, before this cycle's trim
		t.poke()
	})
}

// trimImage releases the executable's pages now. With
// --keep-image-mapped the trimmer has no trim and never calls it.
func (a *Agent) trimImage() {
	start := time.Now()
	released, _, err := imagetrim.Trim()
	if err != nil {
		a.log.Debug("executable pages not released", "error", err)
		return
	}
	a.log.Debug("executable pages released", "kib", released>>10, "took", time.Since(start))
}
