package agent

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestAgent_AppsGetOnlyStdioAndSockets ensures an app starts with
// exactly fds 0, 1 and 2 (and fd 3, its listening socket, when socket
// activated), even when the agent itself was started with another fd
// open and inheritable, as a shell's fd 7 on a root-owned file would be.
func TestAgent_AppsGetOnlyStdioAndSockets(t *testing.T) {
	cfg := testConfig(dataDir(t))
	cfg.BasePort = freeBasePort(t)
	inbox := filepath.Join(cfg.DataDir, "inbox")
	if err := os.MkdirAll(inbox, 0o755); err != nil {
		t.Fatal(err)
	}
	apps := map[string]map[string]string{
		"plain": {"Procfile": webProcfile},
		"sock":  {"Procfile": "web: sleep 1000\n", "berth.json": `{"processes":{"web":{"socket_activation":true}}}`},
	}
	for app, files := range apps {
		if err := os.WriteFile(filepath.Join(inbox, app+".tar.gz"), tarball(t, files), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	secret, err := os.Create(filepath.Join(t.TempDir(), "secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer secret.Close()
	logf, err := os.Create(filepath.Join(t.TempDir(), "child.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), helperEnv+"="+cfg.DataDir, helperPortEnv+"="+strconv.Itoa(cfg.BasePort))
	child.Stdout, child.Stderr = logf, logf
	child.ExtraFiles = []*os.File{nil, nil, nil, nil, secret} // the agent's fd 7, without close-on-exec
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		child.Process.Signal(syscall.SIGTERM)
		child.Wait()
	})
	if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/7", child.Process.Pid)); err != nil || target != secret.Name() {
		t.Fatalf("the child agent's fd 7 is %q, %v; the test proves nothing", target, err)
	}

	want := map[string][]string{"plain": {"0", "1", "2"}, "sock": {"0", "1", "2", "3"}}
	for app, fds := range want {
		var got []string
		deadline := time.Now().Add(30 * time.Second)
		for {
			got = nil
			procs := appProcs(t, cfg.DataDir, app)
			for pid := range procs {
				// Only the exec'd sleep counts: the shell before it is
				// the same process with the same fds, but wait for it.
				if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); filepath.Base(exe) != "sleep" {
					continue
				}
				entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
				if err != nil {
					continue
				}
				for _, e := range entries {
					got = append(got, e.Name())
				}
			}
			if len(got) > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		slices.SortFunc(got, func(a, b string) int { x, _ := strconv.Atoi(a); y, _ := strconv.Atoi(b); return x - y })
		if !slices.Equal(got, fds) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("%s: app fds %v, want %v\nagent log:\n%s", app, got, fds, b)
		}
	}
}
