package agent

import (
	"runtime"
	"testing"
	"time"
)

// countingTrimmer returns a trimmer whose trims are sent on the
// returned channel.
func countingTrimmer(quiet, every time.Duration) (*imageTrimmer, chan struct{}) {
	trims := make(chan struct{}, 16)
	return &imageTrimmer{trim: func() { trims <- struct{}{} }, quiet: quiet, every: every}, trims
}

func waitTrim(t *testing.T, trims chan struct{}, what string) {
	t.Helper()
	select {
	case <-trims:
	case <-time.After(10 * time.Second):
		t.Fatalf("no trim %s", what)
	}
}

// noTrim checks that no trim comes within d; the trimmer under test
// must not trim at all in that state, so a slow machine cannot fail it.
func noTrim(t *testing.T, trims chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-trims:
		t.Fatalf("trimmed %s", what)
	case <-time.After(d):
	}
}

func TestImageTrimmer_TrimsOnceQuiet(t *testing.T) {
	tr, trims := countingTrimmer(20*time.Millisecond, time.Hour)
	defer tr.stop()
	tr.hold()() // the start-up
	waitTrim(t, trims, "after the start-up")
	noTrim(t, trims, 100*time.Millisecond, "twice for one burst of work")
}

func TestImageTrimmer_HoldKeepsItOff(t *testing.T) {
	tr, trims := countingTrimmer(10*time.Millisecond, time.Hour)
	defer tr.stop()
	release := tr.hold()
	tr.poke() // a request answered during the switch
	release2 := tr.hold()
	noTrim(t, trims, 100*time.Millisecond, "while a switch runs")
	release()
	release() // a second call is a no-op, not a second release
	noTrim(t, trims, 100*time.Millisecond, "while a second hold runs")
	release2()
	waitTrim(t, trims, "after the last hold ended")
}

// A hold also calls off a trim that was due: the switch's own work
// would map the pages back at once.
func TestImageTrimmer_HoldCallsOffDueTrim(t *testing.T) {
	tr, trims := countingTrimmer(50*time.Millisecond, time.Hour)
	defer tr.stop()
	tr.poke()
	release := tr.hold()
	noTrim(t, trims, 200*time.Millisecond, "during a hold that began after a poke")
	release()
	waitTrim(t, trims, "after the hold")
}

// Light work (requests, GC cycles) asks for a trim at most every
// interval; a switch's end asks for one whatever the interval.
func TestImageTrimmer_LightWorkWaitsForTheInterval(t *testing.T) {
	tr, trims := countingTrimmer(10*time.Millisecond, time.Hour)
	defer tr.stop()
	tr.poke()
	waitTrim(t, trims, "after the first request")
	tr.poke()
	noTrim(t, trims, 100*time.Millisecond, "a second time within the interval after light work")
	tr.hold()()
	waitTrim(t, trims, "after a switch, within the interval")
	// A request after the switch's end puts the switch's trim off by
	// the quiet time only, not to the interval.
	release := tr.hold()
	release()
	tr.poke()
	waitTrim(t, trims, "after a switch followed by a request")
}

func TestImageTrimmer_IntervalPasses(t *testing.T) {
	tr, trims := countingTrimmer(5*time.Millisecond, 50*time.Millisecond)
	defer tr.stop()
	tr.poke()
	waitTrim(t, trims, "after the first request")
	tr.poke()
	waitTrim(t, trims, "once the interval passed")
}

func TestImageTrimmer_StopEndsIt(t *testing.T) {
	tr, trims := countingTrimmer(10*time.Millisecond, time.Hour)
	tr.poke()
	tr.stop()
	tr.poke()
	tr.hold()()
	noTrim(t, trims, 100*time.Millisecond, "after stop")
}

func TestImageTrimmer_Off(t *testing.T) {
	var tr *imageTrimmer
	tr.poke()
	tr.hold()()
	tr.stop()
	(&imageTrimmer{}).hold()()
	(&imageTrimmer{}).pokeAfterGC()
}

func TestImageTrimmer_GCCyclePokes(t *testing.T) {
	tr, trims := countingTrimmer(10*time.Millisecond, time.Hour)
	defer tr.stop()
	tr.pokeAfterGC()
	runtime.GC()
	waitTrim(t, trims, "after a GC cycle")
	// The hook re-arms itself: the next cycle pokes again (with no
	// interval to wait for).
	tr.mu.Lock()
	tr.every = 0
	tr.mu.Unlock()
	runtime.GC()
	waitTrim(t, trims, "after a second GC cycle")
}
