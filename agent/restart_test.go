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
