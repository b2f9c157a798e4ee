package agent

import (
	"fmt"
	"time"

	"github.com/berth-dev/berth/agent/api"
)

// progress reports the steps of a long operation with the time each took.
type progress struct {
	fn   api.ProgressFunc
	last time.Time
}

func newProgress(fn api.ProgressFunc) *progress {
	return &progress{fn: fn, last: time.Now()}
}

// step reports a finished step; its Elapsed is the time since the
// previous step (or mark).
func (p *progress) step(step, format string, args ...any) {
	now := time.Now()
	if p.fn != nil {
		p.fn(api.Progress{Time: now, Step: step, Message: fmt.Sprintf(format, args...), Elapsed: now.Sub(p.last)})
	}
	p.last = now
}

// mark starts timing the next step.
func (p *progress) mark() { p.last = time.Now() }

// shortDigest is the first 7 characters of a digest, as git shows them.
func shortDigest(d string) string {
	if len(d) > 7 {
		return d[:7]
	}
	return d
}
