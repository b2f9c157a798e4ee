package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
)

// lockedBuffer is a bytes.Buffer safe for the two output streams.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// uidOf returns the real uid of a process from /proc.
func uidOf(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			return strings.Fields(v)[0]
		}
	}
	t.Fatalf("no Uid line for pid %d", pid)
	return ""
}

// TestOneOff_ExitCodesAndEnvironment runs one-off commands over the real
// socket through the Go client the CLI uses: exit 0, exit 3 and a kill by
// a signal come back as such; the command sees the release's config and
// BERTH_* (no PORT), runs in the build dir and as the same uid as the
// app's web process; stdout and stderr stay apart.
func TestOneOff_ExitCodesAndEnvironment(t *testing.T) {
	cfg := testConfig(dataDir(t))
	cfg.NoSocket = false
	ta := startAgent(t, cfg)
	ctx := context.Background()
	client := api.NewClient(cfg.SocketPath)
	defer client.Close()
	ta.mustDeploy(t, "hello", webBuild(t, "one"))
	if _, err := ta.SetConfig(ctx, "hello", api.ConfigChange{Set: map[string]string{"FOO": "from config"}}, nil); err != nil {
		t.Fatal(err)
	}
	web := ta.procs(t, "hello")["web.1"]

	run := func(argv ...string) (api.RunExit, string, string, api.RunStarted) {
		t.Helper()
		var out, errOut lockedBuffer
		var started api.RunStarted
		exit, err := client.Run(ctx, "hello", argv, func(s api.RunStarted) { started = s }, &out, &errOut)
		if err != nil {
			t.Fatalf("run %q: %v", argv, err)
		}
		return exit, out.String(), errOut.String(), started
	}

	exit, out, errOut, started := run("sh", "-c", `echo "FOO=$FOO rel=$BERTH_RELEASE proc=$BERTH_PROCESS port=${PORT-unset}"; pwd; id -u; echo oops >&2`)
	if exit.ExitCode() != 0 || exit.Status != "exit 0" {
		t.Errorf("exit %+v, want 0", exit)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || lines[0] != "FOO=from config rel=v2 proc=run.1 port=unset" {
		t.Fatalf("output %q", out)
	}
	if cur, err := os.Readlink(ta.appDir("hello", "current")); err != nil || lines[1] != cur {
		t.Errorf("ran in %q, want the active build %q (%v)", lines[1], cur, err)
	}
	if want := uidOf(t, web.PID); lines[2] != want {
		t.Errorf("ran as uid %s, web.1 runs as %s", lines[2], want)
	}
	if errOut != "oops\n" {
		t.Errorf("stderr %q, want \"oops\\n\"", errOut)
	}
	if started.Instance != "run.1" || started.Release != 2 || started.PID == 0 {
		t.Errorf("started %+v, want run.1 of v2 with a pid", started)
	}

	if exit, _, _, _ := run("sh", "-c", "exit 3"); exit.ExitCode() != 3 || exit.Status != "exit 3" {
		t.Errorf("exit 3: %+v", exit)
	}
	if exit, _, _, _ := run("sh", "-c", "kill -KILL $$"); exit.ExitCode() != 137 || exit.Signal != 9 || exit.Status != "signal SIGKILL" {
		t.Errorf("killed by SIGKILL: %+v, want code 137", exit)
	}
	// Words are passed as they are, no shell in between.
	if _, out, _, _ := run("printf", "%s|", "a b", "$FOO", "it's"); out != "a b|$FOO|it's|" {
		t.Errorf("argv came through as %q", out)
	}
	// The formation is untouched: still just web.1, which did not restart.
	if ps := ta.procs(t, "hello"); len(ps) != 1 || ps["web.1"].Restarts != 0 {
		t.Errorf("ps after one-offs: %+v", ps)
	}
}

// TestOneOff_ListedWhileRunningStoppedOnDisconnect ensures a one-off is
// in ps (run.1, mode one-off) while it runs, a second one gets run.2,
// and a client that goes away stops its command and its process group.
func TestOneOff_ListedWhileRunningStoppedOnDisconnect(t *testing.T) {
	cfg := testConfig(dataDir(t))
	cfg.NoSocket = false
	ta := startAgent(t, cfg)
	client := api.NewClient(cfg.SocketPath)
	defer client.Close()
	ta.mustDeploy(t, "hello", webBuild(t, "one"))

	type result struct {
		exit api.RunExit
		err  error
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pids := make(chan int, 2)
	done := make(chan result, 2)
	for range 2 {
		go func() {
			exit, err := client.Run(ctx, "hello", []string{"sh", "-c", "sleep 1000 & wait"}, func(s api.RunStarted) { pids <- s.PID }, nil, nil)
			done <- result{exit, err}
		}()
	}
	p1, p2 := <-pids, <-pids
	ps := ta.procs(t, "hello")
	for _, inst := range []string{"run.1", "run.2"} {
		p, ok := ps[inst]
		if !ok || p.Mode != "one-off" || p.State != "running" || p.Release != 1 || (p.PID != p1 && p.PID != p2) {
			t.Errorf("ps %s: %+v (present %v), want a running one-off of v1", inst, p, ok)
		}
	}
	if len(ps) != 3 {
		t.Errorf("ps lists %d processes, want web.1, run.1 and run.2: %+v", len(ps), ps)
	}
	cancel() // both clients go away
	for range 2 {
		if r := <-done; !errors.Is(r.err, context.Canceled) {
			t.Errorf("run after the client went away: %+v", r)
		}
	}
	waitFor(t, 10*time.Second, "the one-offs gone from ps and from the host", func() bool {
		ps := ta.procs(t, "hello")
		_, r1 := ps["run.1"]
		_, r2 := ps["run.2"]
		return !r1 && !r2 && !alivePID(p1) && !alivePID(p2) && len(appProcs(t, ta.cfg.DataDir, "hello")) == 1
	})
}

// alivePID reports whether a process exists and is no zombie.
func alivePID(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// TestOneOff_BadInput ensures an unknown app, an app with nothing
// deployed and bad commands get clear errors of the right kind, and run
// nothing.
func TestOneOff_BadInput(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	noStart := func(api.RunStarted) { t.Error("a command started") }
	_, err := ta.OneOff(ctx, "nosuch", api.RunRequest{Command: []string{"true"}}, noStart, nil, nil)
	wantKind(t, err, api.ErrNotFound)
	if !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("error %q does not name the app", err)
	}
	if _, err := ta.CreateApp(ctx, "empty"); err != nil {
		t.Fatal(err)
	}
	_, err = ta.OneOff(ctx, "empty", api.RunRequest{Command: []string{"true"}}, noStart, nil, nil)
	wantKind(t, err, api.ErrConflict)
	if !strings.Contains(err.Error(), "nothing is deployed") {
		t.Errorf("error %q", err)
	}
	ta.mustDeploy(t, "hello", webBuild(t, "one"))
	for _, argv := range [][]string{nil, {""}, {"echo", "a\x00b"}} {
		_, err := ta.OneOff(ctx, "hello", api.RunRequest{Command: argv}, noStart, nil, nil)
		wantKind(t, err, api.ErrInvalid)
	}
	// A program that does not exist: sh says so, exit 127 (or 126 when a
	// directory of PATH is closed to the app's user).
	var errOut lockedBuffer
	exit, err := ta.OneOff(ctx, "hello", api.RunRequest{Command: []string{"no-such-program"}}, nil, nil, &errOut)
	if err != nil || (exit.Code != 127 && exit.Code != 126) || !strings.Contains(errOut.String(), "no-such-program") {
		t.Errorf("unknown program: %+v, %v, stderr %q; want exit 127 and a message", exit, err, errOut.String())
	}
}

// TestShellQuote ensures a quoted argv reads back the same through sh.
func TestShellQuote(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"ls", "-l", "/tmp"}, "ls -l /tmp"},
		{[]string{"echo", "a b", "$X", "it's", ""}, `echo 'a b' '$X' 'it'\''s' ''`},
		{[]string{"FOO=1", "env"}, "'FOO=1' env"},
	} {
		if got := shellQuote(tc.argv); got != tc.want {
			t.Errorf("shellQuote(%q) = %q, want %q", tc.argv, got, tc.want)
		}
	}
}

// TestOneOff_StoppedByDestroy ensures destroying an app stops its
// running one-offs before its uid is freed, and that the destroy waits
// for them.
func TestOneOff_StoppedByDestroy(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ta.mustDeploy(t, "hello", webBuild(t, "one"))
	pids := make(chan int, 1)
	type result struct {
		exit api.RunExit
		err  error
	}
	done := make(chan result, 1)
	go func() {
		exit, err := ta.OneOff(context.Background(), "hello", api.RunRequest{Command: []string{"sleep", "1000"}},
			func(s api.RunStarted) { pids <- s.PID }, nil, nil)
		done <- result{exit, err}
	}()
	pid := <-pids
	if err := ta.DestroyApp(context.Background(), "hello"); err != nil {
		t.Fatal(err)
	}
	if alivePID(pid) {
		t.Errorf("one-off %d still runs after the destroy returned", pid)
	}
	r := <-done
	if !errors.Is(r.err, context.Canceled) || !strings.Contains(r.err.Error(), "signal SIGTERM") {
		t.Errorf("the one-off's result: %+v", r)
	}
}
