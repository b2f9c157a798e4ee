package agent

import (
	"context"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
)

// The operations on the event log: Events and FollowEvents. Each runs
// through do (op.go).

func toAPIEvent(e state.Event) api.Event {
	return api.Event{Seq: e.Seq, Time: e.Time, App: e.App, Kind: e.Kind, Message: e.Message}
}

// Events returns events after since, oldest first (limit 0: all).
func (a *Agent) Events(ctx context.Context, app string, since uint64, limit int) ([]api.Event, error) {
	return do(a, ctx, opts{app: app}, func(context.Context) ([]api.Event, error) {
		evs, err := a.store.Events(app, since, limit)
		if err != nil {
			return nil, err
		}
		out := make([]api.Event, 0, len(evs))
		for _, e := range evs {
			out = append(out, toAPIEvent(e))
		}
		return out, nil
	})
}

// FollowEvents sends events after since as they are recorded, until ctx
// ends or send fails. It wakes on every append; it does not poll.
func (a *Agent) FollowEvents(ctx context.Context, app string, since uint64, send func(api.Event) error) error {
	return do0(a, ctx, opts{app: app}, func(ctx context.Context) error {
		return a.followEvents(ctx, app, since, send)
	})
}

func (a *Agent) followEvents(ctx context.Context, app string, since uint64, send func(api.Event) error) error {
	for {
		// Take the wake-up channel before reading, so an append between
		// the read and the wait is not missed.
		woken := a.events.Wait()
		evs, err := a.store.Events(app, since, 1000)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if err := send(toAPIEvent(e)); err != nil {
				return err
			}
			since = e.Seq
		}
		if len(evs) == 1000 {
			continue
		}
		select {
		case <-ctx.Done():
			return a.followEnd()
		case <-woken:
		}
	}
}

// followEnd is how a follow stream ends when its context does: nil when
// the client went away, errShuttingDown (sent to the client as the
// stream's last line) when the agent began shutting down.
func (a *Agent) followEnd() error {
	if a.opCtx.Err() != nil {
		return errShuttingDown
	}
	return nil
}
