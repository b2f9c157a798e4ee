//go:build e2e_fleet

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// netns is a named network namespace (ip netns).
type netns struct{ name string }

// run runs ip with args and fails the test on an error.
func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// newNetns adds a namespace with its loopback up, removed at cleanup.
func newNetns(t *testing.T, name string) netns {
	t.Helper()
	exec.Command("ip", "netns", "del", name).Run() // left by a killed run
	ipCmd(t, "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	n := netns{name}
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// ip runs ip inside the namespace.
func (n netns) ip(t *testing.T, args ...string) {
	t.Helper()
	ipCmd(t, append([]string{"-n", n.name}, args...)...)
}

// command returns a command that runs inside the namespace.
func (n netns) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// dialer returns a dial function whose sockets are made in the
// namespace: the calling goroutine's thread enters it for the socket(2)
// and leaves it after, and a socket keeps its namespace for its life.
func (n netns) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := n.do(func() error {
			var err error
			conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// do runs fn on a thread in the namespace. A thread that cannot be
// brought back is left locked, so the runtime retires it.
func (n netns) do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + n.name)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", n.name, err)
	}
	ferr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("leave netns %s: %w", n.name, err) // thread stays locked: retired
	}
	runtime.UnlockOSThread()
	return ferr
}

// topology is the hub with its bridge and the node namespaces on it.
type topology struct {
	hub   netns
	nodes []netns
	ips   []string // the nodes' addresses
}

const hubIP = "10.201.0.1"

// newTopology makes the hub namespace with a bridge and n node
// namespaces, each on a veth pair to the bridge.
func newTopology(t *testing.T, n int) *topology {
	t.Helper()
	tag := fmt.Sprintf("%d", os.Getpid()%100000)
	top := &topology{hub: newNetns(t, "bfe-hub-"+tag)}
	top.hub.ip(t, "link", "add", "br0", "type", "bridge")
	top.hub.ip(t, "addr", "add", hubIP+"/24", "dev", "br0")
	top.hub.ip(t, "link", "set", "br0", "up")
	for i := 1; i <= n; i++ {
		ns := newNetns(t, fmt.Sprintf("bfe-n%d-%s", i, tag))
		addr := fmt.Sprintf("10.201.0.%d", 10+i)
		hubSide := fmt.Sprintf("vn%d", i)
		// Made in the hub, the node's end moved into its namespace.
		top.hub.ip(t, "link", "add", hubSide, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
		top.hub.ip(t, "link", "set", hubSide, "master", "br0")
		top.hub.ip(t, "link", "set", hubSide, "up")
		ns.ip(t, "addr", "add", addr+"/24", "dev", "eth0")
		ns.ip(t, "link", "set", "eth0", "up")
		ns.ip(t, "route", "add", "default", "via", hubIP)
		top.nodes = append(top.nodes, ns)
		top.ips = append(top.ips, addr)
	}
	return top
}
