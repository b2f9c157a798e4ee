//go:build e2e_fleet

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/e2e/e2eutil"
	"github.com/berth-dev/berth/agent/fleet"
)

// fleetToken authenticates the build endpoints; shared by every node
// and the CLI, through the environment.
const fleetToken = "e2e-fleet-token"

// appPort is the hello app's port on every node (each has its own
// network namespace, so they may share it).
const appPort = 5000

// artifact returns bin/NAME of the repository, made by `make build
// example` (make e2e-fleet does).
func artifact(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(e2eutil.RepoRoot(t), "bin", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is missing: run `make e2e-fleet` (it builds bin/berth and bin/hello.tar.gz)", p)
	}
	return p
}

// agent is one `berth agent --etcd` in a node's namespace.
type agent struct {
	t      *testing.T
	name   string
	ns     netns
	ip     string
	bin    string
	dir    string
	socket string
	cmd    *exec.Cmd
	exited chan struct{}
}

func startAgent(t *testing.T, bin string, ns netns, name, ip string) *agent {
	t.Helper()
	dir, err := os.MkdirTemp("", "bfe-"+name+"-") // short: sun_path is 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	// Apps run as an unprivileged user when the agent is root: they
	// reach their build dir below the data dir.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	a := &agent{t: t, name: name, ns: ns, ip: ip, bin: bin, dir: dir,
		socket: filepath.Join(dir, "berth.sock"), exited: make(chan struct{})}
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	a.cmd = ns.command(context.Background(), bin, "agent",
		"--data-dir", filepath.Join(dir, "data"), "--socket", a.socket,
		"--base-port", fmt.Sprint(appPort),
		"--etcd", etcdURL, "--node", name, "--labels", "zone="+name,
		"--fleet-listen", ip+":7070")
	a.cmd.Env = e2eutil.CleanEnv("BERTH_FLEET_TOKEN=" + fleetToken)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.cmd.Wait(); close(a.exited) }()
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("%s agent log (last 30 lines):\n%s", name, e2eutil.Tail(a.log(), 30))
		}
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := a.cli("version"); err == nil {
			return a
		}
		select {
		case <-a.exited:
			t.Fatalf("%s agent exited at start:\n%s", name, e2eutil.Tail(a.log(), 30))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s agent does not answer on %s after 30s:\n%s", name, a.socket, e2eutil.Tail(a.log(), 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop stops the agent and its apps (SIGTERM to its pid, which `ip
// netns exec` execs into), SIGKILL after 30 s.
func (a *agent) stop() {
	select {
	case <-a.exited:
		return
	default:
	}
	a.cmd.Process.Signal(os.Interrupt)
	select {
	case <-a.exited:
	case <-time.After(30 * time.Second):
		a.cmd.Process.Kill()
		<-a.exited
	}
}

func (a *agent) log() string {
	b, _ := os.ReadFile(filepath.Join(a.dir, "agent.log"))
	return string(b)
}

// cli runs the local CLI against this agent's socket (a unix socket is
// reached by path, from any namespace).
func (a *agent) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, a.bin, append([]string{"--socket", a.socket}, args...)...)
	cmd.Env = e2eutil.CleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("berth %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// releases returns the node's local releases of app.
func (a *agent) releases(app string) []api.Release {
	a.t.Helper()
	out, err := a.cli("releases", "-a", app, "--json")
	if err != nil {
		a.t.Fatalf("%s: %v", a.name, err)
	}
	var rs []api.Release
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		a.t.Fatalf("%s: decode releases: %v: %s", a.name, err, out)
	}
	return rs
}

// appURL is the hello app's URL on this node, reached from the hub.
func (a *agent) appURL() string { return fmt.Sprintf("http://%s:%d/", a.ip, appPort) }

// fleetCLI runs `berth fleet ...` in the hub, against etcd, bounded by
// timeout; it returns stdout and, on failure, an error with stderr.
func fleetCLI(top *topology, bin string, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := top.hub.command(ctx, bin, append([]string{"fleet", "--etcd", etcdURL}, args...)...)
	cmd.Env = e2eutil.CleanEnv("BERTH_FLEET_TOKEN=" + fleetToken)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("berth fleet %s: %w\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String(), nil
}

// fleetStatus returns `berth fleet status -a app --json`.
func fleetStatus(t *testing.T, top *topology, bin, app string) fleet.AppStatus {
	t.Helper()
	out, err := fleetCLI(top, bin, 30*time.Second, "status", "-a", app, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st fleet.AppStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("decode fleet status: %v: %s", err, out)
	}
	return st
}

// retarball rewrites a gzip tarball, replacing the files in repl.
func retarball(t *testing.T, src, dst string, repl map[string]string) {
	t.Helper()
	seen := map[string]bool{}
	body := e2eutil.RewriteTarball(t, src, "", func(name string, body []byte) []byte {
		if r, ok := repl[name]; ok {
			seen[name] = true
			return []byte(r)
		}
		return body
	})
	for name := range repl {
		if !seen[name] {
			t.Fatalf("%s has no %s", src, name)
		}
	}
	if err := os.WriteFile(dst, body, 0o644); err != nil {
		t.Fatal(err)
	}
}
