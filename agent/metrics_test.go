package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/berth-dev/berth/agent/api"
)

// scrape parses a /metrics body with Prometheus's own text parser.
func scrape(t *testing.T, body []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("the Prometheus parser refuses /metrics: %v\n%s", err, body)
	}
	return fams
}

// metricValue returns the value of the family's sample whose labels
// include want; ok is false when there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	for _, m := range fams[name].GetMetric() {
		l := map[string]string{}
		for _, p := range m.GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && l[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func wantMetric(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string, want float64) {
	t.Helper()
	got, ok := metricValue(fams, name, labels)
	if !ok {
		t.Errorf("%s%v: no such sample", name, labels)
	} else if got != want {
		t.Errorf("%s%v = %g, want %g", name, labels, got, want)
	}
}

// TestMetrics_ScrapeOverSocket scrapes /metrics over the agent's real
// unix socket and over the TCP listener, and reads it with Prometheus's
// parser: the active release after two deploys, both switches in the
// histogram, an automatic rollback counted, a crash seen in restarts and
// last exit; no config value anywhere in it; the TCP listener serves
// nothing but /metrics.
func TestMetrics_ScrapeOverSocket(t *testing.T) {
	cfg := testConfig(dataDir(t))
	cfg.NoSocket = false
	cfg.MetricsListen = "127.0.0.1:0"
	ta := startAgent(t, cfg)
	ctx := context.Background()
	client := api.NewClient(cfg.SocketPath)
	defer client.Close()

	const secret = "s3cr3t-value-never-in-metrics"
	ta.mustDeploy(t, "hello", webBuild(t, "one"))
	if _, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"FOO": secret}}, nil); err != nil {
		t.Fatal(err)
	}
	// A release whose web exits at once is rolled back to v2.
	if _, _, err := ta.deploy(t, "hello", tarball(t, map[string]string{"Procfile": "web: exit 1\n"})); err == nil {
		t.Fatal("deploy of a crashing release succeeded")
	}
	web := ta.procs(t, "hello")["web.1"]
	if web.Release != 2 || web.PID == 0 {
		t.Fatalf("web.1 after the rollback: %+v, want v2 running", web)
	}
	if err := syscall.Kill(web.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "web.1 restarted after its crash", func() bool {
		p := ta.procs(t, "hello")["web.1"]
		return p.Restarts == 1 && p.State == "running" && p.PID != web.PID
	})

	body, err := client.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(body, []byte(secret)) {
		t.Fatalf("a config value is in /metrics:\n%s", body)
	}
	fams := scrape(t, body)
	inst := map[string]string{"app": "hello", "instance": "web.1", "release": "2"}
	wantMetric(t, fams, "berth_app_active_release", map[string]string{"app": "hello"}, 2)
	wantMetric(t, fams, "berth_instance_restarts_total", inst, 1)
	wantMetric(t, fams, "berth_instance_last_exit_code", inst, 128+9)
	wantMetric(t, fams, "berth_instance_state", map[string]string{"app": "hello", "instance": "web.1", "state": "running"}, 1)
	wantMetric(t, fams, "berth_instance_state", map[string]string{"app": "hello", "instance": "web.1", "state": "crashed"}, 0)
	wantMetric(t, fams, "berth_switch_duration_seconds", map[string]string{"app": "hello", "kind": "deploy", "outcome": "ok"}, 1)
	wantMetric(t, fams, "berth_switch_duration_seconds", map[string]string{"app": "hello", "kind": "config", "outcome": "ok"}, 1)
	wantMetric(t, fams, "berth_switch_duration_seconds", map[string]string{"app": "hello", "kind": "deploy", "outcome": "rolled_back"}, 1)
	wantMetric(t, fams, "berth_rollbacks_total", map[string]string{"app": "hello", "trigger": "automatic"}, 1)
	wantMetric(t, fams, "berth_limits_enforced", nil, 0) // no delegated cgroup on a test host
	wantMetric(t, fams, "berth_oneoff_running", map[string]string{"app": "hello"}, 0)
	if up, ok := metricValue(fams, "berth_instance_uptime_seconds", inst); !ok || up < 0 {
		t.Errorf("berth_instance_uptime_seconds = %g, %v", up, ok)
	}
	if size, ok := metricValue(fams, "berth_instance_log_file_bytes", inst); !ok || size <= 0 {
		t.Errorf("berth_instance_log_file_bytes = %g, %v; want the size of web.1.log", size, ok)
	}
	if h := fams["berth_switch_duration_seconds"]; h.GetType() != dto.MetricType_HISTOGRAM {
		t.Errorf("berth_switch_duration_seconds is a %v", h.GetType())
	}
	for _, name := range []string{"berth_log_lines_dropped_total", "berth_supervisor_events_dropped_total", "berth_build_info"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("no %s", name)
		}
	}
	// The agent's own figures: an agent that runs has goroutines, heap,
	// stacks and resident memory, and the anonymous part is within it.
	self := map[string]float64{}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes",
		"go_memstats_sys_bytes", "process_resident_memory_bytes", "berth_agent_resident_anon_bytes"} {
		v, ok := metricValue(fams, name, nil)
		if !ok || v <= 0 {
			t.Errorf("%s = %g, %v; want it above 0", name, v, ok)
		}
		self[name] = v
	}
	if self["berth_agent_resident_anon_bytes"] > self["process_resident_memory_bytes"] {
		t.Errorf("anonymous resident memory %g above the resident total %g", self["berth_agent_resident_anon_bytes"], self["process_resident_memory_bytes"])
	}

	// The TCP listener serves the same metrics, and nothing else.
	addr := ta.MetricsAddr()
	if addr == "" {
		t.Fatal("no TCP metrics listener")
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	tcpBody, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != api.MetricsContentType {
		t.Fatalf("GET /metrics over TCP: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	wantMetric(t, scrape(t, tcpBody), "berth_app_active_release", map[string]string{"app": "hello"}, 2)
	for _, path := range []string{"/v1/apps", "/v1/apps/hello/config"} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || strings.Contains(string(b), secret) {
			t.Errorf("GET %s over the metrics listener: %s %q, want 404", path, resp.Status, b)
		}
	}
}

// TestMetrics_OperatorRollback ensures a rollback asked for by an
// operator is counted as such, and its switch observed with kind
// rollback.
func TestMetrics_OperatorRollback(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ta.mustDeploy(t, "hello", webBuild(t, "one"))
	ta.mustDeploy(t, "hello", webBuild(t, "two"))
	if _, err := ta.Rollback(context.Background(), "hello", 1, nil); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := ta.WriteMetrics(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	fams := scrape(t, buf.Bytes())
	wantMetric(t, fams, "berth_rollbacks_total", map[string]string{"app": "hello", "trigger": "operator"}, 1)
	wantMetric(t, fams, "berth_switch_duration_seconds", map[string]string{"app": "hello", "kind": "rollback", "outcome": "ok"}, 1)
	wantMetric(t, fams, "berth_switch_duration_seconds", map[string]string{"app": "hello", "kind": "deploy", "outcome": "ok"}, 2)
	wantMetric(t, fams, "berth_app_active_release", map[string]string{"app": "hello"}, 3)
	if _, ok := metricValue(fams, "berth_rollbacks_total", map[string]string{"trigger": "automatic"}); ok {
		t.Error("an operator's rollback counted as automatic")
	}
}

// TestMetrics_NotReady ensures a scrape before the agent runs gets the
// unavailable error, not a half-empty page.
func TestMetrics_NotReady(t *testing.T) {
	a, err := New(testConfig(dataDir(t)), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	err = a.WriteMetrics(context.Background(), io.Discard)
	if !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("WriteMetrics before Run: %v, want ErrUnavailable", err)
	}
}

// TestMetrics_ListenAddress ensures a malformed --metrics-listen is
// refused before anything starts, and a port already taken leaves the
// agent and its apps running, with /metrics still on the socket.
func TestMetrics_ListenAddress(t *testing.T) {
	cfg := testConfig(dataDir(t))
	for _, bad := range []string{"9090", "localhost", "127.0.0.1:"} {
		cfg.MetricsListen = bad
		if _, err := New(cfg, testLogger()); err == nil || !strings.Contains(err.Error(), "want HOST:PORT") {
			t.Errorf("MetricsListen %q: %v, want an error", bad, err)
		}
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cfg.MetricsListen = taken.Addr().String()
	ta := startAgent(t, cfg)
	ta.mustDeploy(t, "hello", webBuild(t, "one"))
	if ta.MetricsAddr() != "" {
		t.Errorf("a metrics listener on a taken port: %s", ta.MetricsAddr())
	}
	var buf bytes.Buffer
	if err := ta.WriteMetrics(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	wantMetric(t, scrape(t, buf.Bytes()), "berth_app_active_release", map[string]string{"app": "hello"}, 1)
}
