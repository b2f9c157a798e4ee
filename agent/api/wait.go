package api

import (
	"context"
	"fmt"
	"net/url"
)

// A switch (deploy, config change, rollback) returns once the new
// release's instances are up: healthy, or running for the settle time.
// Its probation (a window in which a crash or a failed check still rolls
// the release back) goes on in the agent. A caller that wants the answer
// only after the probation asks with WithProbationWait; the client sends
// it as the query parameter wait=probation.

// Values of Release.Probation.
const (
	// ProbationWatching: the call returned once the instances were up;
	// the agent watches them for the rest of the probation and rolls the
	// release back (recorded as a "rollback" event) if they fail.
	ProbationWatching = "watching"
	// ProbationPassed: the call waited and the instances stayed up for
	// the whole probation.
	ProbationPassed = "passed"
)

// waitQuery is the query parameter that asks a switch to wait through
// probation, and waitProbation its only value.
const (
	waitQuery     = "wait"
	waitProbation = "probation"
)

type waitKey struct{}

// WithProbationWait returns a context whose switch calls (Deploy,
// SetConfig, Rollback) return only once the probation is over.
func WithProbationWait(ctx context.Context) context.Context {
	return context.WithValue(ctx, waitKey{}, true)
}

// WaitsForProbation reports whether ctx asks a switch to wait through
// probation (see WithProbationWait).
func WaitsForProbation(ctx context.Context) bool {
	v, _ := ctx.Value(waitKey{}).(bool)
	return v
}

// addWait adds wait=probation to q when ctx asks for it.
func addWait(ctx context.Context, q url.Values) url.Values {
	if !WaitsForProbation(ctx) {
		return q
	}
	if q == nil {
		q = url.Values{}
	}
	q.Set(waitQuery, waitProbation)
	return q
}

// waitContext returns ctx asking to wait through probation when q says
// wait=probation; any other value of wait is bad input.
func waitContext(ctx context.Context, q url.Values) (context.Context, error) {
	if !q.Has(waitQuery) {
		return ctx, nil
	}
	if v := q.Get(waitQuery); v != waitProbation {
		return ctx, fmt.Errorf("%w: wait=%q: the only value is %q", ErrInvalid, v, waitProbation)
	}
	return WithProbationWait(ctx), nil
}
