package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Result is the outcome of one probe.
type Result struct {
	Time     time.Time // when the probe started
	OK       bool
	Output   string // at most MaxOutput bytes: status line and body start, command output, or the error
	Duration time.Duration
	// Unreached is set when Target.Dial said that the probe did not reach
	// the instance (ErrNotReached): OK is false, Output is what answered
	// (another process, say), and the result says nothing about the
	// instance's health. A Tracker counts it as neither a success nor a
	// failure.
	Unreached bool
}

// Probe runs one check against t, bounded by the check's timeout (and
// ctx). An invalid check or target is a failed result whose Output says
// why.
func Probe(ctx context.Context, c Check, t Target) Result {
	c = c.WithDefaults()
	start := time.Now()
	r := Result{Time: start}
	if err := validate(c, t); err != nil {
		r.Output = err.Error()
		return r
	}
	pctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	switch c.Kind() {
	case "http":
		r.OK, r.Output, r.Unreached = probeHTTP(pctx, c, t)
	case "tcp":
		r.OK, r.Output, r.Unreached = probeTCP(pctx, t)
	case "exec":
		r.OK, r.Output = probeExec(pctx, c, t)
	}
	r.Duration = time.Since(start)
	if r.Unreached {
		r.OK = false
	}
	if !r.OK && errors.Is(pctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		r.Output = bound(fmt.Sprintf("timed out after %s: %s", c.Timeout, r.Output))
	}
	return r
}

func address(port int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// probeHTTP sends one GET on a fresh connection and does not follow
// redirects: a proxy in front of the app sees the same answer. With
// Target.Dial the connection is kept alive until the answer was read and
// then closed; unreached says Dial or the close reported ErrNotReached.
func probeHTTP(ctx context.Context, c Check, t Target) (ok bool, output string, unreached bool) {
	url := "http://" + address(t.Port) + c.HTTP
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, bound(fmt.Sprintf("GET %s: %v", url, err)), false
	}
	req.Header.Set("User-Agent", "berth-health")
	conns := &dialed{dial: t.Dial}
	transport := &http.Transport{
		Proxy:             nil, // loopback: never through HTTP_PROXY
		DisableKeepAlives: t.Dial == nil,
		DialContext:       (&net.Dialer{}).DialContext,
	}
	if t.Dial != nil {
		transport.DialContext = conns.dialContext
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{
		Transport:     transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		closeErr := conns.close()
		return false, bound(err.Error()), errors.Is(err, ErrNotReached) || errors.Is(closeErr, ErrNotReached)
	}
	defer resp.Body.Close()
	var out strings.Builder
	fmt.Fprintf(&out, "%s %s\n", resp.Proto, resp.Status)
	body, _ := io.ReadAll(io.LimitReader(resp.Body, MaxOutput))
	out.Write(body)
	// The answer is read: now the dialer may say who gave it.
	unreached = errors.Is(conns.close(), ErrNotReached)
	ok = resp.StatusCode >= 200 && resp.StatusCode < 400
	return ok, bound(out.String()), unreached
}

// dialed opens a probe's connections through Target.Dial and closes them
// when the probe is over (close), so that their Close errors reach the
// probe rather than the transport. A connection dialed after close (the
// transport may finish a dial the probe no longer waits for) is closed at
// once.
type dialed struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	mu    sync.Mutex // guards conns and done
	conns []net.Conn
	done  bool
}

func (d *dialed) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := d.dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done {
		c.Close()
		return nil, errors.New("health probe is over")
	}
	d.conns = append(d.conns, c)
	return c, nil
}

// close closes the connections dialed so far and returns their Close
// errors.
func (d *dialed) close() error {
	d.mu.Lock()
	conns := d.conns
	d.conns, d.done = nil, true
	d.mu.Unlock()
	var errs []error
	for _, c := range conns {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// probeTCP connects (through Target.Dial if set) and closes.
func probeTCP(ctx context.Context, t Target) (ok bool, output string, unreached bool) {
	dial := (&net.Dialer{}).DialContext
	if t.Dial != nil {
		dial = t.Dial
	}
	conn, err := dial(ctx, "tcp", address(t.Port))
	if err != nil {
		return false, bound(err.Error()), errors.Is(err, ErrNotReached)
	}
	if err := conn.Close(); errors.Is(err, ErrNotReached) {
		return false, bound(err.Error()), true
	}
	return true, "connected to " + address(t.Port), false
}

// probeExec runs the command through the target's runner.
func probeExec(ctx context.Context, c Check, t Target) (bool, string) {
	code, out, err := t.RunExec(ctx, c.Exec, t.Env, t.Dir)
	text := string(out)
	switch {
	case err != nil:
		return false, bound(joinOutput(text, err.Error()))
	case code != 0:
		return false, bound(joinOutput(text, fmt.Sprintf("exit status %d", code)))
	}
	return true, bound(text)
}

func joinOutput(out, status string) string {
	if out == "" {
		return status
	}
	if !strings.HasSuffix(out, "\n") {
		out += "\n"
	}
	return out + status
}

// bound cuts s to MaxOutput bytes on a rune boundary.
func bound(s string) string {
	if len(s) <= MaxOutput {
		return s
	}
	s = s[:MaxOutput]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
