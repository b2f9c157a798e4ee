//go:build e2e_load

package load

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// These tests check the measuring instruments of the load test before it
// relies on them.

// TestPercentile ensures nearest-rank percentiles.
func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]time.Duration{50: 50 * time.Millisecond, 99: 99 * time.Millisecond, 100: 100 * time.Millisecond, 1: time.Millisecond} {
		if got := percentile(ds, p); got != want {
			t.Errorf("p%v = %s, want %s", p, got, want)
		}
	}
	if got := percentile(nil, 99); got != 0 {
		t.Errorf("p99 of nothing = %s", got)
	}
	if got := percentile([]time.Duration{7}, 99); got != 7 {
		t.Errorf("p99 of one = %s", got)
	}
}

// TestSummarize ensures failures are counted and excluded from latencies,
// and switch-window figures take only requests starting in a window.
func TestSummarize(t *testing.T) {
	s := []sample{
		{start: 0, dur: time.Millisecond},
		{start: time.Second, dur: 50 * time.Millisecond},
		{start: 1500 * time.Millisecond, err: "connection refused"},
		{start: 3 * time.Second, dur: 2 * time.Millisecond},
	}
	st := summarize(s, []window{{from: 900 * time.Millisecond, to: 2 * time.Second}})
	if st.sent != 4 || st.failed != 1 || st.errors["connection refused"] != 1 {
		t.Errorf("sent %d failed %d errors %v", st.sent, st.failed, st.errors)
	}
	if st.switchSent != 2 || st.switchFailed != 1 || st.switchP99 != 50*time.Millisecond {
		t.Errorf("switch sent %d failed %d p99 %s", st.switchSent, st.switchFailed, st.switchP99)
	}
	if st.p50 != 2*time.Millisecond || st.max != 50*time.Millisecond {
		t.Errorf("p50 %s max %s", st.p50, st.max)
	}
}

// TestRunLoad ensures the client sends paced requests on new connections,
// records good answers as good, and stops at its bounds.
func TestRunLoad(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from test")
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	res := runLoad(loadConfig{url: srv.URL, expect: "hello from test", duration: 300 * time.Millisecond, rate: 200, workers: 2, max: 1000})
	st := summarize(res.samples, nil)
	if st.sent < 10 || st.sent > 70 || st.failed != 0 {
		t.Fatalf("paced at 200/s for 300ms: sent %d, failed %d (%v)", st.sent, st.failed, st.errors)
	}
	if conns.Load() != int64(st.sent) {
		t.Errorf("%d connections for %d requests: not one per request", conns.Load(), st.sent)
	}
	res = runLoad(loadConfig{url: srv.URL, expect: "hello from test", duration: time.Minute, workers: 3, max: 25})
	if len(res.samples) != 25 {
		t.Errorf("unpaced run bounded at 25 sent %d", len(res.samples))
	}
	stop := make(chan struct{})
	close(stop)
	res = runLoad(loadConfig{url: srv.URL, expect: "hello from test", duration: time.Hour, rate: 10, workers: 2, max: 1000, stop: stop})
	if res.length >= time.Hour || len(res.samples) > 2 {
		t.Errorf("stopped run went on: %s, %d requests", res.length, len(res.samples))
	}
	res = runLoad(loadConfig{url: srv.URL, expect: "hello from elsewhere", duration: time.Minute, workers: 1, max: 3})
	if st := summarize(res.samples, nil); st.failed != 3 || st.errors["unexpected body"] != 3 {
		t.Errorf("wrong body: %+v", st)
	}
}

// TestRunLoad_Refused ensures refused connections are failures of their
// own kind.
func TestRunLoad_Refused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String() + "/"
	ln.Close()
	res := runLoad(loadConfig{url: url, expect: "x", duration: time.Minute, workers: 2, max: 6})
	if st := summarize(res.samples, nil); st.sent != 6 || st.errors["connection refused"] != 6 {
		t.Errorf("refused: %+v", st)
	}
}

// TestBundle_Write ensures a repacked tarball keeps the original entries,
// replaces berth.json and adds VERSION.
func TestBundle_Write(t *testing.T) {
	helloTar := artifact(t, "hello.tar.gz")
	b, err := readBundle(helloTar)
	if err != nil {
		t.Fatal(err)
	}
	manifest, _ := b.file("berth.json")
	bind, err := bindManifest(manifest)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "x.tar.gz")
	if err := b.write(out, map[string][]byte{"berth.json": bind, "VERSION": []byte("7\n")}); err != nil {
		t.Fatal(err)
	}
	c, err := readBundle(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.entries) != len(b.entries)+1 {
		t.Errorf("%d entries, want %d", len(c.entries), len(b.entries)+1)
	}
	for _, name := range []string{"hello", "Procfile"} {
		orig, _ := b.file(name)
		got, ok := c.file(name)
		if !ok || string(got) != string(orig) {
			t.Errorf("%s changed by repacking", name)
		}
	}
	if v, _ := c.file("VERSION"); string(v) != "7\n" {
		t.Errorf("VERSION = %q", v)
	}
	got, _ := c.file("berth.json")
	var m struct {
		Processes map[string]map[string]any `json:"processes"`
	}
	if err := json.Unmarshal(got, &m); err != nil {
		t.Fatal(err)
	}
	web := m.Processes["web"]
	if web["socket_activation"] != false || web["healthcheck"] == nil || web["stop_signal"] != "SIGTERM" {
		t.Errorf("bind manifest = %s", got)
	}
	if _, err := bindManifest([]byte(`{"processes":{}}`)); err == nil || !strings.Contains(err.Error(), "no processes") {
		t.Errorf("bindManifest of no processes = %v", err)
	}
}
