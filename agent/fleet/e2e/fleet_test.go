//go:build e2e_fleet

package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/e2e/e2eutil"
)

// fleetRelease returns the node's local release that carries fleet
// version v (description "Fleet vN ..."), if any.
func fleetRelease(rs []api.Release, v int) (api.Release, bool) {
	prefix := fmt.Sprintf("Fleet v%d", v)
	for _, r := range rs {
		if r.Description == prefix || strings.HasPrefix(r.Description, prefix+" ") || strings.HasPrefix(r.Description, prefix+":") {
			return r, true
		}
	}
	return api.Release{}, false
}

// activeFleetVersion is the fleet version of the node's active release
// (0: none).
func activeFleetVersion(rs []api.Release) int {
	for _, r := range rs {
		if r.Status != "active" {
			continue
		}
		var v int
		if _, err := fmt.Sscanf(r.Description, "Fleet v%d", &v); err == nil {
			return v
		}
	}
	return 0
}

// TestFleet is make e2e-fleet: three agents in namespaces of their own
// follow one etcd. In order: a deploy in waves of one; a release that
// fails its health check on the first wave, rolled back fleet-wide
// before it reaches the second; a 30 s etcd outage during which every
// app answers every request; a config change after etcd is back.
func TestFleet(t *testing.T) {
	bin, hello := artifact(t, "berth"), artifact(t, "hello.tar.gz")
	top := newTopology(t, 3)
	etcd := startEtcd(t, top.hub, t.TempDir())
	var agents []*agent
	for i, ns := range top.nodes {
		agents = append(agents, startAgent(t, bin, ns, fmt.Sprintf("n%d", i+1), top.ips[i]))
	}
	e2eutil.WaitFor(t, "three nodes registered", 30*time.Second, func() (bool, string) {
		out, err := fleetCLI(top, bin, 30*time.Second, "status", "-a", "hello")
		return err == nil && strings.Count(out, "\nn") == 3, out + fmt.Sprint(err)
	})
	var urls []string
	for _, a := range agents {
		urls = append(urls, a.appURL())
	}

	t.Run("1_deploy_in_waves_of_one", func(t *testing.T) {
		start := time.Now()
		out, err := fleetCLI(top, bin, 5*time.Minute, "deploy", "-a", "hello", "--wave-size", "1", "--wait", hello)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("fleet deploy --wave-size 1 --wait took %s:\n%s", time.Since(start).Round(time.Millisecond), out)
		st := fleetStatus(t, top, bin, "hello")
		if st.Rollout == nil || st.Rollout.State != "succeeded" || len(st.Rollout.Waves) != 3 {
			t.Fatalf("rollout after the deploy: %+v", st.Rollout)
		}
		// Waves of one: each node switched only after the one before it
		// was up, so their local releases were made in wave order.
		var made []time.Time
		for _, a := range agents {
			r, ok := fleetRelease(a.releases("hello"), 1)
			if !ok || r.Status != "active" {
				t.Fatalf("%s has no active local release of fleet v1: %+v", a.name, a.releases("hello"))
			}
			made = append(made, r.CreatedAt)
			if code, body, err := get(top.hub, a.appURL()); err != nil || code != 200 {
				t.Fatalf("%s: GET %s: %d %s %v", a.name, a.appURL(), code, body, err)
			}
		}
		order := slices.Concat(st.Rollout.Waves...)
		for i := 1; i < len(order); i++ {
			prev, cur := made[nodeIndex(order[i-1])], made[nodeIndex(order[i])]
			if !cur.After(prev) {
				t.Errorf("wave %d (%s) switched at %s, not after wave %d (%s) at %s",
					i+1, order[i], cur.Format(time.StampMilli), i, order[i-1], prev.Format(time.StampMilli))
			}
		}
		t.Logf("waves %v switched at %v", st.Rollout.Waves, made)
	})

	t.Run("2_bad_release_rolled_back", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.tar.gz")
		// The same app, with a health check that always fails.
		retarball(t, hello, bad, map[string]string{"berth.json": `{"processes":{"web":{"healthcheck":{"http":"/no-such-page","interval":"500ms","timeout":"1s","start_period":"2s","retries":2},"socket_activation":true,"stop_signal":"SIGTERM","stop_timeout":"10s"}}}`})
		l := startLoad(top.hub, urls)
		_, err := fleetCLI(top, bin, 5*time.Minute, "deploy", "-a", "hello", "--wave-size", "1", "--wait", bad)
		res := l.stop()
		if err == nil {
			t.Fatal("fleet deploy --wait of a release that fails its health check exited 0")
		}
		st := fleetStatus(t, top, bin, "hello")
		if st.Rollout == nil || st.Rollout.State != "failed" || st.Rollout.Reason == "" {
			t.Fatalf("rollout of the bad release: %+v", st.Rollout)
		}
		t.Logf("rollout failed: %s", st.Rollout.Reason)
		if st.Release == nil || st.Release.Version != 1 {
			t.Errorf("fleet release after the failed rollout: %+v, want v1 back", st.Release)
		}
		bad2 := st.Rollout.To.Version
		first := st.Rollout.Waves[0]
		for _, a := range agents {
			rs := a.releases("hello")
			_, tried := fleetRelease(rs, bad2)
			switch {
			case slices.Contains(first, a.name) && !tried:
				t.Errorf("%s is in the first wave but never tried fleet v%d", a.name, bad2)
			case !slices.Contains(first, a.name) && tried:
				t.Errorf("%s is not in the first wave but got fleet v%d: %+v", a.name, bad2, rs)
			}
			if v := activeFleetVersion(rs); v != 1 {
				t.Errorf("%s runs fleet v%d after the rollback, want v1", a.name, v)
			}
		}
		for url, r := range res {
			t.Logf("during the bad rollout, %s: %s", url, r)
			if r.failed > 0 || r.requests == 0 {
				t.Errorf("%s: %s; want every request answered", url, r)
			}
		}
	})

	t.Run("3_etcd_outage", func(t *testing.T) {
		// n2's app is SIGKILLed during the outage, to see the agent
		// restart it with no etcd: a killed process cannot answer the
		// request it holds, so n2's load pauses around the kill; requests
		// sent while it restarts wait in the agent's socket and count.
		others := startLoad(top.hub, []string{urls[0], urls[2]})
		n2 := startLoad(top.hub, urls[1:2])
		time.Sleep(time.Second)
		etcd.kill()
		down := time.Now()
		t.Log("etcd killed")
		time.Sleep(10 * time.Second)
		before := n2.stop()
		pids := agents[1].webPIDs(t)
		agents[1].killApp(t)
		n2 = startLoad(top.hub, urls[1:2])
		e2eutil.WaitFor(t, "n2 restarts its crashed app with etcd down", 30*time.Second, func() (bool, string) {
			now := agents[1].webPIDs(t)
			return len(now) == 1 && now[0] != pids[0], fmt.Sprint(now)
		})
		for _, a := range agents {
			if _, err := a.cli("ps", "-a", "hello"); err != nil {
				t.Errorf("%s does not answer its CLI with etcd down: %v", a.name, err)
			}
		}
		time.Sleep(time.Until(down.Add(30 * time.Second)))
		etcd.start()
		t.Logf("etcd back after %s", time.Since(down).Round(time.Millisecond))
		res := others.stop()
		after := n2.stop()
		for url, r := range before {
			a := after[url]
			res[url] = loadResult{requests: r.requests + a.requests, failed: r.failed + a.failed,
				firstErr: r.firstErr + a.firstErr, longest: max(r.longest, a.longest)}
		}
		for url, r := range res {
			t.Logf("during the outage, %s: %s", url, r)
			if r.failed > 0 || r.requests == 0 {
				t.Errorf("%s: %s; want every request answered", url, r)
			}
		}
	})

	t.Run("4_converge_after_outage", func(t *testing.T) {
		l := startLoad(top.hub, urls)
		start := time.Now()
		out, err := fleetCLI(top, bin, 5*time.Minute, "config", "set", "-a", "hello", "--wait", "GREETING=after-the-outage")
		res := l.stop()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("fleet config set --wait took %s:\n%s", time.Since(start).Round(time.Millisecond), out)
		st := fleetStatus(t, top, bin, "hello")
		for _, a := range agents {
			if v := activeFleetVersion(a.releases("hello")); v != st.Release.Version {
				t.Errorf("%s runs fleet v%d, want v%d", a.name, v, st.Release.Version)
			}
		}
		for url, r := range res {
			t.Logf("during the config change, %s: %s", url, r)
			if r.failed > 0 {
				t.Errorf("%s: %s; want every request answered", url, r)
			}
		}
	})
}

// nodeIndex is n's index in the agents slice ("n2" -> 1).
func nodeIndex(n string) int {
	var i int
	fmt.Sscanf(n, "n%d", &i)
	return i - 1
}

// webPIDs returns the pids of the node's running hello web processes,
// as its ps gives them (the agents share the host's pid namespace).
func (a *agent) webPIDs(t *testing.T) []int {
	t.Helper()
	out, err := a.cli("ps", "-a", "hello", "--json")
	if err != nil {
		t.Fatalf("%s: %v", a.name, err)
	}
	var ps []api.Process
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		t.Fatalf("%s: decode ps: %v: %s", a.name, err, out)
	}
	var pids []int
	for _, p := range ps {
		if p.Type == "web" && p.State == "running" && p.PID > 0 {
			pids = append(pids, p.PID)
		}
	}
	return pids
}

// killApp SIGKILLs the node's hello web process, by its pid.
func (a *agent) killApp(t *testing.T) {
	t.Helper()
	pids := a.webPIDs(t)
	if len(pids) != 1 {
		t.Fatalf("%s hello web processes: %v", a.name, pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}
