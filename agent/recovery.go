package agent

import (
	"context"
	"fmt"
)

// startAll brings every app to its active release and formation; run at
// start-up. An app that cannot start is logged and recorded as an event;
// the others start anyway.
func (a *Agent) startAll(ctx context.Context) {
	apps, err := a.store.Apps()
	if err != nil {
		a.log.Error("list apps", "error", err)
		return
	}
	for _, app := range apps {
		if app.ActiveRelease == 0 {
			continue
		}
		unlock, err := a.lockApp(ctx, app.Name)
		if err != nil {
			return
		}
		err = a.startApp(ctx, app.Name)
		unlock()
		if err != nil {
			a.log.Error("start app", "app", app.Name, "error", err)
			a.appendEvent(app.Name, "failure", fmt.Sprintf("start at boot: %v", err))
		}
	}
}

func (a *Agent) startApp(ctx context.Context, app string) error {
	ctx, cancel := a.opContext(ctx)
	defer cancel()
	rel, b, err := a.activeBuild(app)
	if err != nil {
		return err
	}
	if err := a.swapCurrent(app, b.Dir); err != nil {
		a.log.Error("swap current link", "app", app, "error", err)
	}
	insts, err := a.converge(ctx, app, rel, b, false, false, newProgress(nil))
	setLive(insts)
	if err != nil {
		return err
	}
	a.log.Info("app started", "app", app, "release", rel.Version)
	return nil
}
