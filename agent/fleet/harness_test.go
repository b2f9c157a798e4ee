package fleet_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/fleet"
)

// testFleet is a fleet under test: an etcd cluster, agent processes
// (nodes) and a client, as `berth fleet` uses.
type testFleet struct {
	t       *testing.T
	etcd    *cluster
	cert    string
	key     string
	ca      string
	token   string
	client  *fleet.Client
	nodes   map[string]*testNode
	portGen int
	// retention is the agents' release retention (0: the default).
	retention int
	etcdTLS   bool // etcd wants TLS with client certificates
	// etcdUser and etcdPassword are what the nodes authenticate with.
	etcdUser, etcdPassword string
}

// testNode is one agent process in fleet mode.
type testNode struct {
	name    string
	hc      helperConfig
	dataDir string
	cmd     *exec.Cmd
	api     *api.Client
	log     string // its stderr
	done    chan struct{}
}

func newTestFleet(t *testing.T, members int) *testFleet {
	t.Helper()
	return newFleet(t, members, false)
}

// newFleet starts a fleet's etcd, over TLS with client certificates if
// etcdTLS (every node then reaches it so).
func newFleet(t *testing.T, members int, etcdTLS bool) *testFleet {
	t.Helper()
	f := &testFleet{t: t, token: "test-token", nodes: map[string]*testNode{}}
	f.cert, f.key, f.ca = writeCerts(t)
	var clientTLS *tls.Config
	if etcdTLS {
		f.etcdTLS = true
		f.etcd = startClusterTLS(t, members, &transport.TLSInfo{CertFile: f.cert, KeyFile: f.key, TrustedCAFile: f.ca, ClientCertAuth: true})
		var err error
		if clientTLS, err = fleet.LoadTLS(f.cert, f.key, f.ca); err != nil {
			t.Fatal(err)
		}
	} else {
		f.etcd = startCluster(t, members)
	}
	c, err := fleet.NewClient(fleet.ClientConfig{Endpoints: f.etcd.clients, TLS: clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f.client = c
	return f
}

// dataDir returns a data dir that app users can traverse (the testing
// package's temp dirs are 0700, and as root apps run as users of their
// own).
func dataDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/" && d != "."; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// startNode starts an agent named name that reaches etcd at endpoints
// (nil: every member), stopped at the end of the test.
func (f *testFleet) startNode(name string, endpoints []string, labels map[string]string) *testNode {
	t := f.t
	t.Helper()
	if endpoints == nil {
		endpoints = f.etcd.clients
	}
	dir := dataDir(t)
	f.portGen++
	hc := helperConfig{DataDir: filepath.Join(dir, "data"), Socket: filepath.Join(dir, "s.sock"), Node: name, BasePort: 21000 + 100*f.portGen,
		Endpoints: endpoints, Labels: labels, Cert: f.cert, Key: f.key, CA: f.ca, Token: f.token, Retention: f.retention}
	if f.etcdTLS {
		hc.EtcdCert, hc.EtcdKey, hc.EtcdCA = f.cert, f.key, f.ca
	}
	hc.EtcdUser, hc.EtcdPassword = f.etcdUser, f.etcdPassword
	n := f.spawn(hc, filepath.Join(dir, "agent.log"))
	f.nodes[name] = n
	return n
}

// restartNode stops the node's agent and starts a new one on the same
// data dir (its apps are stopped and started again).
func (f *testFleet) restartNode(name string) *testNode {
	f.t.Helper()
	old := f.nodes[name]
	old.stop(f.t)
	n := f.spawn(old.hc, old.log)
	f.nodes[name] = n
	return n
}

// spawn runs a helper agent process and waits until it answers.
func (f *testFleet) spawn(hc helperConfig, logPath string) *testNode {
	t := f.t
	t.Helper()
	n := &testNode{name: hc.Node, hc: hc, dataDir: hc.DataDir, log: logPath, done: make(chan struct{})}
	js, _ := json.Marshal(hc)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	n.cmd = exec.Command(os.Args[0], "-test.run=^$")
	n.cmd.Env = append(os.Environ(), helperEnv+"="+string(js))
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.cmd.Wait(); close(n.done) }() // owned: stop waits for done
	n.api = api.NewClient(hc.Socket)
	t.Cleanup(func() {
		n.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(n.log)
			t.Logf("log of node %s:\n%s", n.name, b)
		}
	})
	waitFor(t, 30*time.Second, "agent "+n.name+" to answer", func() bool {
		_, err := n.api.Info(context.Background())
		return err == nil
	})
	return n
}

// stop stops the agent (SIGTERM) and waits for it.
func (n *testNode) stop(t *testing.T) {
	defer n.api.Close()
	select {
	case <-n.done:
		return
	default:
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
		t.Errorf("agent %s did not stop after SIGTERM", n.name)
	}
}

// releases returns the node's local releases of app (none when the app
// does not exist there).
func (n *testNode) releases(t *testing.T, app string) []api.Release {
	t.Helper()
	rels, err := n.api.Releases(context.Background(), app)
	if err != nil && !strings.Contains(err.Error(), "not found") && !strings.Contains(err.Error(), "no such app") {
		t.Fatalf("releases of %s on %s: %v", app, n.name, err)
	}
	return rels
}

// upload sends a tarball to node's build endpoint and returns its digest.
func (f *testFleet) upload(node string, body []byte) string {
	f.t.Helper()
	sum := sha256.Sum256(body)
	digest := hex.EncodeToString(sum[:])
	st, err := f.client.Status(context.Background(), "any")
	if err != nil {
		f.t.Fatal(err)
	}
	peerTLS, err := fleet.LoadTLS(f.cert, f.key, f.ca)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := fleet.Upload(context.Background(), st.Nodes[node].Address, peerTLS, f.token, bytes.NewReader(body), digest); err != nil {
		f.t.Fatal(err)
	}
	return digest
}

// deploy uploads body to the first node and starts a rollout of it.
func (f *testFleet) deploy(app, via string, body []byte, o fleet.RolloutOptions) fleet.Rollout {
	f.t.Helper()
	digest := f.upload(via, body)
	ro, err := f.client.Deploy(context.Background(), app, digest, []string{via}, "", o)
	if err != nil {
		f.t.Fatalf("fleet deploy %s: %v", app, err)
	}
	return ro
}

// waitRollout waits until the app's rollout ended and returns it.
func (f *testFleet) waitRollout(app string, version int) fleet.Rollout {
	f.t.Helper()
	var ro fleet.Rollout
	waitFor(f.t, 60*time.Second, "the rollout of "+app+" to end", func() bool {
		st, err := f.client.Status(context.Background(), app)
		if err != nil || st.Rollout == nil {
			return false
		}
		ro = *st.Rollout
		return ro.To.Version == version && ro.State != fleet.RolloutRunning
	})
	return ro
}

// waitNodesUp waits until every node named reports version of app up.
func (f *testFleet) waitNodesUp(app string, version int, nodes ...string) {
	f.t.Helper()
	waitFor(f.t, 60*time.Second, "nodes to run the release", func() bool {
		st, err := f.client.Status(context.Background(), app)
		if err != nil {
			return false
		}
		for _, n := range nodes {
			if !st.Statuses[n].Up(version) {
				return false
			}
		}
		return true
	})
}

// waitFor polls cond (a bounded poll of a condition) until it holds.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// appBuild is a release tarball: web prints its release and waits; its
// health check runs check (a shell command), and marker makes the build
// distinct.
func appBuild(t *testing.T, check, marker string) []byte {
	t.Helper()
	manifest := `{"processes":{"web":{"healthcheck":{"exec":"` + check + `","interval":"50ms","timeout":"2s","retries":2}}}}`
	return tarball(t, map[string]string{
		"Procfile":   `web: echo "release=$BERTH_RELEASE GREETING=$GREETING"; exec sleep 1000` + "\n",
		"berth.json": manifest,
		"README":     marker,
	})
}

// tarball builds a tar.gz from name -> content.
func tarball(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for name, content := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(content))
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

// gatedBuild is appBuild with a release phase that waits until the file
// gate exists: a rollout of it stays in its first wave until the test
// opens the gate.
func gatedBuild(t *testing.T, gate, marker string) []byte {
	t.Helper()
	return tarball(t, map[string]string{
		"Procfile":   `web: echo "release=$BERTH_RELEASE"; exec sleep 1000` + "\n" + `release: while [ ! -e ` + gate + ` ]; do sleep 0.05; done` + "\n",
		"berth.json": `{"processes":{"web":{"healthcheck":{"exec":"true","interval":"50ms","timeout":"2s","retries":2}}}}`,
		"README":     marker,
	})
}

// status returns the app's status in etcd.
func (f *testFleet) status(app string) fleet.AppStatus {
	f.t.Helper()
	st, err := f.client.Status(context.Background(), app)
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}

// fleetVersions returns the fleet versions of the node's local releases
// of app, newest first.
func (n *testNode) fleetVersions(t *testing.T, app string) []string {
	t.Helper()
	var out []string
	for _, r := range n.releases(t, app) {
		v, _, _ := strings.Cut(r.Description, ":")
		out = append(out, v+"/"+r.Status)
	}
	return out
}

// webPID returns the pid of the app's web.1 on the node (0: none running).
func (n *testNode) webPID(t *testing.T, app string) int {
	t.Helper()
	ps, err := n.api.Processes(context.Background(), app)
	if err != nil {
		return 0
	}
	for _, p := range ps {
		if p.Instance == "web.1" && p.State == "running" {
			return p.PID
		}
	}
	return 0
}

// running returns how many of the app's instances the node lists, as
// `berth ps` shows them (0: none, or no such app).
func (n *testNode) running(t *testing.T, app string) int {
	t.Helper()
	ps, err := n.api.Processes(context.Background(), app)
	if err != nil {
		return 0
	}
	return len(ps)
}

// compact compacts etcd's history up to the current revision.
func (f *testFleet) compact() {
	f.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: f.etcd.live(), Logger: zap.NewNop()})
	if err != nil {
		f.t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(context.Background(), "/")
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := cli.Compact(context.Background(), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		f.t.Fatal(err)
	}
}

// enableAuth turns etcd's authentication on with a root user, and makes
// the test's client and the nodes started from now on log in as it.
func (f *testFleet) enableAuth(password string) {
	f.t.Helper()
	ctx := context.Background()
	cli, err := clientv3.New(clientv3.Config{Endpoints: f.etcd.live(), Logger: zap.NewNop()})
	if err != nil {
		f.t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.UserAdd(ctx, "root", password); err != nil {
		f.t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		f.t.Fatal(err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		f.t.Fatal(err)
	}
	f.etcdUser, f.etcdPassword = "root", password
	c, err := fleet.NewClient(fleet.ClientConfig{Endpoints: f.etcd.clients, Username: "root", Password: password})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	f.client = c
}
