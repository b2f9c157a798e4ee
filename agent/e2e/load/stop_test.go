//go:build e2e_load

package load

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestLoad_FiftySwitchesStopBySignal runs 50 config changes in a row on
// examples/hello, with connection steering (where the agent has it) and
// with the shared socket of --no-steer, and ensures every old instance
// ended by its own stop signal: the agent logs each stop, and none
// needed SIGKILL after the stop timeout (issue 13 saw about one switch
// in seven stall in accept4 until then).
func TestLoad_FiftySwitchesStopBySignal(t *testing.T) {
	const switches = 50
	berth, helloTar := binaries(t)
	for _, mode := range []struct {
		name  string
		flags []string
	}{
		{"default", nil},
		{"no-steer", []string{"--no-steer"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			h := startAgent(t, berth, append([]string{"--probation", "100ms"}, mode.flags...)...)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			if _, err := h.cli(ctx, "deploy", "-a", "hello", helloTar); err != nil {
				t.Fatalf("deploy: %v\nagent log:\n%s", err, h.logTail(30))
			}
			web, err := h.web("hello")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("web.1: mode %s, steering %q", web.Mode, web.Steering)
			for i := range switches {
				if _, err := h.cli(ctx, "config", "set", "-a", "hello", fmt.Sprintf("GREETING=s%d", i)); err != nil {
					t.Fatalf("switch %d: %v\nagent log:\n%s", i+1, err, h.logTail(30))
				}
			}
			log := h.logText()
			if killed := grepLines(log, "needed SIGKILL"); killed != "" {
				t.Errorf("old instances needed SIGKILL:\n%s", killed)
			}
			stopped := strings.Split(grepLines(log, "stopped old instance"), "\n")
			if len(stopped) != switches {
				t.Fatalf("%d old instances stopped in %d switches, want %d:\n%s", len(stopped), switches, switches, strings.Join(stopped, "\n"))
			}
			for _, l := range stopped {
				// hello exits 0 once its requests in flight are done.
				if !strings.Contains(l, `exit="exit 0"`) {
					t.Errorf("an old instance did not end by its own stop signal: %s", l)
				}
			}
			t.Logf("%d switches: every old instance exited 0 on its stop signal", switches)
		})
	}
}
