package fleet_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/fleet"
)

// TestFleet_DeployConvergesOnEveryNode ensures a fleet deploy, uploaded
// to one node only, reaches every node in waves (the others fetch the
// build over the TLS build endpoint and verify it), each running it as
// a local release that records the fleet version, and that an agent
// restarted on a converged node switches nothing (idempotent).
func TestFleet_DeployConvergesOnEveryNode(t *testing.T) {
	f := newTestFleet(t, 3)
	for _, n := range []string{"n1", "n2", "n3"} {
		f.startNode(n, nil, nil)
	}
	waitFor(t, 30e9, "3 nodes registered", func() bool {
		st, err := f.client.Status(context.Background(), "web")
		return err == nil && len(st.Nodes) == 3
	})
	ro := f.deploy("web", "n1", appBuild(t, "true", "v1"), fleet.RolloutOptions{WaveSize: 2})
	if len(ro.Waves) != 2 || ro.To.Version != 1 {
		t.Fatalf("rollout: want v1 in 2 waves, got %+v", ro)
	}
	if got := f.waitRollout("web", 1); got.State != fleet.RolloutSucceeded {
		t.Fatalf("rollout: %s (%s)", got.State, got.Reason)
	}
	f.waitNodesUp("web", 1, "n1", "n2", "n3")
	for _, n := range f.nodes {
		rels := n.releases(t, "web")
		if len(rels) != 1 || !strings.HasPrefix(rels[0].Description, "Fleet v1:") || rels[0].Status != "active" || rels[0].Build != ro.To.Build {
			t.Fatalf("node %s: want one active local release of fleet v1, got %+v", n.name, rels)
		}
	}

	// A restarted agent finds itself converged: no new local release.
	f.restartNode("n2")
	f.waitNodesUp("web", 1, "n2")
	if rels := f.nodes["n2"].releases(t, "web"); len(rels) != 1 {
		t.Fatalf("restarted node n2: want still 1 local release, got %+v", rels)
	}
}

// TestFleet_FailedWaveRollsBackFleetWide ensures a release that fails
// its health check in the first wave is rolled back on that node, the
// rollout fails with the node's reason, the app's release stays the
// previous one, and the nodes of the later waves never see the release.
func TestFleet_FailedWaveRollsBackFleetWide(t *testing.T) {
	f := newTestFleet(t, 3)
	for _, n := range []string{"n1", "n2", "n3"} {
		f.startNode(n, nil, nil)
	}
	waitFor(t, 30e9, "3 nodes registered", func() bool { return len(f.status("web").Nodes) == 3 })
	f.deploy("web", "n1", appBuild(t, "true", "good"), fleet.RolloutOptions{})
	if ro := f.waitRollout("web", 1); ro.State != fleet.RolloutSucceeded {
		t.Fatalf("v1: %s (%s)", ro.State, ro.Reason)
	}
	f.waitNodesUp("web", 1, "n1", "n2", "n3")

	ro := f.deploy("web", "n1", appBuild(t, "exit 1", "bad"), fleet.RolloutOptions{WaveSize: 1})
	if got := ro.Waves; len(got) != 3 || got[0][0] != "n1" {
		t.Fatalf("waves: %v", got)
	}
	ro = f.waitRollout("web", 2)
	if ro.State != fleet.RolloutFailed || !strings.Contains(ro.Reason, "node n1 failed v2") || ro.Wave != 0 {
		t.Fatalf("rollout of the bad release: want failed in wave 1 because of n1, got %s in wave %d (%s)", ro.State, ro.Wave+1, ro.Reason)
	}
	st := f.status("web")
	if st.Release == nil || st.Release.Version != 1 {
		t.Fatalf("the app's release after a failed rollout: want v1, got %+v", st.Release)
	}
	f.waitNodesUp("web", 1, "n1", "n2", "n3")
	if s := f.status("web").Statuses["n1"]; s.Failed != 2 || s.Error == "" {
		t.Errorf("n1's status should say it failed v2 and why: %+v", s)
	}
	if got := f.nodes["n1"].fleetVersions(t, "web"); len(got) != 2 || got[0] != "Fleet v2/failed" || got[1] != "Fleet v1/active" {
		t.Errorf("n1's local releases: want v2 failed and v1 active again, got %v", got)
	}
	for _, n := range []string{"n2", "n3"} {
		if got := f.nodes[n].fleetVersions(t, "web"); len(got) != 1 || got[0] != "Fleet v1/active" {
			t.Errorf("%s never had v2: want only v1 active, got %v", n, got)
		}
	}

	// A restarted n1 knows from its own store that it failed v2.
	f.restartNode("n1")
	waitFor(t, 30e9, "restarted n1 to report v1 up and v2 failed", func() bool {
		s := f.status("web").Statuses["n1"]
		return s.Up(1) && s.Failed == 2 && s.Error != ""
	})
	if got := f.nodes["n1"].fleetVersions(t, "web"); len(got) != 2 {
		t.Errorf("restarted n1 made a release: %v", got)
	}
}

// TestFleet_RolloutSurvivesEtcdMemberKill ensures that killing the etcd
// leader while a rollout is in its first wave does not stop it: the
// agents reach the other members and the rollout ends on every node.
func TestFleet_RolloutSurvivesEtcdMemberKill(t *testing.T) {
	f := newTestFleet(t, 3)
	for _, n := range []string{"n1", "n2", "n3"} {
		f.startNode(n, nil, nil)
	}
	waitFor(t, 30e9, "3 nodes registered", func() bool { return len(f.status("web").Nodes) == 3 })
	gate := filepath.Join(dataDir(t), "gate")
	f.deploy("web", "n1", gatedBuild(t, gate, "v1"), fleet.RolloutOptions{WaveSize: 1})
	waitFor(t, 30e9, "n1 to be switching", func() bool { return f.status("web").Statuses["n1"].Switching })

	leader := f.etcd.leader()
	f.etcd.kill(leader)
	t.Logf("killed etcd member %d, the leader, mid-rollout", leader)
	if st := f.status("web"); st.Rollout == nil || st.Rollout.State != fleet.RolloutRunning || st.Rollout.Wave != 0 {
		t.Fatalf("the rollout should still be in its first wave: %+v", st.Rollout)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if ro := f.waitRollout("web", 1); ro.State != fleet.RolloutSucceeded {
		t.Fatalf("rollout: %s (%s)", ro.State, ro.Reason)
	}
	f.waitNodesUp("web", 1, "n1", "n2", "n3")
}

// TestFleet_SecondRolloutRefused ensures a rollout of an app that has
// one running is refused, and changes nothing.
func TestFleet_SecondRolloutRefused(t *testing.T) {
	f := newTestFleet(t, 1)
	f.startNode("n1", nil, nil)
	waitFor(t, 30e9, "node registered", func() bool { return len(f.status("web").Nodes) == 1 })
	gate := filepath.Join(dataDir(t), "gate")
	first := f.deploy("web", "n1", gatedBuild(t, gate, "v1"), fleet.RolloutOptions{})
	digest := f.upload("n1", appBuild(t, "true", "other"))
	_, err := f.client.Deploy(context.Background(), "web", digest, []string{"n1"}, "", fleet.RolloutOptions{})
	if !errors.Is(err, fleet.ErrRolloutRunning) {
		t.Fatalf("second rollout: want ErrRolloutRunning, got %v", err)
	}
	if _, err := f.client.SetConfig(context.Background(), "web", map[string]string{"A": "b"}, nil, fleet.RolloutOptions{}); err == nil {
		t.Fatal("config change during a rollout: want an error")
	}
	if st := f.status("web"); st.Rollout == nil || st.Rollout.To.Build != first.To.Build || st.Rollout.State != fleet.RolloutRunning {
		t.Fatalf("the running rollout changed: %+v", st.Rollout)
	}
	os.WriteFile(gate, nil, 0o644)
	if ro := f.waitRollout("web", 1); ro.State != fleet.RolloutSucceeded {
		t.Fatalf("rollout: %s (%s)", ro.State, ro.Reason)
	}
}

// TestFleet_CutOffAgentKeepsServing ensures an agent that loses etcd
// keeps its app running and restarts a crashed process, drops out of
// the fleet's nodes (its lease ends) so a rollout goes on without it,
// and converges onto the newer release once etcd is back.
func TestFleet_CutOffAgentKeepsServing(t *testing.T) {
	f := newTestFleet(t, 3)
	link := startProxy(t, f.etcd.clients[0])
	f.startNode("n1", nil, nil)
	f.startNode("n2", nil, nil)
	n3 := f.startNode("n3", []string{link.url()}, nil)
	waitFor(t, 30e9, "3 nodes registered", func() bool { return len(f.status("web").Nodes) == 3 })
	f.deploy("web", "n1", appBuild(t, "true", "v1"), fleet.RolloutOptions{})
	f.waitRollout("web", 1)
	f.waitNodesUp("web", 1, "n1", "n2", "n3")

	link.setCut(true)
	waitFor(t, 30e9, "n3's lease to end", func() bool { _, ok := f.status("web").Nodes["n3"]; return !ok })
	pid := n3.webPID(t, "web")
	if pid == 0 {
		t.Fatal("n3 stopped its app when it lost etcd")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30e9, "n3 to restart its crashed web.1 without etcd", func() bool {
		p := n3.webPID(t, "web")
		return p != 0 && p != pid
	})

	ro := f.deploy("web", "n1", appBuild(t, "true", "v2"), fleet.RolloutOptions{})
	if len(ro.Waves) != 1 || slices.Contains(ro.Waves[0], "n3") {
		t.Fatalf("a node without a lease is not in a rollout: %v", ro.Waves)
	}
	if ro := f.waitRollout("web", 2); ro.State != fleet.RolloutSucceeded {
		t.Fatalf("rollout without n3: %s (%s)", ro.State, ro.Reason)
	}
	if got := n3.fleetVersions(t, "web"); len(got) != 1 || got[0] != "Fleet v1/active" || n3.webPID(t, "web") == 0 {
		t.Fatalf("cut-off n3 should run v1 on: %v", got)
	}

	// What n3 missed is compacted away: its watch cannot resume from
	// where it was, so it lists again.
	f.compact()
	link.setCut(false)
	f.waitNodesUp("web", 2, "n3")
	if b, _ := os.ReadFile(n3.log); !bytes.Contains(b, []byte("compacted")) {
		t.Error("n3 should have listed again after its watch met the compaction")
	}
}

// TestFleet_NewNodeRunsCurrentRelease ensures a node that joins runs
// the app's current release when the placement includes it (it fetches
// the build from a node that has it), and one the placement leaves out
// runs nothing.
func TestFleet_NewNodeRunsCurrentRelease(t *testing.T) {
	f := newTestFleet(t, 3)
	web := map[string]string{"role": "web"}
	f.startNode("n1", nil, web)
	f.startNode("n2", nil, web)
	waitFor(t, 30e9, "2 nodes registered", func() bool { return len(f.status("web").Nodes) == 2 })
	if err := f.client.SetPlacement(context.Background(), "web", fleet.Placement{Labels: web}); err != nil {
		t.Fatal(err)
	}
	f.deploy("web", "n1", appBuild(t, "true", "v1"), fleet.RolloutOptions{})
	f.waitRollout("web", 1)
	if _, err := f.client.SetConfig(context.Background(), "web", map[string]string{"GREETING": "hi"}, nil, fleet.RolloutOptions{}); err != nil {
		t.Fatal(err)
	}
	if ro := f.waitRollout("web", 2); ro.State != fleet.RolloutSucceeded {
		t.Fatalf("config rollout: %s (%s)", ro.State, ro.Reason)
	}

	n3 := f.startNode("n3", nil, web)
	n4 := f.startNode("n4", nil, map[string]string{"role": "db"})
	f.waitNodesUp("web", 2, "n1", "n2", "n3")
	rels := n3.releases(t, "web")
	if len(rels) != 1 || !strings.HasPrefix(rels[0].Description, "Fleet v2:") {
		t.Fatalf("n3: want fleet v2 as its only release, got %+v", rels)
	}
	cfg, err := n3.api.Config(context.Background(), "web")
	if err != nil || cfg["GREETING"] != "hi" {
		t.Fatalf("n3's config: %v, %v", cfg, err)
	}
	if _, ok := f.status("web").Statuses["n4"]; ok || len(n4.releases(t, "web")) != 0 {
		t.Fatal("n4 is not placed and must not run the app")
	}
}

// TestFleet_PlacementStopsUnplacedNodes ensures that a placement that
// leaves nodes out stops the fleet app on them at once (no process runs,
// their status records go, their local releases stay, also across an
// agent restart) without touching a local-only app beside it, and that
// placing them again starts the app on the release they kept, without a
// new local release.
func TestFleet_PlacementStopsUnplacedNodes(t *testing.T) {
	ctx := context.Background()
	f := newTestFleet(t, 1)
	a := map[string]string{"zone": "a"}
	b := map[string]string{"zone": "b"}
	f.startNode("n1", nil, a)
	f.startNode("n2", nil, b)
	f.startNode("n3", nil, b)
	waitFor(t, 30e9, "3 nodes registered", func() bool { return len(f.status("web").Nodes) == 3 })
	f.deploy("web", "n1", appBuild(t, "true", "v1"), fleet.RolloutOptions{})
	if ro := f.waitRollout("web", 1); ro.State != fleet.RolloutSucceeded {
		t.Fatalf("rollout: %s (%s)", ro.State, ro.Reason)
	}
	f.waitNodesUp("web", 1, "n1", "n2", "n3")
	// A local-only app on n2: the fleet does not know it.
	n2 := f.nodes["n2"]
	if _, err := n2.api.Deploy(ctx, api.DeployRequest{App: "local", Body: bytes.NewReader(appBuild(t, "true", "local"))}, nil); err != nil {
		t.Fatalf("local deploy on n2: %v", err)
	}

	if err := f.client.SetPlacement(ctx, "web", fleet.Placement{Labels: a}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"n2", "n3"} {
		n := f.nodes[name]
		waitFor(t, 30e9, name+" to stop web and drop its status", func() bool {
			_, reported := f.status("web").Statuses[name]
			return !reported && n.running(t, "web") == 0
		})
		if rels := n.releases(t, "web"); len(rels) != 1 || rels[0].Status != "active" {
			t.Fatalf("%s: want its local release of web kept, got %+v", name, rels)
		}
	}
	if !f.status("web").Statuses["n1"].Up(1) || f.nodes["n1"].webPID(t, "web") == 0 {
		t.Fatal("n1 is placed and must still run web")
	}
	if n2.webPID(t, "local") == 0 {
		t.Fatal("n2's local-only app was touched")
	}

	// Stopped is recorded: a restarted agent starts nothing of web.
	n2 = f.restartNode("n2")
	waitFor(t, 30e9, "n2's local app to run again", func() bool { return n2.webPID(t, "local") != 0 })
	if n := n2.running(t, "web"); n != 0 {
		t.Fatalf("restarted n2 runs %d instances of web; want none", n)
	}

	if err := f.client.SetPlacement(ctx, "web", fleet.Placement{}); err != nil {
		t.Fatal(err)
	}
	f.waitNodesUp("web", 1, "n1", "n2", "n3")
	for _, name := range []string{"n2", "n3"} {
		n := f.nodes[name]
		if n.webPID(t, "web") == 0 {
			t.Fatalf("%s: web does not run again", name)
		}
		if rels := n.releases(t, "web"); len(rels) != 1 {
			t.Fatalf("%s: want no new local release, got %+v", name, rels)
		}
	}
}

// TestFleet_BadInputChangesNothing ensures bad input is refused with a
// clear error and leaves etcd and the nodes as they were.
func TestFleet_BadInputChangesNothing(t *testing.T) {
	f := newTestFleet(t, 1)
	f.startNode("n1", nil, nil)
	waitFor(t, 30e9, "node registered", func() bool { return len(f.status("web").Nodes) == 1 })
	ctx := context.Background()
	addr := f.status("web").Nodes["n1"].Address
	peerTLS, _ := fleet.LoadTLS(f.cert, f.key, f.ca)
	body := appBuild(t, "true", "v1")
	wrong := strings.Repeat("0", 64)
	if err := fleet.Upload(ctx, addr, peerTLS, f.token, bytes.NewReader(body), wrong); err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Errorf("upload with a wrong digest: want a SHA-256 mismatch, got %v", err)
	}
	if err := fleet.Upload(ctx, addr, peerTLS, "not-the-token", bytes.NewReader(body), wrong); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("upload without the token: want 401, got %v", err)
	}
	if _, err := f.client.Deploy(ctx, "web", "not-a-digest", nil, "", fleet.RolloutOptions{}); !errors.Is(err, fleet.ErrInvalid) {
		t.Errorf("deploy of a bad digest: want ErrInvalid, got %v", err)
	}
	if _, err := f.client.Deploy(ctx, "Bad_App", wrong, nil, "", fleet.RolloutOptions{}); !errors.Is(err, fleet.ErrInvalid) {
		t.Errorf("deploy of a bad app name: want ErrInvalid, got %v", err)
	}
	if _, err := f.client.Deploy(ctx, "web", wrong, nil, "", fleet.RolloutOptions{WaveSize: -1}); !errors.Is(err, fleet.ErrInvalid) {
		t.Errorf("deploy with a negative wave size: want ErrInvalid, got %v", err)
	}
	if _, err := f.client.Rollback(ctx, "web", 0, fleet.RolloutOptions{}); !errors.Is(err, fleet.ErrNotFound) {
		t.Errorf("rollback of an app never deployed: want ErrNotFound, got %v", err)
	}
	if st := f.status("web"); st.Rollout != nil || st.Release != nil {
		t.Errorf("bad input changed etcd: %+v", st)
	}
	if rels := f.nodes["n1"].releases(t, "web"); len(rels) != 0 {
		t.Errorf("bad input changed the node: %+v", rels)
	}
}

// TestFleet_DriverDiesAnotherTakesOver ensures a rollout survives the
// agent driving it: when it is killed (kill -9) its lease ends, another
// agent takes the app's rollout lock, records itself as the driver and
// ends the rollout on the nodes left.
func TestFleet_DriverDiesAnotherTakesOver(t *testing.T) {
	f := newTestFleet(t, 3)
	for _, n := range []string{"n1", "n2", "n3"} {
		f.startNode(n, nil, nil)
	}
	waitFor(t, 30e9, "3 nodes registered", func() bool { return len(f.status("web").Nodes) == 3 })
	gate := filepath.Join(dataDir(t), "gate")
	body := gatedBuild(t, gate, "v1")
	// Every node has the build: whichever drives, killing it leaves the
	// build to the others (a build no live node has is waited for).
	f.upload("n2", body)
	f.upload("n3", body)
	f.deploy("web", "n1", body, fleet.RolloutOptions{WaveSize: 1})
	var driver string
	waitFor(t, 30e9, "a driver", func() bool {
		ro := f.status("web").Rollout
		driver = ro.Driver
		return driver != ""
	})
	dead := f.nodes[driver]
	dead.cmd.Process.Kill()
	<-dead.done
	waitFor(t, 30e9, "another agent to drive the rollout", func() bool {
		ro := f.status("web").Rollout
		return ro.Driver != "" && ro.Driver != driver
	})
	os.WriteFile(gate, nil, 0o644)
	if ro := f.waitRollout("web", 1); ro.State != fleet.RolloutSucceeded {
		t.Fatalf("rollout after its driver died: %s (%s)", ro.State, ro.Reason)
	}
	var alive []string
	for name := range f.nodes {
		if name != driver {
			alive = append(alive, name)
		}
	}
	f.waitNodesUp("web", 1, alive...)
}

// TestFleet_BuildFromURL ensures a node fetches a build from the
// release's URL when no node has it, without sending the fleet's token
// there, and refuses a download whose SHA-256 is not the digest: it says
// so in its status and runs nothing of it.
func TestFleet_BuildFromURL(t *testing.T) {
	f := newTestFleet(t, 1)
	f.startNode("n1", nil, nil)
	waitFor(t, 30e9, "node registered", func() bool { return len(f.status("web").Nodes) == 1 })
	good, other := appBuild(t, "true", "from-url"), appBuild(t, "true", "not-it")
	var mu sync.Mutex
	var auth []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
		if r.URL.Path == "/good.tar.gz" {
			w.Write(good)
		} else {
			w.Write(other)
		}
	}))
	defer srv.Close()
	sum := sha256.Sum256(good)
	digest := hex.EncodeToString(sum[:])
	ctx := context.Background()
	if _, err := f.client.Deploy(ctx, "web", digest, nil, srv.URL+"/good.tar.gz", fleet.RolloutOptions{}); err != nil {
		t.Fatal(err)
	}
	if ro := f.waitRollout("web", 1); ro.State != fleet.RolloutSucceeded {
		t.Fatalf("rollout from a URL: %s (%s)", ro.State, ro.Reason)
	}
	mu.Lock()
	if len(auth) == 0 || slices.ContainsFunc(auth, func(a string) bool { return a != "" }) {
		t.Errorf("the URL got %d requests with Authorization headers %q; want some, none with the token", len(auth), auth)
	}
	mu.Unlock()

	if _, err := f.client.Deploy(ctx, "bad", digest, nil, srv.URL+"/other.tar.gz", fleet.RolloutOptions{}); err != nil {
		t.Fatal(err)
	}
	// The digest is good's, already imported for web: a node that has the
	// build does not download it again.
	// A digest that is not other's SHA-256.
	sum = sha256.Sum256(other)
	sum[0] ^= 0xff
	if _, err := f.client.Deploy(ctx, "worse", hex.EncodeToString(sum[:]), nil, srv.URL+"/other.tar.gz", fleet.RolloutOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30e9, "n1 to refuse the download", func() bool {
		return strings.Contains(f.status("worse").Statuses["n1"].Error, "SHA-256")
	})
	if rels := f.nodes["n1"].releases(t, "worse"); len(rels) != 0 {
		t.Fatalf("a build whose SHA-256 did not match was used: %+v", rels)
	}
	f.waitNodesUp("bad", 1, "n1")
}

// TestFleet_KeptBuildsPruned ensures a node does not keep fleet tarballs
// forever: one whose build the agent garbage-collected and that no
// release or rollout names is removed.
func TestFleet_KeptBuildsPruned(t *testing.T) {
	f := newTestFleet(t, 1)
	f.retention = 1
	n1 := f.startNode("n1", nil, nil)
	waitFor(t, 30e9, "node registered", func() bool { return len(f.status("web").Nodes) == 1 })
	var digests []string
	for i := 1; i <= 3; i++ {
		ro := f.deploy("web", "n1", appBuild(t, "true", fmt.Sprintf("v%d", i)), fleet.RolloutOptions{})
		if got := f.waitRollout("web", i); got.State != fleet.RolloutSucceeded {
			t.Fatalf("v%d: %s (%s)", i, got.State, got.Reason)
		}
		digests = append(digests, ro.To.Build)
	}
	kept := func(d string) bool {
		_, err := os.Stat(filepath.Join(n1.dataDir, "fleet", "builds", d+".tar"))
		return err == nil
	}
	if kept(digests[0]) {
		t.Error("v1's tarball is still kept: its build was collected and nothing names it")
	}
	if !kept(digests[2]) {
		t.Error("the current release's tarball was removed")
	}
}

// TestFleet_EtcdOverTLS ensures agents and the client reach an etcd that
// wants TLS with client certificates, and that an agent without a
// certificate gets nothing from it but runs on.
func TestFleet_EtcdOverTLS(t *testing.T) {
	f := newFleet(t, 1, true)
	f.startNode("n1", nil, nil)
	f.startNode("n2", nil, nil)
	waitFor(t, 30e9, "2 nodes registered over TLS", func() bool { return len(f.status("web").Nodes) == 2 })
	f.deploy("web", "n1", appBuild(t, "true", "v1"), fleet.RolloutOptions{})
	if ro := f.waitRollout("web", 1); ro.State != fleet.RolloutSucceeded {
		t.Fatalf("rollout over TLS: %s (%s)", ro.State, ro.Reason)
	}
	f.waitNodesUp("web", 1, "n1", "n2")

	f.etcdTLS = false // n3 has no client certificate
	n3 := f.startNode("n3", nil, nil)
	waitFor(t, 30e9, "n3 to say etcd is unreachable", func() bool {
		b, _ := os.ReadFile(n3.log)
		return bytes.Contains(b, []byte("etcd unreachable"))
	})
	if _, ok := f.status("web").Nodes["n3"]; ok {
		t.Fatal("n3 registered without a client certificate")
	}
	if _, err := n3.api.Info(context.Background()); err != nil {
		t.Fatalf("n3 should serve its socket without etcd: %v", err)
	}
}

// TestFleet_WaveTimeout ensures a wave that is not up within the
// rollout's wave timeout fails the rollout, and that a node whose switch
// ends after that goes back to the app's release.
func TestFleet_WaveTimeout(t *testing.T) {
	f := newTestFleet(t, 1)
	f.startNode("n1", nil, nil)
	waitFor(t, 30e9, "node registered", func() bool { return len(f.status("web").Nodes) == 1 })
	f.deploy("web", "n1", appBuild(t, "true", "v1"), fleet.RolloutOptions{})
	f.waitRollout("web", 1)
	gate := filepath.Join(dataDir(t), "gate")
	f.deploy("web", "n1", gatedBuild(t, gate, "v2"), fleet.RolloutOptions{WaveTimeout: time.Second})
	ro := f.waitRollout("web", 2)
	if ro.State != fleet.RolloutFailed || !strings.Contains(ro.Reason, "not up within 1s") {
		t.Fatalf("rollout stuck in its release phase: want failed by the wave timeout, got %s (%s)", ro.State, ro.Reason)
	}
	os.WriteFile(gate, nil, 0o644)
	f.waitNodesUp("web", 1, "n1")
	if got := f.nodes["n1"].fleetVersions(t, "web"); got[0] != "Fleet v1/active" {
		t.Fatalf("n1 should run v1 again: %v", got)
	}
}

// TestFleet_EtcdAuth ensures agents and the client log in to an etcd
// with authentication on, and that the password never reaches a log.
func TestFleet_EtcdAuth(t *testing.T) {
	f := newTestFleet(t, 1)
	const password = "s3cret-etcd-pw"
	f.enableAuth(password)
	n1 := f.startNode("n1", nil, nil)
	waitFor(t, 30e9, "node registered with a password", func() bool { return len(f.status("web").Nodes) == 1 })
	f.deploy("web", "n1", appBuild(t, "true", "v1"), fleet.RolloutOptions{})
	if ro := f.waitRollout("web", 1); ro.State != fleet.RolloutSucceeded {
		t.Fatalf("rollout with auth: %s (%s)", ro.State, ro.Reason)
	}
	if _, err := f.client.SetConfig(context.Background(), "web", map[string]string{"GREETING": "very-secret-value"}, nil, fleet.RolloutOptions{}); err != nil {
		t.Fatal(err)
	}
	f.waitRollout("web", 2)
	f.waitNodesUp("web", 2, "n1")
	n1.stop(t)
	b, _ := os.ReadFile(n1.log)
	for _, secret := range []string{password, "very-secret-value", f.token} {
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("the agent's log holds a secret (%q)", secret)
		}
	}
}
