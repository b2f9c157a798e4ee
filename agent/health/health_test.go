package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// runExec is the tests' Target.RunExec: sh -c in its own process group,
// killed as a group when ctx ends.
func runExec(ctx context.Context, command string, env []string, dir string) (int, []byte, error) {
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	cmd.Env = env
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return -1, out, ctx.Err()
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return exitErr.ExitCode(), out, nil
	}
	return cmd.ProcessState.ExitCode(), out, err
}

// server is an HTTP test server whose answers the test steers.
type server struct {
	*httptest.Server
	status atomic.Int32  // status code of /up
	okFrom atomic.Int64  // from this hit on (1-based), /up answers 200
	hits   atomic.Int64  // requests to /up
	hitCh  chan struct{} // one value per hit (non-blocking)
	conns  atomic.Int64  // connections accepted
	closed atomic.Int64  // requests that asked for Connection: close
}

func newServer(t *testing.T, status int) *server {
	t.Helper()
	return newServerTB(t, status)
}

func newServerB(b *testing.B) *server { return newServerTB(b, 200) }

func newServerTB(t testing.TB, status int) *server {
	t.Helper()
	s := &server{hitCh: make(chan struct{}, 10000)}
	s.status.Store(int32(status))
	mux := http.NewServeMux()
	mux.HandleFunc("/up", func(w http.ResponseWriter, r *http.Request) {
		n := s.hits.Add(1)
		if r.Close {
			s.closed.Add(1)
		}
		select {
		case s.hitCh <- struct{}{}:
		default:
		}
		code := int(s.status.Load())
		if from := s.okFrom.Load(); from > 0 && n >= from {
			code = 200
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "answer %d to hit %d", code, n)
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/broken", http.StatusFound)
	})
	mux.HandleFunc("/broken", func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("redirect to /broken was followed")
		w.WriteHeader(500)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(500)
		w.Write([]byte(strings.Repeat("é", 10000)))
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // answers only when the client gives up
	})
	s.Server = httptest.NewUnstartedServer(mux)
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

func (s *server) port(t testing.TB) int {
	t.Helper()
	_, p, err := net.SplitHostPort(s.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// waitHits waits (bounded) until the server has seen n requests to /up.
func (s *server) waitHits(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for s.hits.Load() < int64(n) {
		select {
		case <-s.hitCh:
		case <-timeout:
			t.Fatalf("server saw %d hits, want %d", s.hits.Load(), n)
		}
	}
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// TestCheck_Validate ensures every unusable check is refused with an error
// naming the bad value, and good ones pass.
func TestCheck_Validate(t *testing.T) {
	tests := []struct {
		name  string
		check Check
		want  string // "" for valid
	}{
		{"http", Check{HTTP: "/up"}, ""},
		{"http with query", Check{HTTP: "/up?deep=1"}, ""},
		{"tcp", Check{TCP: true, Interval: time.Second, Retries: 1}, ""},
		{"exec", Check{Exec: "curl -f localhost"}, ""},
		{"none", Check{}, "got 0"},
		{"two kinds", Check{HTTP: "/up", TCP: true}, "got 2"},
		{"three kinds", Check{HTTP: "/up", TCP: true, Exec: "true"}, "got 3"},
		{"relative path", Check{HTTP: "up"}, `"up" must start with /`},
		{"path to another host", Check{HTTP: "@evil.example/"}, `"@evil.example/" must start with /`},
		{"space in path", Check{HTTP: "/up now"}, `"/up now" contains a space`},
		{"newline in path", Check{HTTP: "/up\r\nX: y"}, "contains a space or control"},
		{"fragment", Check{HTTP: "/up#x"}, "fragment"},
		{"blank exec", Check{Exec: "   "}, "blank"},
		{"negative interval", Check{TCP: true, Interval: -time.Second}, "interval -1s"},
		{"negative timeout", Check{TCP: true, Timeout: -time.Millisecond}, "timeout -1ms"},
		{"negative start period", Check{TCP: true, StartPeriod: -time.Minute}, "start_period -1m0s"},
		{"negative retries", Check{TCP: true, Retries: -2}, "retries -2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.check.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidCheck) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want ErrInvalidCheck containing %q", err, tt.want)
			}
		})
	}
}

// TestCheck_Defaults ensures zero fields get Docker-like defaults and set
// ones are kept.
func TestCheck_Defaults(t *testing.T) {
	c := Check{HTTP: "/up"}.WithDefaults()
	if c.Interval != 2*time.Second || c.Timeout != time.Second || c.Retries != 3 || c.StartPeriod != 0 {
		t.Errorf("defaults = %+v", c)
	}
	c = Check{TCP: true, Interval: 5 * time.Millisecond, Timeout: 7 * time.Millisecond, Retries: 1}.WithDefaults()
	if c.Interval != 5*time.Millisecond || c.Timeout != 7*time.Millisecond || c.Retries != 1 {
		t.Errorf("kept = %+v", c)
	}
	if got := (Check{Exec: "true"}).String(); got != "exec true" {
		t.Errorf("String = %q", got)
	}
}

// TestStatus_String ensures the names `berth ps` shows.
func TestStatus_String(t *testing.T) {
	for s, want := range map[Status]string{Starting: "starting", Healthy: "healthy", Unhealthy: "unhealthy", Unreached: "unreached", Status(9): "Status(9)"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q, want %q", int(s), s.String(), want)
		}
	}
}

// TestProbe_HTTP ensures 2xx/3xx are healthy, others not, redirects are
// not followed, and the output holds the status line and the body start.
func TestProbe_HTTP(t *testing.T) {
	s := newServer(t, 200)
	target := Target{Port: s.port(t)}
	tests := []struct {
		name   string
		path   string
		status int
		ok     bool
		output string
	}{
		{"200", "/up", 200, true, "HTTP/1.1 200 OK\nanswer 200 to hit"},
		{"204", "/up", 204, true, "HTTP/1.1 204 No Content\n"},
		{"302 not followed", "/redirect", 0, true, "HTTP/1.1 302 Found\n"},
		{"404", "/nope", 0, false, "HTTP/1.1 404 Not Found\n404 page not found"},
		{"503", "/up", 503, false, "HTTP/1.1 503 Service Unavailable\nanswer 503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.status != 0 {
				s.status.Store(int32(tt.status))
			}
			r := Probe(context.Background(), Check{HTTP: tt.path}, target)
			if r.OK != tt.ok || !strings.HasPrefix(r.Output, tt.output) {
				t.Errorf("Probe %s = %v %q, want %v %q...", tt.path, r.OK, r.Output, tt.ok, tt.output)
			}
			if r.Time.IsZero() || r.Duration <= 0 {
				t.Errorf("Time %v, Duration %v not set", r.Time, r.Duration)
			}
		})
	}
}

// TestProbe_HTTPOutputBounded ensures a huge body is cut to MaxOutput bytes
// of valid UTF-8.
func TestProbe_HTTPOutputBounded(t *testing.T) {
	s := newServer(t, 200)
	r := Probe(context.Background(), Check{HTTP: "/big"}, Target{Port: s.port(t)})
	if r.OK || len(r.Output) > MaxOutput || len(r.Output) < MaxOutput-4 || !strings.HasPrefix(r.Output, "HTTP/1.1 500") {
		t.Fatalf("Probe /big = %v, %d bytes: %.40q", r.OK, len(r.Output), r.Output)
	}
	if !strings.HasSuffix(r.Output, "é") {
		t.Errorf("output cut inside a rune: %q", r.Output[len(r.Output)-4:])
	}
}

// TestProbe_HTTPNoKeepAlive ensures every probe opens its own connection
// and asks the server to close it, so probes never hold idle connections.
func TestProbe_HTTPNoKeepAlive(t *testing.T) {
	s := newServer(t, 200)
	for range 3 {
		if r := Probe(context.Background(), Check{HTTP: "/up"}, Target{Port: s.port(t)}); !r.OK {
			t.Fatalf("probe failed: %q", r.Output)
		}
	}
	if s.conns.Load() != 3 || s.closed.Load() != 3 {
		t.Errorf("connections %d, Connection: close %d; want 3 and 3", s.conns.Load(), s.closed.Load())
	}
}

// TestProbe_HTTPIgnoresProxy ensures HTTP_PROXY in the agent's environment
// does not divert probes of a loopback port.
func TestProbe_HTTPIgnoresProxy(t *testing.T) {
	s := newServer(t, 200)
	t.Setenv("HTTP_PROXY", "http://127.0.0.1:"+strconv.Itoa(closedPort(t)))
	if r := Probe(context.Background(), Check{HTTP: "/up"}, Target{Port: s.port(t)}); !r.OK {
		t.Fatalf("probe through proxy env failed: %q", r.Output)
	}
}

// TestProbe_Timeout ensures a probe that does not answer within Timeout
// fails and says it timed out, for each kind of check.
func TestProbe_Timeout(t *testing.T) {
	s := newServer(t, 200)
	for _, c := range []Check{
		{HTTP: "/slow", Timeout: 50 * time.Millisecond},
		{Exec: "sleep 30", Timeout: 50 * time.Millisecond},
	} {
		t.Run(c.Kind(), func(t *testing.T) {
			r := Probe(context.Background(), c, Target{Port: s.port(t), RunExec: runExec})
			if r.OK || !strings.HasPrefix(r.Output, "timed out after 50ms") {
				t.Fatalf("Probe = %v %q, want a timeout", r.OK, r.Output)
			}
		})
	}
}

// TestProbe_Refused ensures a port nobody listens on fails HTTP and TCP
// checks with the dial error.
func TestProbe_Refused(t *testing.T) {
	port := closedPort(t)
	for _, c := range []Check{{HTTP: "/up"}, {TCP: true}} {
		r := Probe(context.Background(), c, Target{Port: port})
		if r.OK || !strings.Contains(r.Output, "connection refused") {
			t.Errorf("%s: Probe = %v %q, want connection refused", c, r.OK, r.Output)
		}
	}
}

// TestProbe_TCP ensures a listening port is healthy.
func TestProbe_TCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	r := Probe(context.Background(), Check{TCP: true}, Target{Port: port})
	if !r.OK || r.Output != "connected to 127.0.0.1:"+strconv.Itoa(port) {
		t.Fatalf("Probe = %v %q", r.OK, r.Output)
	}
}

// TestProbe_Exec ensures commands run in the target's env and dir, exit 0
// is healthy, and the output (bounded) carries what failed.
func TestProbe_Exec(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "marker"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	target := Target{Env: []string{"PATH=" + os.Getenv("PATH"), "FOO=bar"}, Dir: dir, RunExec: runExec}
	tests := []struct {
		command string
		ok      bool
		output  string
	}{
		{"echo fine", true, "fine\n"},
		{`test "$FOO" = bar`, true, ""},
		{"test -f marker", true, ""},
		{"echo broken >&2; exit 3", false, "broken\nexit status 3"},
		{"exit 1", false, "exit status 1"},
		{"printf partial; exit 2", false, "partial\nexit status 2"},
	}
	for _, tt := range tests {
		t.Run(tt.command, func(t *testing.T) {
			r := Probe(context.Background(), Check{Exec: tt.command, Timeout: 10 * time.Second}, target)
			if r.OK != tt.ok || r.Output != tt.output {
				t.Errorf("Probe = %v %q, want %v %q", r.OK, r.Output, tt.ok, tt.output)
			}
		})
	}
	r := Probe(context.Background(), Check{Exec: "head -c 100000 /dev/zero | tr '\\0' x; exit 1", Timeout: 10 * time.Second}, target)
	if r.OK || len(r.Output) != MaxOutput {
		t.Errorf("big output: %v, %d bytes, want %d", r.OK, len(r.Output), MaxOutput)
	}
}

// TestProbe_RunExecError ensures a runner that cannot start the command
// makes a failed result carrying its error.
func TestProbe_RunExecError(t *testing.T) {
	failing := func(context.Context, string, []string, string) (int, []byte, error) {
		return -1, nil, errors.New("supervisor is stopping")
	}
	r := Probe(context.Background(), Check{Exec: "true"}, Target{RunExec: failing})
	if r.OK || r.Output != "supervisor is stopping" {
		t.Fatalf("Probe = %v %q", r.OK, r.Output)
	}
}

// TestProbe_InvalidTarget ensures an invalid check or target fails the
// probe with the reason instead of probing something else.
func TestProbe_InvalidTarget(t *testing.T) {
	tests := []struct {
		check  Check
		target Target
		want   string
	}{
		{Check{HTTP: "/up"}, Target{}, "http check needs a port, got 0"},
		{Check{TCP: true}, Target{Port: 70000}, "tcp check needs a port, got 70000"},
		{Check{Exec: "true"}, Target{Port: 80}, `exec check "true" needs Target.RunExec`},
		{Check{HTTP: "up"}, Target{Port: 80}, `"up" must start with /`},
	}
	for _, tt := range tests {
		r := Probe(context.Background(), tt.check, tt.target)
		if r.OK || !strings.Contains(r.Output, tt.want) {
			t.Errorf("Probe(%s) = %v %q, want %q", tt.check, r.OK, r.Output, tt.want)
		}
	}
}

// TestTracker ensures Docker's HEALTHCHECK rules: failures in the start
// period do not count while starting, Retries consecutive failures make
// unhealthy, one success makes healthy and resets the streak; and that
// unreached results are neither: counted apart (not in the start period),
// Retries of them in a row make unreached, and one that reached starts
// their count over without touching the failures'.
func TestTracker(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	at := func(sec int, ok bool) Result { return Result{Time: t0.Add(time.Duration(sec) * time.Second), OK: ok} }
	miss := func(sec int) Result { return Result{Time: t0.Add(time.Duration(sec) * time.Second), Unreached: true} }
	tests := []struct {
		name    string
		check   Check
		results []Result
		want    []Status // status after each result
	}{
		{"success at once", Check{Retries: 3}, []Result{at(0, true)}, []Status{Healthy}},
		{"retries without start period", Check{Retries: 2}, []Result{at(0, false), at(1, false)}, []Status{Starting, Unhealthy}},
		{"start period ignores failures", Check{Retries: 1, StartPeriod: 10 * time.Second},
			[]Result{at(0, false), at(5, false), at(9, false), at(10, false)},
			[]Status{Starting, Starting, Starting, Unhealthy}},
		{"success ends start period", Check{Retries: 2, StartPeriod: 10 * time.Second},
			[]Result{at(1, true), at(2, false), at(3, false)},
			[]Status{Healthy, Healthy, Unhealthy}},
		{"success resets the streak", Check{Retries: 3},
			[]Result{at(0, true), at(1, false), at(2, false), at(3, true), at(4, false), at(5, false), at(6, false)},
			[]Status{Healthy, Healthy, Healthy, Healthy, Healthy, Healthy, Unhealthy}},
		{"recovers", Check{Retries: 1}, []Result{at(0, false), at(1, true)}, []Status{Unhealthy, Healthy}},
		{"default retries", Check{}, []Result{at(0, false), at(1, false), at(2, false)}, []Status{Starting, Starting, Unhealthy}},
		{"unreached in a row", Check{Retries: 2}, []Result{miss(0), miss(1)}, []Status{Starting, Unreached}},
		{"start period ignores unreached", Check{Retries: 1, StartPeriod: 10 * time.Second},
			[]Result{miss(0), miss(9), miss(10)}, []Status{Starting, Starting, Unreached}},
		{"a reached failure starts the misses over", Check{Retries: 2},
			[]Result{miss(0), at(1, false), miss(2), at(3, false)}, []Status{Starting, Starting, Starting, Unhealthy}},
		{"misses do not reset failures", Check{Retries: 3},
			[]Result{at(0, false), miss(1), at(2, false), miss(3), at(4, false)},
			[]Status{Starting, Starting, Starting, Starting, Unhealthy}},
		{"unreached, then healthy", Check{Retries: 1}, []Result{miss(0), at(1, true), miss(2)}, []Status{Unreached, Healthy, Unreached}},
		{"an unreached OK is no success", Check{Retries: 1}, []Result{{Time: t0, OK: true, Unreached: true}}, []Status{Unreached}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := NewTracker(tt.check, t0)
			for i, r := range tt.results {
				before := tr.Status()
				st, changed := tr.Observe(r)
				if st != tt.want[i] || st != tr.Status() || changed != (before != st) {
					t.Fatalf("after result %d: %s (changed %v), want %s", i, st, changed, tt.want[i])
				}
			}
		})
	}
}

// notReachedConn is a connection whose Close says the probe did not reach
// the instance, as the agent's attributing dialer does for a connection
// another process accepted.
type notReachedConn struct {
	net.Conn
	closed chan struct{}
}

func (c *notReachedConn) Close() error {
	select {
	case <-c.closed:
	default:
		close(c.closed)
	}
	c.Conn.Close()
	return fmt.Errorf("%w: answered by another process", ErrNotReached)
}

// TestProbe_Dial ensures a probe with Target.Dial connects through it,
// keeps the connection alive (the server's end stays open until the probe
// closes it, after the answer was read), counts a probe whose connection
// says ErrNotReached on Close or on Dial as unreached (not OK, the
// answer kept as output), and one whose Close says nothing as a plain
// result; a tcp check dials through it too.
func TestProbe_Dial(t *testing.T) {
	s := newServer(t, 200)
	var dials atomic.Int64
	plain := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	r := Probe(context.Background(), Check{HTTP: "/up"}, Target{Port: s.port(t), Dial: plain})
	if !r.OK || r.Unreached || !strings.Contains(r.Output, "200 OK") || dials.Load() != 1 {
		t.Fatalf("probe through a plain dialer = %+v (%d dials)", r, dials.Load())
	}
	if s.closed.Load() != 0 {
		t.Errorf("a probe with a dialer asked for Connection: close")
	}

	var conn *notReachedConn
	other := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		conn = &notReachedConn{Conn: c, closed: make(chan struct{})}
		return conn, nil
	}
	s.status.Store(503)
	r = Probe(context.Background(), Check{HTTP: "/up"}, Target{Port: s.port(t), Dial: other})
	if r.OK || !r.Unreached || !strings.Contains(r.Output, "503") {
		t.Fatalf("probe answered by another process = %+v, want unreached with the answer", r)
	}
	select {
	case <-conn.closed:
	default:
		t.Error("the probe did not close its connection")
	}
	s.status.Store(200)
	if r = Probe(context.Background(), Check{HTTP: "/up"}, Target{Port: s.port(t), Dial: other}); r.OK || !r.Unreached {
		t.Fatalf("a 200 answered by another process = %+v, want unreached, not OK", r)
	}

	refused := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return nil, fmt.Errorf("%w: refused", ErrNotReached)
	}
	for _, c := range []Check{{HTTP: "/up"}, {TCP: true}} {
		if r = Probe(context.Background(), c, Target{Port: s.port(t), Dial: refused}); r.OK || !r.Unreached || !strings.Contains(r.Output, "refused") {
			t.Errorf("%s probe whose dial was not reached = %+v", c, r)
		}
	}
	if r = Probe(context.Background(), Check{TCP: true}, Target{Port: s.port(t), Dial: other}); r.OK || !r.Unreached {
		t.Errorf("tcp probe answered by another process = %+v", r)
	}
	before := dials.Load()
	if r = Probe(context.Background(), Check{TCP: true}, Target{Port: s.port(t), Dial: plain}); !r.OK || r.Unreached || dials.Load() != before+1 {
		t.Errorf("tcp probe through a plain dialer = %+v", r)
	}
}

type change struct {
	status Status
	result Result
}

// TestMonitor_Transitions ensures the monitor reports healthy, then
// unhealthy after Retries failures, then healthy again, and that Last
// follows.
func TestMonitor_Transitions(t *testing.T) {
	s := newServer(t, 200)
	changes := make(chan change, 10)
	m := NewMonitor(Check{HTTP: "/up", Interval: time.Millisecond, Retries: 2}, Target{Port: s.port(t)},
		func(st Status, r Result) { changes <- change{st, r} })
	if st, r := m.Last(); st != Starting || !r.Time.IsZero() {
		t.Fatalf("before Run: %s %+v", st, r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()

	next := func(want Status, output string) {
		t.Helper()
		select {
		case c := <-changes:
			if c.status != want || !strings.Contains(c.result.Output, output) {
				t.Fatalf("change = %s %q, want %s %q", c.status, c.result.Output, want, output)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no change to %s", want)
		}
	}
	next(Healthy, "200 OK")
	s.status.Store(503)
	next(Unhealthy, "503 Service Unavailable")
	if st, r := m.Last(); st != Unhealthy || r.OK {
		t.Errorf("Last = %s %v", st, r.OK)
	}
	s.status.Store(200)
	next(Healthy, "200 OK")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel = %v", err)
	}
	select {
	case c := <-changes:
		t.Errorf("unexpected change after cancel: %s", c.status)
	default:
	}
}

// TestMonitor_StartPeriod ensures failures inside the start period change
// nothing: the status stays starting and onChange is not called.
func TestMonitor_StartPeriod(t *testing.T) {
	s := newServer(t, 503)
	var calls atomic.Int32
	m := NewMonitor(Check{HTTP: "/up", Interval: time.Millisecond, Retries: 1, StartPeriod: time.Hour}, Target{Port: s.port(t)},
		func(Status, Result) { calls.Add(1) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	s.waitHits(t, 10)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st, r := m.Last()
	if st != Starting || r.OK || !strings.Contains(r.Output, "503") || calls.Load() != 0 {
		t.Fatalf("after failures in the start period: %s %q, %d calls", st, r.Output, calls.Load())
	}
}

// TestMonitor_RunOnce ensures a second concurrent Run is refused and an
// invalid check stops Run with ErrInvalidCheck.
func TestMonitor_RunOnce(t *testing.T) {
	s := newServer(t, 200)
	changes := make(chan Status, 1)
	m := NewMonitor(Check{HTTP: "/up", Interval: time.Millisecond}, Target{Port: s.port(t)}, func(st Status, _ Result) { changes <- st })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	<-changes // running
	if err := m.Run(ctx); !errors.Is(err, ErrMonitorRunning) {
		t.Errorf("second Run = %v, want ErrMonitorRunning", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	bad := NewMonitor(Check{HTTP: "/up"}, Target{}, nil)
	if err := bad.Run(context.Background()); !errors.Is(err, ErrInvalidCheck) || !strings.Contains(err.Error(), "needs a port") {
		t.Errorf("Run with no port = %v, want ErrInvalidCheck", err)
	}
}
