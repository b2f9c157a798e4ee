//go:build e2e_fleet

package e2e

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// httpIn returns a client whose connections are made in ns.
func httpIn(ns netns) *http.Client {
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DialContext: ns.dialer(), DisableKeepAlives: true},
	}
}

// get GETs url from inside ns and returns the status and body.
func get(ns netns, url string) (int, string, error) {
	resp, err := httpIn(ns).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// TestTopology checks the suite's own set-up: from each node's
// namespace, etcd in the hub answers, and the nodes reach each other.
func TestTopology(t *testing.T) {
	top := newTopology(t, 3)
	start := time.Now()
	e := startEtcd(t, top.hub, t.TempDir())
	t.Logf("etcd serving after %s", time.Since(start).Round(time.Millisecond))
	for i, ns := range top.nodes {
		code, body, err := get(ns, etcdURL+"/health")
		if err != nil || code != 200 {
			t.Fatalf("node %d: GET %s/health: %d %s %v", i+1, etcdURL, code, body, err)
		}
	}
	e.kill()
	if _, _, err := get(top.nodes[0], etcdURL+"/health"); err == nil {
		t.Fatal("etcd still answers after its kill")
	}
	e.start()
	if _, _, err := get(top.nodes[0], etcdURL+"/health"); err != nil {
		t.Fatalf("etcd does not answer after its restart: %v", err)
	}
}
