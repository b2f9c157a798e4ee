package api

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const nobody = 65534

// copyTestBinary copies the test binary where user nobody can run it (go
// test's build dir is private to root).
func copyTestBinary(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "peer")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// runAsPeer runs the test binary as uid nobody with the given groups,
// doing GET /v1/info on sock, and returns its output.
func runAsPeer(t *testing.T, bin, sock string, groups ...uint32) string {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = []string{"BERTH_API_TEST_PEER_SOCKET=" + sock}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: groups}}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("peer client: %v\n%s", err, out)
	}
	return string(out)
}

// TestServer_PeerCheck runs a real client process as another user:
// refused with 403 (and a log line) unless one of its groups is the
// socket's group. The socket is made world-writable here so that the
// SO_PEERCRED check, not the file mode, is what decides.
func TestServer_PeerCheck(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatalf("this test switches to uid %d and must run as root; euid %d", nobody, os.Geteuid())
	}
	const group = 4242
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := copyTestBinary(t, dir)
	ts := startServerGID(t, dir, group)
	if err := os.Chmod(ts.sock, 0o666); err != nil {
		t.Fatal(err)
	}

	out := runAsPeer(t, bin, ts.sock)
	if !strings.HasPrefix(out, "403 ") || !strings.Contains(out, `"kind": "forbidden"`) || !strings.Contains(out, "uid 65534") {
		t.Errorf("nobody without the group: %s, want 403 forbidden naming uid 65534", out)
	}
	if logs := ts.logs.String(); !strings.Contains(logs, "refused socket peer") || !strings.Contains(logs, "uid=65534") || !strings.Contains(logs, "pid=") {
		t.Errorf("no log line for the refused peer:\n%s", logs)
	}
	if out := runAsPeer(t, bin, ts.sock, 100, group); !strings.HasPrefix(out, "200 ") || !strings.Contains(out, `"data_dir"`) {
		t.Errorf("nobody with supplementary group %d: %s, want 200", group, out)
	}
	// Root (this process) is always allowed.
	if _, err := ts.client.Info(context.Background()); err != nil {
		t.Errorf("root refused: %v", err)
	}
}

// TestServer_SocketMode ensures the 0660 socket keeps out a user outside
// its group before any request, and that the client says so.
func TestServer_SocketMode(t *testing.T) {
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := copyTestBinary(t, dir)
	ts := startServerGID(t, dir, 4242)
	out := runAsPeer(t, bin, ts.sock)
	if !strings.Contains(out, "permission denied") {
		t.Errorf("nobody on a 0660 root:4242 socket: %s, want permission denied", out)
	}
}

// startServerGID starts a server on dir/s.sock with socket group gid.
func startServerGID(t *testing.T, dir string, gid int) *testServer {
	t.Helper()
	sock := filepath.Join(dir, "s.sock")
	ln, err := Listen(sock, gid)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Gid) != gid || st.Uid != 0 {
		t.Errorf("socket owner %d:%d, want 0:%d", st.Uid, st.Gid, gid)
	}
	ts := startOn(t, ln, ServerConfig{GID: gid})
	ts.sock = sock
	return ts
}
