package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/fleet"
)

// startDevEtcd builds and runs cmd/berth-etcd (the documented dev
// command) on free ports and returns its client URL; it is stopped at
// the end of the test.
func startDevEtcd(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "berth-etcd")
	build := exec.Command("go", "build", "-o", bin, "../berth-etcd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build berth-etcd: %v\n%s", err, out)
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", freePortRange(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", freePortRange(t))
	cmd := exec.Command(bin, "--data", filepath.Join(dir, "etcd"), "--listen-client", client, "--listen-peer", peer)
	log := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(log.String(), "serving clients") {
		if time.Now().After(deadline) {
			t.Fatalf("berth-etcd not serving after 30s:\n%s", log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if c, err := net.Dial("tcp", strings.TrimPrefix(client, "http://")); err == nil {
		c.Close()
	}
	return client
}

// TestE2E_Fleet runs the fleet commands of the real binary against two
// `berth agent --etcd` processes and the dev etcd: a deploy in waves
// with --wait, status --json, a fleet config change seen by a node's
// own socket, and usage errors.
func TestE2E_Fleet(t *testing.T) {
	dir := t.TempDir()
	etcd := startDevEtcd(t, dir)
	env := []string{"BERTH_ETCD=" + etcd, "BERTH_FLEET_TOKEN=e2e-token"}
	var nodes []*e2e
	for i := range 2 {
		e := newE2E(t)
		e.env = env
		e.startAgent("--node", fmt.Sprintf("n%d", i+1), "--fleet-listen", "127.0.0.1:0")
		nodes = append(nodes, e)
	}
	n1 := nodes[0]
	tarball := writeFile(t, n1.dir, "web.tar.gz", appTarball(t, map[string]string{"Procfile": "web: " + webCmd + "\n"}))

	n1.waitFor("both nodes registered", func() (bool, string) {
		out, _, _ := n1.berth("fleet", "status", "-a", "web", "--json")
		var st fleet.AppStatus
		json.Unmarshal([]byte(out), &st)
		return len(st.Nodes) == 2, out
	})
	if _, _, code := n1.berth("fleet", "deploy", "-a", "web", "--wave-size", "1", "--max-unavailable", "1", tarball); code != exitUsage {
		t.Errorf("--wave-size with --max-unavailable: exit %d, want %d", code, exitUsage)
	}
	out := n1.ok("fleet", "deploy", "-a", "web", "--wave-size", "1", "--wait", tarball)
	if !strings.Contains(out, "web v1: rollout succeeded") {
		t.Fatalf("fleet deploy --wait: %q", out)
	}
	var st fleet.AppStatus
	if err := json.Unmarshal([]byte(n1.ok("fleet", "status", "-a", "web", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Release == nil || st.Release.Version != 1 || len(st.Rollout.Waves) != 2 {
		t.Fatalf("status: %+v", st)
	}
	for _, n := range []string{"n1", "n2"} {
		if s := st.Statuses[n]; s.Version != 1 || s.Healthy != 1 {
			t.Errorf("%s: %+v", n, s)
		}
	}

	n1.ok("fleet", "config", "set", "-a", "web", "FOO=bar", "--wait")
	if out := nodes[1].ok("config", "-a", "web"); !strings.Contains(out, "FOO=bar") {
		t.Errorf("n2's config after a fleet config set: %q", out)
	}
	if out := nodes[1].ok("releases", "-a", "web"); !strings.Contains(out, "Fleet v2: Config change") {
		t.Errorf("n2's releases: %q", out)
	}
	if out := n1.ok("fleet", "status", "-a", "web"); !strings.Contains(out, "web: v2") || !strings.Contains(out, "n2    v2") {
		t.Errorf("fleet status: %q", out)
	}
	for _, n := range nodes {
		n.stopAgent()
	}

	// Without etcd the fleet commands are usage errors.
	n1.env = nil
	if _, stderr, code := n1.berth("fleet", "status", "-a", "web"); code != exitUsage || !strings.Contains(stderr, "no etcd") {
		t.Errorf("fleet status without etcd: exit %d, %q", code, stderr)
	}
}
