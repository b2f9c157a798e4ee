package main

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/berth-dev/berth/agent/api"
)

// TestE2E_Run drives `berth run` and the metrics listener of the real
// binary: output on the right streams, the command's exit code (and 128
// plus a signal) as berth's own, flags after COMMAND left to it, usage
// and unknown-app errors; and `berth agent --metrics-listen` serving a
// page the Prometheus parser reads.
func TestE2E_Run(t *testing.T) {
	e := newE2E(t)
	app := e2eApp + "-run"
	t.Cleanup(func() {
		for pid := range appProcs(app) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	tarball := writeFile(t, e.dir, "run.tar.gz", appTarball(t, map[string]string{"Procfile": "web: " + webCmd + "\n"}))
	metricsAddr := "127.0.0.1:" + strconv.Itoa(freePortRange(t))
	e.startAgent("--metrics-listen", metricsAddr)
	e.ok("deploy", "-a", app, tarball)
	e.ok("config", "set", "-a", app, "FOO=bar")

	out, errOut, code := e.berth("run", "-a", app, "--", "sh", "-c", "echo out $FOO $BERTH_PROCESS; echo err >&2; exit 3")
	if code != 3 || out != "out bar run.1\n" || errOut != "err\n" {
		t.Errorf("run ... exit 3: code %d, stdout %q, stderr %q; want 3, \"out bar run.1\\n\", \"err\\n\"", code, out, errOut)
	}
	out, errOut, code = e.berth("run", "-a", app, "sh", "-c", "kill -TERM $$")
	if code != 128+15 || !strings.Contains(errOut, "run.1 of "+app+" ended by signal SIGTERM") {
		t.Errorf("run ... killed by SIGTERM: code %d, stdout %q, stderr %q; want 143 and a note", code, out, errOut)
	}
	// Without --, flags after COMMAND are the command's.
	if out := e.ok("run", "-a", app, "printf", "%s,", "-x", "--json"); out != "-x,--json," {
		t.Errorf("run printf ... -x --json printed %q", out)
	}
	if _, errOut, code := e.berth("run", "-a", app); code != 2 || !strings.Contains(errOut, "want a COMMAND") {
		t.Errorf("run without a command: code %d, stderr %q; want a usage error", code, errOut)
	}
	if _, errOut, code := e.berth("run", "-a", "nosuch", "--", "true"); code != 1 || !strings.Contains(errOut, `"nosuch"`) {
		t.Errorf("run on an unknown app: code %d, stderr %q; want 1 naming the app", code, errOut)
	}

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	found := false
	for _, m := range fams["berth_app_active_release"].GetMetric() {
		if m.GetLabel()[0].GetValue() == app {
			found = m.GetGauge().GetValue() == 2
		}
	}
	if !found {
		t.Errorf("berth_app_active_release of %s is not 2:\n%s", app, body)
	}
	if strings.Contains(string(body), "FOO") || strings.Contains(string(body), "bar\"") {
		t.Errorf("a config var reached /metrics:\n%s", body)
	}
	e.stopAgent()
}

// TestPrintProcesses_OOMAndOneOff ensures ps shows an OOM kill as the
// last exit of an instance that runs again, and a one-off with its mode
// and no port.
func TestPrintProcesses_OOMAndOneOff(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	g := &globals{env: &cliEnv{now: func() time.Time { return now }}}
	var out bytes.Buffer
	err := printProcesses(g, &out, []api.Process{
		{App: "hello", Instance: "web.1", Type: "web", State: "running", PID: 10, Release: 2, Port: 5000,
			StartedAt: now.Add(-time.Minute), Restarts: 1, LastExit: "killed by the OOM killer at 256 MiB", Mode: "bind", Command: "./web"},
		{App: "hello", Instance: "run.1", Type: "run", State: "running", PID: 11, Release: 2,
			StartedAt: now.Add(-time.Second), Mode: "one-off", Command: "sh -c 'echo hi'"},
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	if !strings.Contains(lines[1], "running (last exit: killed by the OOM killer at 256 MiB)") {
		t.Errorf("web.1 row %q", lines[1])
	}
	if f := strings.Fields(lines[2]); f[0] != "run.1" || f[4] != "-" || !strings.Contains(lines[2], "one-off") {
		t.Errorf("run.1 row %q", lines[2])
	}
}
