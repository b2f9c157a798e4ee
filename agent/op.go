package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/berth-dev/berth/state"
)

// An operation is one api.Backend call. Every one runs through do, which
// takes the same steps in the same order:
//
//	begin     refuse the call before Run is ready or once shutdown began
//	          (errShuttingDown), and count it so shutdown waits for it
//	validate  the app's name (and that it exists, with opts.exists), then
//	          opts.check: bad input is refused before anything is locked
//	lock      with opts.lock, the app's lock: one change per app at a
//	          time, a second one waits (other apps are not affected)
//	run       fn, with a context that ends with the client's request or
//	          when shutdown begins
//	map       the error to its api kind once (mapErr); one caused by the
//	          shutdown becomes errShuttingDown
type opts struct {
	// app is the app the operation is about; "" for none.
	app string
	// exists requires app to exist (api.ErrNotFound otherwise).
	exists bool
	// check validates the rest of the input, before the lock.
	check func() error
	// lock holds the app's lock while fn runs.
	lock bool
}

// do runs fn as an operation (see opts).
func do[T any](a *Agent, ctx context.Context, o opts, fn func(ctx context.Context) (T, error)) (T, error) {
	var zero T
	if err := a.begin(); err != nil {
		return zero, err
	}
	defer a.end()
	if o.app != "" {
		if err := state.ValidateAppName(o.app); err != nil {
			return zero, mapErr(err)
		}
		if o.exists {
			if _, err := a.store.App(o.app); err != nil {
				return zero, mapErr(err)
			}
		}
	}
	if o.check != nil {
		if err := o.check(); err != nil {
			return zero, mapErr(err)
		}
	}
	ctx, cancel := a.opContext(ctx)
	defer cancel()
	if o.lock {
		unlock, err := a.lockApp(ctx, o.app)
		if err != nil {
			return zero, a.opErr(err)
		}
		defer unlock()
	}
	out, err := fn(ctx)
	if err != nil {
		return zero, a.opErr(err)
	}
	return out, nil
}

// do0 is do for an operation that returns only an error.
func do0(a *Agent, ctx context.Context, o opts, fn func(ctx context.Context) error) error {
	_, err := do(a, ctx, o, func(ctx context.Context) (struct{}, error) { return struct{}{}, fn(ctx) })
	return err
}

// opErr maps an operation's error: one that the shutdown caused (a
// context cancelled by it) says so; any other gets its api kind.
func (a *Agent) opErr(err error) error {
	if a.opCtx.Err() != nil && errors.Is(err, context.Canceled) && !errors.Is(err, ErrShuttingDown) {
		return fmt.Errorf("%w: %w", errShuttingDown, err)
	}
	return mapErr(err)
}
