package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// binDir holds the hello binary built once for the tests that run it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hello-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	buildErr  error
)

// helloBinary builds the example app with the go tool running this test.
func helloBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, "hello"), ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "hello")
}

func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// TestHandler ensures the routes answer what the agent's health check and
// the load test expect, and that every request is logged except a
// passing health check.
func TestHandler(t *testing.T) {
	s := settings{App: "hello", Release: "v7", Process: "web.1", Greeting: "hi"}
	tests := []struct {
		name       string
		settings   settings
		method     string
		path       string
		wantStatus int
		wantBody   string
	}{
		{"root", s, "GET", "/", 200, "hello from hello v7 (web.1) GREETING=hi\n"},
		{"health", s, "GET", "/up", 200, "ok\n"},
		{"failing health", settings{FailHealth: true}, "GET", "/up", 503, "unhealthy (HELLO_FAIL_HEALTH)\n"},
		{"unknown path", s, "GET", "/nope", 404, "404 page not found\n"},
		{"wrong method", s, "POST", "/", 405, "Method Not Allowed\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log strings.Builder
			h := newHandler(tt.settings, &log)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			if rec.Code != tt.wantStatus || rec.Body.String() != tt.wantBody {
				t.Errorf("%s %s = %d %q, want %d %q", tt.method, tt.path, rec.Code, rec.Body.String(), tt.wantStatus, tt.wantBody)
			}
			if tt.path == "/up" && tt.wantStatus < 300 {
				if log.Len() != 0 {
					t.Errorf("a passing health check was logged: %q", log.String())
				}
				return
			}
			wantLog := fmt.Sprintf("%s %s %d ", tt.method, tt.path, tt.wantStatus)
			if !strings.HasPrefix(log.String(), wantLog) || strings.Count(log.String(), "\n") != 1 {
				t.Errorf("log = %q, want one line starting %q", log.String(), wantLog)
			}
		})
	}
}

// TestLoadSettings_Invalid ensures a bad value is refused with an error
// naming the variable and the value.
func TestLoadSettings_Invalid(t *testing.T) {
	tests := []struct{ name, value string }{
		{"PORT", "http"},
		{"PORT", "70000"},
		{"PORT", "-1"},
		{"HELLO_FAIL_HEALTH", "yes please"},
		{"HELLO_CRASH_AFTER", "3"},
		{"HELLO_START_DELAY", "soon"},
		{"HELLO_REQUEST_DELAY", "-1s"},
		{"HELLO_SHUTDOWN_TIMEOUT", "forever"},
	}
	for _, tt := range tests {
		t.Run(tt.name+"="+tt.value, func(t *testing.T) {
			_, err := loadSettings(envMap(map[string]string{tt.name: tt.value}))
			if err == nil {
				t.Fatalf("loadSettings accepted %s=%q", tt.name, tt.value)
			}
			if !strings.Contains(err.Error(), tt.name) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.value)) {
				t.Errorf("error %q does not name %s=%q", err, tt.name, tt.value)
			}
		})
	}
}

// TestLoadSettings_Defaults ensures the documented defaults apply.
func TestLoadSettings_Defaults(t *testing.T) {
	s, err := loadSettings(envMap(nil))
	if err != nil {
		t.Fatal(err)
	}
	if s.Port != "5000" || s.ShutdownTimeout != 8*time.Second || s.FailHealth || s.CrashAfter != 0 {
		t.Errorf("defaults = %+v", s)
	}
	s, err = loadSettings(envMap(map[string]string{"PORT": "8080", "HELLO_FAIL_HEALTH": "1", "HELLO_CRASH_AFTER": "3s"}))
	if err != nil {
		t.Fatal(err)
	}
	if s.Port != "8080" || !s.FailHealth || s.CrashAfter != 3*time.Second {
		t.Errorf("settings = %+v", s)
	}
}

// TestActivation ensures the socket is taken only when the variables are
// meant for this process, and malformed ones are refused.
func TestActivation(t *testing.T) {
	const pid = 4242
	tests := []struct {
		name    string
		env     map[string]string
		want    bool
		wantErr string
	}{
		{"absent", nil, false, ""},
		{"ours", map[string]string{"LISTEN_FDS": "1", "LISTEN_PID": "4242"}, true, ""},
		{"other process", map[string]string{"LISTEN_FDS": "1", "LISTEN_PID": "1"}, false, ""},
		{"no pid", map[string]string{"LISTEN_FDS": "1"}, false, ""},
		{"zero fds", map[string]string{"LISTEN_FDS": "0", "LISTEN_PID": "4242"}, false, ""},
		{"two fds", map[string]string{"LISTEN_FDS": "2", "LISTEN_PID": "4242"}, false, "LISTEN_FDS=2"},
		{"garbage fds", map[string]string{"LISTEN_FDS": "x", "LISTEN_PID": "4242"}, false, `"x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := activation(envMap(tt.env), pid)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("activation = %v, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("activation = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

// syncBuffer is an io.Writer the test can read while the server writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestServe_CancelShutsDown ensures run's server answers on its listener
// and returns nil once its context ends.
func TestServe_CancelShutsDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, ln, "test", settings{Release: "v1", ShutdownTimeout: 5 * time.Second}, &out)
	}()
	body := get(t, "http://"+ln.Addr().String()+"/up")
	if body != "ok\n" {
		t.Errorf("GET /up = %q", body)
	}
	get(t, "http://"+ln.Addr().String()+"/")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve after cancel: %v", err)
	}
	if strings.Contains(out.String(), "GET /up 200") {
		t.Errorf("a passing health check was logged:\n%s", out.String())
	}
	for _, want := range []string{"release v1", "listening on " + ln.Addr().String(), "GET / 200", "hello: stopped"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// get fetches url on a fresh connection and returns the body of a 200.
func get(t *testing.T, url string) string {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s = %s %q", url, resp.Status, b)
	}
	return string(b)
}

// helloProc is a running hello binary whose stdout lines arrive on lines.
type helloProc struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *syncBuffer
	read   sync.WaitGroup
}

// startHello runs the built binary through `sh -c 'LISTEN_PID=$$ exec
// ./hello'` (so LISTEN_PID is the pid hello ends up with) when
// listenPID is "$$", or with the given env otherwise.
func startHello(t *testing.T, env []string, listenPID string, files ...*os.File) *helloProc {
	t.Helper()
	bin := helloBinary(t)
	script := "exec ./hello"
	if listenPID != "" {
		script = "LISTEN_PID=" + listenPID + " exec ./hello"
	}
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = filepath.Dir(bin)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	cmd.ExtraFiles = files
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &helloProc{cmd: cmd, lines: make(chan string, 100), stderr: &syncBuffer{}}
	cmd.Stdout = pw
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		t.Fatal(err)
	}
	pw.Close()
	p.read.Add(1)
	go func() {
		defer p.read.Done()
		defer close(p.lines)
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.wait()
		}
	})
	return p
}

// line waits (bounded) for the next stdout line containing want and
// returns it.
func (p *helloProc) line(t *testing.T, want string) string {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("hello exited before printing %q; stderr: %s", want, p.stderr.String())
			}
			if strings.Contains(l, want) {
				return l
			}
		case <-timeout:
			t.Fatalf("no line containing %q within 20s", want)
		}
	}
}

// wait drains stdout and waits for the process; it returns the exit code.
func (p *helloProc) wait() int {
	for range p.lines {
	}
	p.read.Wait()
	p.cmd.Wait()
	return p.cmd.ProcessState.ExitCode()
}

// listenAddr returns the loopback address of the port in a startup line.
func listenAddr(t *testing.T, startup string) string {
	t.Helper()
	f := strings.Fields(startup[strings.Index(startup, "listening on "):])
	_, port, err := net.SplitHostPort(f[2])
	if err != nil {
		t.Fatalf("startup line %q: %v", startup, err)
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// passedSocket listens on a loopback port and returns the listener and a
// duplicate of its descriptor to pass to hello as fd 3; the test closes
// both when it ends.
func passedSocket(t *testing.T) (net.Listener, *os.File) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return ln, f
}

// TestBinary_SocketActivation ensures the binary serves on a socket passed
// as fd 3 with LISTEN_FDS=1 and its own LISTEN_PID, without binding PORT,
// and exits 0 on SIGTERM.
func TestBinary_SocketActivation(t *testing.T) {
	ln, f := passedSocket(t)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	env := []string{
		"LISTEN_FDS=1",
		"PORT=" + port, // binding it would fail: the test holds it
		"BERTH_APP=hello", "BERTH_RELEASE=v3", "BERTH_PROCESS=web.1", "GREETING=hi",
	}
	p := startHello(t, env, "$$", f)
	f.Close()
	startup := p.line(t, "listening on")
	if !strings.Contains(startup, "(socket activation)") || !strings.Contains(startup, "release v3 of hello (web.1)") {
		t.Errorf("startup line = %q", startup)
	}
	// Close the test's copy: only the child's fd 3 keeps the socket open.
	ln.Close()
	if got, want := get(t, "http://"+ln.Addr().String()+"/"), "hello from hello v3 (web.1) GREETING=hi\n"; got != want {
		t.Errorf("GET / = %q, want %q", got, want)
	}
	p.line(t, "GET / 200")
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d; stderr: %s", code, p.stderr.String())
	}
}

// TestBinary_ForeignListenPID ensures variables meant for another process
// are ignored: the binary binds PORT instead.
func TestBinary_ForeignListenPID(t *testing.T) {
	p := startHello(t, []string{"LISTEN_FDS=1", "PORT=0"}, "1")
	startup := p.line(t, "listening on")
	if !strings.HasSuffix(startup, "(bind)") {
		t.Fatalf("startup line = %q, want bind mode", startup)
	}
	if got := get(t, "http://"+listenAddr(t, startup)+"/up"); got != "ok\n" {
		t.Errorf("GET /up = %q", got)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("exit code = %d", code)
	}
}

// TestBinary_GracefulShutdown ensures a request in flight when SIGTERM
// arrives is answered before the process exits 0.
func TestBinary_GracefulShutdown(t *testing.T) {
	p := startHello(t, []string{"PORT=0", "HELLO_REQUEST_DELAY=300ms", "BERTH_RELEASE=v9"}, "")
	addr := listenAddr(t, p.line(t, "listening on"))

	wrote := make(chan struct{})
	type answer struct {
		body string
		err  error
	}
	answered := make(chan answer, 1)
	go func() {
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			WroteRequest: func(httptrace.WroteRequestInfo) { close(wrote) },
		})
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
		resp, err := client.Do(req)
		if err != nil {
			answered <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		answered <- answer{string(b), err}
	}()
	<-wrote
	// Only a request the server has read is in flight: one still in the
	// listen backlog is reset when the listener closes.
	p.line(t, "GET / held for 300ms")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	a := <-answered
	if a.err != nil || !strings.Contains(a.body, "v9") {
		t.Fatalf("in-flight request: %q, %v", a.body, a.err)
	}
	p.line(t, "shutting down")
	p.line(t, "hello: stopped")
	if code := p.wait(); code != 0 {
		t.Fatalf("exit code = %d; stderr: %s", code, p.stderr.String())
	}
}

// TestBinary_CrashAfter ensures HELLO_CRASH_AFTER makes the process exit 1.
func TestBinary_CrashAfter(t *testing.T) {
	p := startHello(t, []string{"PORT=0", "HELLO_CRASH_AFTER=100ms"}, "")
	p.line(t, "listening on")
	if code := p.wait(); code != 1 {
		t.Fatalf("exit code = %d, want 1; stderr: %s", code, p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), "HELLO_CRASH_AFTER") {
		t.Errorf("stderr = %q", p.stderr.String())
	}
}

// TestBinary_Tick ensures HELLO_TICK prints "tick 0", "tick 1", ... in
// order, each once.
func TestBinary_Tick(t *testing.T) {
	p := startHello(t, []string{"PORT=0", "HELLO_TICK=1ms"}, "")
	for i := range 20 {
		if l := p.line(t, "tick "); l != "tick "+strconv.Itoa(i) {
			t.Fatalf("line %q, want tick %d", l, i)
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("exit code = %d", code)
	}
}

// TestBinary_StartDelay ensures HELLO_START_DELAY announces the wait and
// the server still comes up after it.
func TestBinary_StartDelay(t *testing.T) {
	p := startHello(t, []string{"PORT=0", "HELLO_START_DELAY=50ms"}, "")
	p.line(t, "waiting 50ms before listening")
	addr := listenAddr(t, p.line(t, "listening on"))
	get(t, "http://"+addr+"/up")
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(); code != 0 {
		t.Fatalf("exit code = %d", code)
	}
}

// TestBinary_BadEnv ensures an invalid variable stops the binary with exit
// code 2 and a message naming it, without listening.
func TestBinary_BadEnv(t *testing.T) {
	p := startHello(t, []string{"PORT=0", "HELLO_START_DELAY=soon"}, "")
	if code := p.wait(); code != 2 {
		t.Fatalf("exit code = %d, want 2", code)
	}
	if !strings.Contains(p.stderr.String(), `invalid HELLO_START_DELAY "soon"`) {
		t.Errorf("stderr = %q", p.stderr.String())
	}
}

// TestBinary_HandoverDropsNothing ensures what the agent's start-then-stop
// switch relies on: a second hello started on the same passed socket
// serves alongside the first, and the first, sent SIGTERM, finishes what it
// accepted and leaves the rest queued for the second, so a client sending
// on new connections throughout sees no failure.
func TestBinary_HandoverDropsNothing(t *testing.T) {
	ln, f := passedSocket(t)
	url := "http://" + ln.Addr().String() + "/"

	old := startHello(t, []string{"LISTEN_FDS=1", "BERTH_RELEASE=v1"}, "$$", f)
	old.line(t, "listening on")

	var (
		answers  = map[string]*atomic.Int64{"v1": {}, "v2": {}}
		failures atomic.Int64
		firstErr atomic.Value
		progress = make(chan struct{}, 1)
		stop     = make(chan struct{})
		workers  sync.WaitGroup
	)
	for range 4 {
		workers.Add(1)
		go func() {
			defer workers.Done()
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get(url)
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %v", resp.StatusCode, err))
					continue
				}
				for rel, n := range answers {
					if strings.Contains(string(b), " "+rel+" ") {
						n.Add(1)
					}
				}
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		}()
	}
	stopWorkers := sync.OnceFunc(func() {
		close(stop)
		workers.Wait()
	})
	defer stopWorkers()
	// waitFor waits (bounded) until cond holds, re-checking after each
	// answer.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for !cond() {
			select {
			case <-progress:
			case <-timeout:
				t.Fatalf("timed out waiting for %s (v1 %d, v2 %d, failures %d)", what, answers["v1"].Load(), answers["v2"].Load(), failures.Load())
			}
		}
	}
	waitFor("50 answers from v1", func() bool { return answers["v1"].Load() >= 50 })

	next := startHello(t, []string{"LISTEN_FDS=1", "BERTH_RELEASE=v2"}, "$$", f)
	next.line(t, "listening on")
	if err := old.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := old.wait(); code != 0 {
		t.Fatalf("old instance exit code %d; stderr: %s", code, old.stderr.String())
	}
	after := answers["v2"].Load()
	waitFor("50 answers from v2 after v1 stopped", func() bool { return answers["v2"].Load() >= after+50 })
	stopWorkers() // before v2 stops: nobody would accept their requests
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d requests failed during the handover; first: %v", n, firstErr.Load())
	}
	next.cmd.Process.Signal(syscall.SIGTERM)
	if code := next.wait(); code != 0 {
		t.Fatalf("new instance exit code %d", code)
	}
}
