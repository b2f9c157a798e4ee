// Command hello is berth's example app: a tiny HTTP server that shows the
// release it belongs to, answers a health check on /up, accepts its
// listening socket from the agent with the systemd socket-activation
// protocol, and shuts down gracefully on SIGTERM.
//
// Environment:
//
//	LISTEN_FDS, LISTEN_PID  socket activation: with LISTEN_FDS=1 and
//	                        LISTEN_PID equal to this process's pid, fd 3 is
//	                        the listening socket; both are unset after use
//	PORT                    otherwise, the port to bind (default 5000)
//	BERTH_APP, BERTH_RELEASE, BERTH_PROCESS, GREETING
//	                        shown by GET /
//
// Behaviours for tests (durations in Go syntax, e.g. "3s"):
//
//	HELLO_FAIL_HEALTH=1        GET /up answers 503
//	HELLO_CRASH_AFTER=3s       exit 1 after that long
//	HELLO_START_DELAY=2s       wait that long before listening
//	HELLO_REQUEST_DELAY=500ms  hold every GET / that long before answering
//	HELLO_SHUTDOWN_TIMEOUT=8s  how long SIGTERM waits for in-flight requests
//	HELLO_TICK=10ms            print "tick N" (N = 0, 1, 2, ...) that often, to
//	                           check that no line is lost or doubled
//	HELLO_EXIT_ON_TERM=1       die at once on SIGTERM (its default action), with
//	                           no draining at all, as a plain Python
//	                           http.server or a Node app does
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// listenFDsStart is the first file descriptor passed by socket activation.
const listenFDsStart = 3

func main() {
	stopSignals := []os.Signal{syscall.SIGTERM, syscall.SIGINT}
	switch v := os.Getenv("HELLO_EXIT_ON_TERM"); v {
	case "", "0":
	case "1":
		// SIGTERM keeps its default action: the process dies at once.
		stopSignals = stopSignals[1:]
	default:
		fmt.Fprintf(os.Stderr, "hello: invalid HELLO_EXIT_ON_TERM %q: want 1 or 0\n", v)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), stopSignals...)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "hello: %v\n", err)
		var crash crashError
		if errors.As(err, &crash) {
			os.Exit(1)
		}
		os.Exit(2)
	}
}

// settings is what hello reads from its environment.
type settings struct {
	App, Release, Process, Greeting string
	Port                            string
	FailHealth                      bool
	CrashAfter                      time.Duration // 0: never
	StartDelay                      time.Duration
	RequestDelay                    time.Duration
	ShutdownTimeout                 time.Duration
	Tick                            time.Duration // 0: no ticks
}

// crashError is returned by run when HELLO_CRASH_AFTER fired; main exits 1.
type crashError struct{ after time.Duration }

func (e crashError) Error() string {
	return fmt.Sprintf("crashing on purpose after %s (HELLO_CRASH_AFTER)", e.after)
}

// loadSettings reads the environment through getenv. An invalid value is an
// error naming the variable and the value.
func loadSettings(getenv func(string) string) (settings, error) {
	s := settings{
		App:             getenv("BERTH_APP"),
		Release:         getenv("BERTH_RELEASE"),
		Process:         getenv("BERTH_PROCESS"),
		Greeting:        getenv("GREETING"),
		Port:            getenv("PORT"),
		ShutdownTimeout: 8 * time.Second,
	}
	if s.Port == "" {
		s.Port = "5000"
	}
	if n, err := strconv.Atoi(s.Port); err != nil || n < 0 || n > 65535 {
		return settings{}, fmt.Errorf("invalid PORT %q: want a number from 0 to 65535", s.Port)
	}
	switch v := getenv("HELLO_FAIL_HEALTH"); v {
	case "", "0", "false":
	case "1", "true":
		s.FailHealth = true
	default:
		return settings{}, fmt.Errorf("invalid HELLO_FAIL_HEALTH %q: want 1 or 0", v)
	}
	durations := []struct {
		name string
		dst  *time.Duration
	}{
		{"HELLO_CRASH_AFTER", &s.CrashAfter},
		{"HELLO_START_DELAY", &s.StartDelay},
		{"HELLO_REQUEST_DELAY", &s.RequestDelay},
		{"HELLO_SHUTDOWN_TIMEOUT", &s.ShutdownTimeout},
		{"HELLO_TICK", &s.Tick},
	}
	for _, d := range durations {
		v := getenv(d.name)
		if v == "" {
			continue
		}
		parsed, err := time.ParseDuration(v)
		if err != nil || parsed < 0 {
			return settings{}, fmt.Errorf("invalid %s %q: want a duration such as 3s", d.name, v)
		}
		*d.dst = parsed
	}
	return s, nil
}

// activation decides whether the socket-activation variables pass this
// process a socket: it returns true for LISTEN_FDS=1 with LISTEN_PID equal
// to pid, false when the variables are absent or meant for another process,
// and an error when they are meant for this process but malformed.
func activation(getenv func(string) string, pid int) (bool, error) {
	fds, pidVar := getenv("LISTEN_FDS"), getenv("LISTEN_PID")
	if fds == "" || pidVar == "" {
		return false, nil
	}
	if p, err := strconv.Atoi(pidVar); err != nil || p != pid {
		return false, nil // for another process (e.g. a parent shell)
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 {
		return false, fmt.Errorf("invalid LISTEN_FDS %q: want a count of sockets", fds)
	}
	switch n {
	case 0:
		return false, nil
	case 1:
		return true, nil
	default:
		return false, fmt.Errorf("LISTEN_FDS=%d: hello takes exactly one socket", n)
	}
}

// listen returns the socket passed by socket activation, or binds :PORT. The
// second result names the mode for the startup line.
func listen(s settings) (net.Listener, string, error) {
	activated, err := activation(os.Getenv, os.Getpid())
	// The variables must not leak into anything this process starts.
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDNAMES")
	if err != nil {
		return nil, "", err
	}
	if activated {
		syscall.CloseOnExec(listenFDsStart)
		f := os.NewFile(listenFDsStart, "LISTEN_FD_3")
		ln, err := net.FileListener(f)
		f.Close() // FileListener holds its own duplicate
		if err != nil {
			return nil, "", fmt.Errorf("use socket-activation fd %d: %w", listenFDsStart, err)
		}
		return ln, "socket activation", nil
	}
	ln, err := net.Listen("tcp", ":"+s.Port)
	if err != nil {
		return nil, "", fmt.Errorf("bind PORT %s: %w", s.Port, err)
	}
	return ln, "bind", nil
}

// run serves until ctx ends (then shuts down gracefully and returns nil) or
// HELLO_CRASH_AFTER fires (crashError).
func run(ctx context.Context, getenv func(string) string, out io.Writer) error {
	s, err := loadSettings(getenv)
	if err != nil {
		return err
	}
	if s.StartDelay > 0 {
		fmt.Fprintf(out, "hello: waiting %s before listening (HELLO_START_DELAY)\n", s.StartDelay)
		t := time.NewTimer(s.StartDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	ln, mode, err := listen(s)
	if err != nil {
		return err
	}
	return serve(ctx, ln, mode, s, out)
}

// serve runs the HTTP server on ln until ctx ends or the crash timer fires.
//
// Shutdown happens in two steps because http.Server.Shutdown alone drops a
// connection it accepted but whose request it had not read yet: that
// client gets EOF (golang/go#75591). During a socket-activation handover
// that would fail requests the new instance could have served. So hello
// first closes its listener (with a shared socket, what it has not
// accepted stays queued for the new instance), waits until every accepted
// connection has read its first request, and only then calls Shutdown,
// which lets the requests in flight finish.
func serve(ctx context.Context, ln net.Listener, mode string, s settings, out io.Writer) error {
	logw := &lockedWriter{w: out}
	conns := newConnTracker()
	srv := &http.Server{
		Handler:           newHandler(s, logw),
		ReadHeaderTimeout: 10 * time.Second,
		ConnState:         conns.track,
	}
	fmt.Fprintf(logw, "hello: release %s of %s (%s) listening on %s (%s)\n",
		orDash(s.Release), orDash(s.App), orDash(s.Process), ln.Addr(), mode)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if s.Tick > 0 {
		stop := make(chan struct{})
		ticked := make(chan struct{})
		go tick(s.Tick, logw, stop, ticked)
		defer func() {
			close(stop)
			<-ticked
		}()
	}

	var crash <-chan time.Time
	if s.CrashAfter > 0 {
		t := time.NewTimer(s.CrashAfter)
		defer t.Stop()
		crash = t.C
	}
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-crash:
		srv.Close()
		<-served
		return crashError{after: s.CrashAfter}
	case <-ctx.Done():
	}
	fmt.Fprintf(logw, "hello: shutting down, waiting up to %s for requests in flight\n", s.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), s.ShutdownTimeout)
	defer cancel()
	ln.Close()
	<-served // Serve has returned: every accepted connection is tracked
	if err := conns.waitRead(sctx); err != nil {
		srv.Close()
		return fmt.Errorf("graceful shutdown: connections that sent no request: %w", err)
	}
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		return fmt.Errorf("graceful shutdown: %w", err)
	}
	fmt.Fprintln(logw, "hello: stopped")
	return nil
}

// tick prints "tick N" every d until stop is closed, then closes done.
func tick(d time.Duration, w io.Writer, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(d)
	defer t.Stop()
	for n := 0; ; n++ {
		fmt.Fprintf(w, "tick %d\n", n)
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// newHandler returns hello's routes; it logs one line per request to log.
func newHandler(s settings, log io.Writer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		if s.RequestDelay > 0 {
			fmt.Fprintf(log, "%s %s held for %s (HELLO_REQUEST_DELAY)\n", r.Method, r.URL.Path, s.RequestDelay)
			t := time.NewTimer(s.RequestDelay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "hello from %s %s (%s) GREETING=%s\n", s.App, s.Release, s.Process, s.Greeting)
	})
	mux.HandleFunc("GET /up", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if s.FailHealth {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "unhealthy (HELLO_FAIL_HEALTH)")
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return logRequests(mux, log)
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// logRequests writes "METHOD PATH STATUS DURATION" for every request.
func logRequests(next http.Handler, log io.Writer) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		if r.URL.Path == "/up" && rec.status < 300 {
			return // a passing health check every second would drown the log
		}
		fmt.Fprintf(log, "%s %s %d %s\n", r.Method, r.URL.Path, rec.status, time.Since(start).Round(time.Microsecond))
	})
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
