package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/rollout"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/supervisor"
)

// The operations on an app's output: Logs and FollowLogs. Each runs
// through do (op.go).

// splitName turns a supervisor name "app/web.1" or "app/web.1@v8" into
// app and instance ("web.1").
func splitName(name string) (app, inst string) {
	app, inst, _ = strings.Cut(name, "/")
	inst, _, _ = strings.Cut(inst, "@")
	return app, inst
}

// supervisorNames returns the supervisor names of the app's instances in
// a slot ("web.1"), newest release last; app/web.1 when none runs.
func (a *Agent) supervisorNames(app, inst string) []string {
	var ins []*instance
	for _, in := range a.appInstances(app) {
		if in.Instance == inst {
			ins = append(ins, in)
		}
	}
	if len(ins) == 0 {
		return []string{app + "/" + inst}
	}
	slices.SortFunc(ins, func(x, y *instance) int { return x.Release - y.Release })
	out := make([]string, len(ins))
	for i, in := range ins {
		out[i] = in.Name
	}
	return out
}

// toAPILine turns a line of app/inst into its wire form. The release is
// the line's tag ("v3"), as spec.go sets it.
func toAPILine(app, inst string, l supervisor.LogLine) api.LogLine {
	rel, _ := strconv.Atoi(strings.TrimPrefix(l.Tag, "v"))
	return api.LogLine{Time: l.Time, App: app, Instance: inst, Release: rel, Stream: l.Stream, Text: l.Text,
		Split: l.Split, Partial: l.Partial, Missed: l.Missed}
}

// logMemory is how many of an instance's last lines the supervisor keeps
// in memory.
const logMemory = 100

// logTag is the tag of the lines of release version in the log files.
func logTag(version int) string { return "v" + strconv.Itoa(version) }

// logInstances lists the instances of an app that have output: those the
// agent runs and those with a log file.
func (a *Agent) logInstances(app string) []string {
	set := map[string]bool{}
	for _, in := range a.appInstances(app) {
		set[in.Instance] = true
	}
	files, _ := filepath.Glob(a.appDir(app, "logs", "*.log"))
	for _, f := range files {
		set[strings.TrimSuffix(filepath.Base(f), ".log")] = true
	}
	out := slices.Collect(maps.Keys(set))
	slices.SortFunc(out, rollout.CompareInstances)
	return out
}

// Logs returns the stored lines q asks for, of one instance or of all the
// app's instances merged by time: read from the log files (the rotated
// ones too), whether the instances run or not, so that what an instance
// wrote before a crash, a restart or a switch is there.
func (a *Agent) Logs(ctx context.Context, app string, q api.LogQuery) ([]api.LogLine, error) {
	return do(a, ctx, opts{app: app, exists: true, check: func() error { return checkLogQuery(q) }}, func(context.Context) ([]api.LogLine, error) {
		out, _, err := a.logs(app, q)
		return out, err
	})
}

func checkLogQuery(q api.LogQuery) error {
	if q.N < 0 {
		return fmt.Errorf("%w: logs: line count %d must not be negative", api.ErrInvalid, q.N)
	}
	if q.Release < 0 {
		return fmt.Errorf("%w: logs: release v%d does not exist", api.ErrInvalid, q.Release)
	}
	if q.Instance != "" {
		return state.ValidateInstance(q.Instance)
	}
	return nil
}

// logs reads the lines of Logs. marks says, of each stream of each
// instance, where what it read ended (up to q.N lines of each were read,
// before the merge kept the app's last q.N): dropStored needs no more.
func (a *Agent) logs(app string, q api.LogQuery) (out []api.LogLine, marks logMarks, err error) {
	insts := a.logInstances(app)
	if q.Instance != "" {
		if !slices.Contains(insts, q.Instance) {
			return nil, nil, fmt.Errorf("%w: logs: app %s has no instance %s (it has %s)", api.ErrNotFound, app, q.Instance, strings.Join(insts, ", "))
		}
		insts = []string{q.Instance}
	}
	sq := supervisor.LogQuery{N: q.N, Since: q.Since}
	if q.Release > 0 {
		sq.Tag = logTag(q.Release)
	}
	marks = logMarks{}
	for _, inst := range insts {
		lines, err := supervisor.ReadLogs(a.appDir(app, "logs", inst+".log"), sq)
		if errors.Is(err, os.ErrNotExist) {
			// No file (none written yet, or it could not be): what
			// memory holds of the running instances.
			lines, err = a.memoryLines(app, inst, sq)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("logs of %s/%s: %w", app, inst, err)
		}
		for _, l := range lines {
			out = append(out, toAPILine(app, inst, l))
			marks.add(inst, l.Stream, l.Time)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	if q.N > 0 && len(out) > q.N {
		out = out[len(out)-q.N:]
	}
	if out == nil {
		out = []api.LogLine{}
	}
	return out, marks, nil
}

// memoryLines returns the lines kept in memory by the instances of a
// slot that match q, oldest release first.
func (a *Agent) memoryLines(app, inst string, q supervisor.LogQuery) ([]supervisor.LogLine, error) {
	var out []supervisor.LogLine
	for _, name := range a.supervisorNames(app, inst) {
		lines, err := a.sup.Tail(name, 0)
		if errors.Is(err, supervisor.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, l := range lines {
			if (q.Since.IsZero() || !l.Time.Before(q.Since)) && (q.Tag == "" || l.Tag == q.Tag) {
				out = append(out, l)
			}
		}
	}
	if q.N > 0 && len(out) > q.N {
		out = out[len(out)-q.N:]
	}
	return out, nil
}

// FollowLogs sends the stored lines q asks for (its last q.N, or
// those since q.Since; none when both are zero), then the app's new
// output lines (of q.Instance and q.Release, or all) as they come,
// including those of instances started meanwhile (a switch, a restart, a
// scale), until ctx ends or send fails. No line written between the two
// is lost or sent twice: the subscription starts before the store is
// read. A line after some the follower lost carries their count in
// Missed.
func (a *Agent) FollowLogs(ctx context.Context, app string, q api.LogQuery, send func(api.LogLine) error) error {
	return do0(a, ctx, opts{app: app, exists: true, check: func() error { return checkLogQuery(q) }}, func(ctx context.Context) error {
		return a.followLogs(ctx, app, q, send)
	})
}

func (a *Agent) followLogs(ctx context.Context, app string, q api.LogQuery, send func(api.LogLine) error) error {
	prefix := app + "/"
	match := func(name string) bool {
		if q.Instance != "" {
			return name == prefix+q.Instance || strings.HasPrefix(name, prefix+q.Instance+"@")
		}
		return strings.HasPrefix(name, prefix)
	}
	lines, cancel := a.sup.FollowLogs(match, 256)
	defer cancel()
	tag := ""
	if q.Release > 0 {
		tag = logTag(q.Release)
	}
	missed := 0 // lost lines not told yet: they were before a line filtered out
	// relay sends a line of the subscription unless filtered out.
	relay := func(l supervisor.LogLine) error {
		missed += l.Missed
		if tag != "" && l.Tag != tag {
			return nil
		}
		l.Missed, missed = missed, 0
		_, inst := splitName(l.Name)
		return send(toAPILine(app, inst, l))
	}
	if q.N > 0 || !q.Since.IsZero() {
		// What the app wrote before the subscription is in the files
		// before they are read.
		a.sup.SettleLogs(match, settleLogsTimeout)
		hist, marks, err := a.logs(app, q)
		if err != nil {
			return err
		}
		api.FollowStarted(ctx)
		for _, l := range hist {
			if err := send(l); err != nil {
				return err
			}
		}
		// What the subscription brought while the store was read: each
		// instance's lines that the store had already are dropped.
		var pending []supervisor.LogLine
		for drained := false; !drained; {
			select {
			case l, ok := <-lines:
				if !ok {
					drained = true
					break
				}
				pending = append(pending, l)
			default:
				drained = true
			}
		}
		for _, l := range dropStored(pending, marks, tag) {
			if err := relay(l); err != nil {
				return err
			}
		}
	} else {
		api.FollowStarted(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return a.followEnd()
		case l, ok := <-lines:
			if !ok {
				return nil
			}
			if err := relay(l); err != nil {
				return err
			}
		}
	}
}

// settleLogsTimeout bounds how long a follow with stored lines waits
// for output on its way to the files (a stalled disk): past it, lines
// written meanwhile may be missing between the stored and the new ones.
const settleLogsTimeout = 2 * time.Second

// logMarks says, of each stream of each instance, the time (to the
// microsecond, as the store keeps it) of the last line read and how many
// lines were read at that time.
type logMarks map[logStream]*logMark

type logStream struct{ inst, stream string }

type logMark struct {
	last time.Time
	n    int
}

// add counts a line read, in the order of its stream.
func (m logMarks) add(inst, stream string, at time.Time) {
	k, t := logStream{inst, stream}, at.Truncate(time.Microsecond)
	switch mk := m[k]; {
	case mk == nil || t.After(mk.last):
		m[k] = &logMark{last: t, n: 1}
	case t.Equal(mk.last):
		mk.n++
	}
}

// dropStored returns pending, the lines a follower received while the
// store was read, without those the store gave (marks: where the read
// ended). A line reaches followers just before the file, and the
// supervisor's SettleLogs makes sure none is in neither. The lines of
// one stream of one instance reach both in the order they were read from
// the pipe, and the lines of one read share a time. So of an instance's
// stream, with T the time of the last line read and c the number of
// lines read at T (the store may hold part of that read), the follower's
// lines before T and its first c lines at T are those the store gave.
// Lines filtered out by tag are not looked at; the Missed counts of
// dropped lines move to the next line kept. It uses up marks.
func dropStored(pending []supervisor.LogLine, marks logMarks, tag string) []supervisor.LogLine {
	out := pending[:0:0]
	missed := 0
	for _, l := range pending {
		if tag == "" || l.Tag == tag {
			_, inst := splitName(l.Name)
			if m := marks[logStream{inst, l.Stream}]; m != nil {
				t := l.Time.Truncate(time.Microsecond)
				if t.Before(m.last) || t.Equal(m.last) && m.n > 0 {
					if t.Equal(m.last) {
						m.n--
					}
					missed += l.Missed
					continue
				}
			}
		}
		l.Missed += missed
		missed = 0
		out = append(out, l)
	}
	return out
}
