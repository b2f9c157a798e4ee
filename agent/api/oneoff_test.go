package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// extraBackend is the fake backend plus one-off commands and metrics.
type extraBackend struct {
	*fakeBackend
}

func (b extraBackend) WriteMetrics(ctx context.Context, w io.Writer) error {
	_, err := io.WriteString(w, "# HELP up 1\n# TYPE up gauge\nup 1\n")
	return err
}

func (b extraBackend) OneOff(ctx context.Context, app string, req RunRequest, started func(RunStarted), stdout, stderr io.Writer) (RunExit, error) {
	switch app {
	case "nosuch":
		return RunExit{}, fmt.Errorf("%w: app %q", ErrNotFound, app)
	case "late":
		started(RunStarted{Instance: "run.1", PID: 42, Release: 3})
		return RunExit{}, fmt.Errorf("%w: lost the process", ErrUnavailable)
	}
	started(RunStarted{Instance: "run.1", PID: 42, Release: 3})
	fmt.Fprintf(stdout, "argv=%q\n", req.Command)
	stderr.Write([]byte{0xff, 0x00, 'e'}) // output need not be text
	return RunExit{Code: 3, Status: "exit 3"}, nil
}

// TestServer_Run covers POST /v1/apps/{app}/run through the Go client:
// the argv as sent, binary output on its stream, the exit; an error
// before the start with its HTTP status, one after it in the stream;
// bad commands refused.
func TestServer_Run(t *testing.T) {
	ts := startServer(t, ServerConfig{Backend: extraBackend{newFake()}})
	ctx := context.Background()
	var out, errOut bytes.Buffer
	var started RunStarted
	exit, err := ts.client.Run(ctx, "hello", []string{"echo", "a b", "$X"}, func(s RunStarted) { started = s }, &out, &errOut)
	if err != nil || exit.Code != 3 || exit.ExitCode() != 3 {
		t.Fatalf("Run: %+v, %v", exit, err)
	}
	if out.String() != `argv=["echo" "a b" "$X"]`+"\n" || errOut.String() != "\xff\x00e" || started != (RunStarted{"run.1", 42, 3}) {
		t.Errorf("stdout %q, stderr %q, started %+v", out.String(), errOut.String(), started)
	}
	_, err = ts.client.Run(ctx, "nosuch", []string{"true"}, nil, nil, nil)
	var e *Error
	if !errors.As(err, &e) || e.Status != 404 || !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown app: %v, want a 404", err)
	}
	if _, err := ts.client.Run(ctx, "late", []string{"true"}, nil, nil, nil); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "lost the process") {
		t.Errorf("an error after the start: %v", err)
	}
	for _, argv := range [][]string{nil, {""}, {"a\x00b"}} {
		if _, err := ts.client.Run(ctx, "hello", argv, nil, nil, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("Run %q: %v, want ErrInvalid", argv, err)
		}
	}
	if (RunExit{Code: -1, Signal: 15}).ExitCode() != 143 {
		t.Error("ExitCode of a signal")
	}
}

// TestServer_WithoutOptionalBackends ensures a backend that serves no
// metrics and no one-offs gets clear 404s.
func TestServer_WithoutOptionalBackends(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	if _, err := ts.client.Metrics(context.Background()); !errors.Is(err, ErrNotFound) {
		t.Errorf("Metrics: %v, want ErrNotFound", err)
	}
	if _, err := ts.client.Run(context.Background(), "hello", []string{"true"}, nil, nil, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Run: %v, want ErrNotFound", err)
	}
}

// TestServer_MetricsPeerCheck ensures GET /metrics keeps the socket's
// peer checks: a real client process as nobody outside the socket's
// group is refused, one in it gets the metrics.
func TestServer_MetricsPeerCheck(t *testing.T) {
	const group = 4242
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := copyTestBinary(t, dir)
	sock := dir + "/s.sock"
	ln, err := Listen(sock, group)
	if err != nil {
		t.Fatal(err)
	}
	startOn(t, ln, ServerConfig{GID: group, Backend: extraBackend{newFake()}})
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	get := func(groups ...uint32) string {
		cmd := exec.Command(bin)
		cmd.Env = []string{"BERTH_API_TEST_PEER_SOCKET=" + sock, "BERTH_API_TEST_PEER_PATH=/metrics"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: groups}}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("peer client: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := get(); !strings.HasPrefix(out, "403 ") || strings.Contains(out, "up 1") {
		t.Errorf("nobody without the group: %s, want 403", out)
	}
	if out := get(group); !strings.HasPrefix(out, "200 ") || !strings.Contains(out, "\nup 1\n") {
		t.Errorf("nobody in the group: %s, want 200 and the metrics", out)
	}
}

// FuzzDecodeRun feeds arbitrary bodies to the one-off command decoder: it
// must not panic, must refuse with ErrInvalid or ErrTooLarge, and what it
// accepts is a command CheckRunCommand passes.
func FuzzDecodeRun(f *testing.F) {
	for _, seed := range []string{`{"command":["true"]}`, `{"command":[]}`, `{"command":[""]}`, `{"command":["a\u0000"]}`,
		`{"command":"ls"}`, `{"Command":["ls"]}`, `{"command":["a"],"command":["b"]}`, ``, `null`, `{"command":["ls"]} x`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeRun(bytes.NewReader(body))
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error %v is neither ErrInvalid nor ErrTooLarge", err)
			}
			return
		}
		if err := CheckRunCommand(req.Command); err != nil {
			t.Fatalf("accepted %q: %v", req.Command, err)
		}
	})
}
