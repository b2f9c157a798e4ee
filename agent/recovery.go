package agent

// Recovery is what the agent does at start, before it serves: a previous
// agent may have died (kill -9, power cut) with app processes running and
// a switch half done. The store is written before processes are touched,
// so the agent can always finish or undo: it adopts what the previous one
// left running when it can verify it and kills the rest (adoptLeftovers,
// killStrays), marks releases left pending failed
// (failInterrupted), and starts every app on its active release
// (startAll).

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/agent/internal/procfs"
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

// killStrays kills the app processes of this data dir that no record
// names, with their process groups (sparing the adopted instances' and
// what left them: their markers say so), and waits until they are gone. A
// previous agent killed between starting a process and recording it
// leaves such a stray behind, which killLeftovers cannot know of. A
// process is ours when the environment it was started with has
// BERTH_APP=<app> and the TMPDIR this agent gives that app's processes
// (apps/<app>/tmp under the data dir): processEnv sets both, and neither
// can be configured. Called at start, before any app process runs.
func (a *Agent) killStrays(ctx context.Context, adopted adoptedSet) {
	own := unix.Getpgrp()
	groups := map[int]string{} // pgid -> app
	err := procfs.Each(func(pid int, st procfs.Stat) bool {
		if st.State == 'Z' || st.PGID <= 1 || st.PGID == own || adopted.pgids[st.PGID] {
			return true
		}
		env, err := procfs.Environ(pid)
		if err != nil {
			return true
		}
		var app, tmp, proc, rel string
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, "BERTH_APP="); ok {
				app = v
			} else if v, ok := strings.CutPrefix(kv, "TMPDIR="); ok {
				tmp = v
			} else if v, ok := strings.CutPrefix(kv, "BERTH_PROCESS="); ok {
				proc = v
			} else if v, ok := strings.CutPrefix(kv, "BERTH_RELEASE="); ok {
				rel = v
			}
		}
		if adopted.instances[app+"/"+proc+"@"+rel] {
			return true // it left an adopted instance's group: stopped with it
		}
		if app != "" && tmp == a.appDir(app, "tmp") {
			groups[st.PGID] = app
		}
		return true
	})
	if err != nil {
		a.log.Error("look for stray app processes", "error", err)
	}
	for pgid, app := range groups {
		a.log.Warn("killing an app process the previous agent started but did not record", "app", app, "pgid", pgid)
		a.killGroup(ctx, pgid)
	}
}

// killGroup SIGKILLs a process group a previous agent left and waits
// (up to 10 s) until it is gone.
func (a *Agent) killGroup(ctx context.Context, pgid int) {
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		a.log.Error("kill leftover process group", "pgid", pgid, "error", err)
	}
	if err := procfs.WaitGroupGone(ctx, pgid, 10*time.Second); err != nil {
		a.log.Error("leftover process group did not go away", "pgid", pgid, "error", err)
	}
}

// failInterrupted marks the releases a previous agent left pending (a
// switch interrupted before activation) failed. Since the store records
// activation before processes are touched, a pending release never ran.
//
// A release whose failure the previous agent could not record (a full
// disk) is marked failed with the cause it kept in its cause file
// (failures.go), passed as causes, not as interrupted.
func (a *Agent) failInterrupted(causes map[relKey]string) {
	pending, err := a.store.PendingReleases()
	if err != nil {
		a.log.Error("read pending releases", "error", err)
		return
	}
	for _, rel := range pending {
		reason := "interrupted: agent stopped before activation"
		if cause, ok := causes[relKey{App: rel.App, Version: rel.Version}]; ok {
			reason = cause
		}
		if err := a.markFailed(rel.App, rel.Version, reason, rel.Output); err != nil {
			continue // logged, and kept for the next try
		}
		a.log.Warn("release was left pending; marked failed", "app", rel.App, "version", rel.Version, "reason", reason)
		a.appendEvent(rel.App, "failure", fmt.Sprintf("v%d %s", rel.Version, reason))
	}
}
