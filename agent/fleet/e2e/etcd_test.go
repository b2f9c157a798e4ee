//go:build e2e_fleet

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// etcdServer is one etcd member (Debian's etcd-server) in the hub.
type etcdServer struct {
	t    *testing.T
	ns   netns
	dir  string
	cmd  *exec.Cmd
	done chan error
	log  *os.File
}

// etcdURL is the client URL the agents and the CLI use.
const etcdURL = "http://" + hubIP + ":2379"

func startEtcd(t *testing.T, ns netns, dir string) *etcdServer {
	t.Helper()
	e := &etcdServer{t: t, ns: ns, dir: dir}
	e.start()
	t.Cleanup(e.kill)
	return e
}

// start starts etcd on its data dir (kept across restarts: an outage
// ends with the same member and data) and waits until it serves.
func (e *etcdServer) start() {
	e.t.Helper()
	log, err := os.OpenFile(filepath.Join(e.dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	e.log = log
	peer := "http://" + hubIP + ":2380"
	// ip netns exec execs etcd itself: the pid is etcd's.
	e.cmd = e.ns.command(context.Background(), "etcd",
		"--name", "hub", "--data-dir", filepath.Join(e.dir, "data"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "hub="+peer, "--initial-cluster-state", "new")
	e.cmd.Stdout, e.cmd.Stderr = log, log
	if err := e.cmd.Start(); err != nil {
		e.t.Fatalf("start etcd (Debian package etcd-server): %v", err)
	}
	e.done = make(chan error, 1)
	go func(c *exec.Cmd, done chan error) { done <- c.Wait() }(e.cmd, e.done)
	dial := e.ns.dialer()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := dial(ctx, "tcp", net.JoinHostPort(hubIP, "2379"))
		cancel()
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-e.done:
			e.t.Fatalf("etcd exited at start: %v; its log: %s", err, filepath.Join(e.dir, "etcd.log"))
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("etcd does not serve %s after 30s", etcdURL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill stops etcd at once (SIGKILL by its pid): an outage.
func (e *etcdServer) kill() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	e.cmd.Process.Kill()
	<-e.done
	e.log.Close()
	e.cmd = nil
}

func (e *etcdServer) String() string { return fmt.Sprintf("etcd %s", etcdURL) }
