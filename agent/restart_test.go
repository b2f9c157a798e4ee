package agent

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
)

// rollingProcfile's web appends "start INSTANCE PID" to a file shared by
// the app's instances when it starts and "stop INSTANCE PID" when it gets
// its stop signal, and keeps its pid in a file of its own only while it
// runs; rollingManifest's exec check passes only while that file exists
// and appends "up INSTANCE PID" each time it does.
const (
	rollingProcfile = `web: echo "start $BERTH_PROCESS $$" >> "$TMPDIR/order"; echo $$ > "$TMPDIR/pid-$BERTH_PROCESS"; ` +
		`trap 'rm -f "$TMPDIR/pid-$BERTH_PROCESS"; echo "stop $BERTH_PROCESS $$" >> "$TMPDIR/order"; exit 0' TERM; while :; do sleep 0.05; done` + "\n"
	rollingManifest = `{"processes":{"web":{"healthcheck":{"exec":"test -s \"$TMPDIR/pid-$BERTH_PROCESS\" && echo \"up $BERTH_PROCESS $(cat \"$TMPDIR/pid-$BERTH_PROCESS\")\" >> \"$TMPDIR/order\"","interval":"50ms","timeout":"2s","retries":3}}}}`
)

// TestAgent_RestartIsRolling ensures `restart web` of three instances
// restarts them one at a time, in order, each new process passing its
// health check before the next old one gets its stop signal, and returns
// only once the last new one is up.
func TestAgent_RestartIsRolling(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	ta.mustDeploy(t, "hello", tarball(t, map[string]string{"Procfile": rollingProcfile, "berth.json": rollingManifest}))
	if _, err := ta.Scale(ctx, "hello", map[string]int{"web": 3}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "three healthy instances", func() bool {
		ps := ta.procs(t, "hello")
		n := 0
		for _, p := range ps {
			if p.Health == "healthy" {
				n++
			}
		}
		return n == 3
	})
	before := ta.procs(t, "hello")
	if err := ta.Restart(ctx, "hello", "web"); err != nil {
		t.Fatal(err)
	}
	after := ta.procs(t, "hello")
	for _, inst := range []string{"web.1", "web.2", "web.3"} {
		if after[inst].PID == before[inst].PID || after[inst].Health != "healthy" {
			t.Fatalf("%s after the restart = %+v (before: pid %d), want a new healthy process", inst, after[inst], before[inst].PID)
		}
	}

	b, err := os.ReadFile(ta.appDir("hello", "tmp", "order"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	index := func(line string, from int) int {
		if i := slices.Index(lines[from:], line); i >= 0 {
			return from + i
		}
		return -1
	}
	pid := func(p api.Process) string { return strconv.Itoa(p.PID) }
	prevUp := 0
	for k, inst := range []string{"web.1", "web.2", "web.3"} {
		stop := index("stop "+inst+" "+pid(before[inst]), 0)
		start := index("start "+inst+" "+pid(after[inst]), 0)
		up := index("up "+inst+" "+pid(after[inst]), max(start, 0))
		if stop < 0 || start < 0 || up < 0 {
			t.Fatalf("%s: stop of the old process at line %d, start of the new at %d, its check passed at %d:\n%s", inst, stop, start, up, b)
		}
		if stop < prevUp {
			t.Errorf("%s got its stop signal (line %d) before the previous instance was up (line %d):\n%s", inst, stop, prevUp, b)
		}
		if k < 2 {
			next := "web." + strconv.Itoa(k+2)
			if nextStop := index("stop "+next+" "+pid(before[next]), 0); nextStop < up {
				t.Errorf("%s was stopped (line %d) before the new %s was up (line %d):\n%s", next, nextStop, inst, up, b)
			}
		}
		prevUp = up
	}
}

// TestAgent_RestartTypesAtOnce ensures `restart` of an app restarts its
// types at once: with two types of two instances each, the first
// instance of both types is stopped before either second one, and each
// type stays rolling (its second instance stops only once its first new
// one is up).
func TestAgent_RestartTypesAtOnce(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	procfile := rollingProcfile + strings.Replace(rollingProcfile, "web:", "api:", 1)
	manifest := strings.Replace(rollingManifest, `{"processes":{"web":`, `{"processes":{"api":`+rollingManifest[len(`{"processes":{"web":`):len(rollingManifest)-2]+`,"web":`, 1)
	ta.mustDeploy(t, "hello", tarball(t, map[string]string{"Procfile": procfile, "berth.json": manifest}))
	if _, err := ta.Scale(ctx, "hello", map[string]int{"web": 2, "api": 2}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "four healthy instances", func() bool {
		n := 0
		for _, p := range ta.procs(t, "hello") {
			if p.Health == "healthy" {
				n++
			}
		}
		return n == 4
	})
	before := ta.procs(t, "hello")
	if err := ta.Restart(ctx, "hello", ""); err != nil {
		t.Fatal(err)
	}
	after := ta.procs(t, "hello")
	b, err := os.ReadFile(ta.appDir("hello", "tmp", "order"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	at := func(line string) int {
		i := slices.Index(lines, line)
		if i < 0 {
			t.Fatalf("no line %q in:\n%s", line, b)
		}
		return i
	}
	pid := func(p api.Process) string { return strconv.Itoa(p.PID) }
	stop := func(inst string) int { return at("stop " + inst + " " + pid(before[inst])) }
	for _, first := range []string{"web.1", "api.1"} {
		for _, second := range []string{"web.2", "api.2"} {
			if stop(first) > stop(second) {
				t.Errorf("%s stopped after %s: types restart at once, first instances first:\n%s", first, second, b)
			}
		}
	}
	for _, typ := range []string{"web", "api"} {
		up := slices.Index(lines, "up "+typ+".1 "+pid(after[typ+".1"]))
		if up < 0 || up > stop(typ+".2") {
			t.Errorf("%s.2 stopped (line %d) before the new %s.1 was up (line %d):\n%s", typ, stop(typ+".2"), typ, up, b)
		}
	}
}

// TestWatch_DroppedEventsSeen ensures a switch wait does not stall on a
// state the events left stale when the supervisor dropped events for a
// full subscription and no later event carried the count: the watch
// reads the states again, so waitUp returns as soon as the restarted
// instances are up, not at the start timeout (an hour here).
func TestWatch_DroppedEventsSeen(t *testing.T) {
	cfg := testConfig(dataDir(t))
	ta := startAgent(t, cfg)
	ctx := context.Background()
	var procfile strings.Builder
	for i := range 8 {
		procfile.WriteString("w" + strconv.Itoa(i) + ": exec sleep 1000\n")
	}
	ta.mustDeploy(t, "many", tarball(t, map[string]string{"Procfile": procfile.String()}))
	insts := ta.appInstances("many")
	events, unsubscribe := ta.sup.Subscribe(1)
	defer unsubscribe()
	w := ta.newWatch(events)
	var list []*instance
	for name, in := range insts {
		if err := ta.sup.Restart(name); err != nil {
			t.Fatal(err)
		}
		list = append(list, in)
	}
	cfg.StartTimeout = time.Hour
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := ta.waitUp(wctx, cfg, list, w, true, newProgress(nil)); err != nil {
		t.Fatalf("waitUp after dropped events: %v", err)
	}
}
