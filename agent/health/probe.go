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
	"time"
	"unicode/utf8"
)

// Result is the outcome of one probe.
type Result struct {
	Time     time.Time // when the probe started
	OK       bool
	Output   string // at most MaxOutput bytes: status line and body start, command output, or the error
	Duration time.Duration
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
		r.OK, r.Output = probeHTTP(pctx, c, t)
	case "tcp":
		r.OK, r.Output = probeTCP(pctx, t)
	case "exec":
		r.OK, r.Output = probeExec(pctx, c, t)
	}
	r.Duration = time.Since(start)
	if !r.OK && errors.Is(pctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		r.Output = bound(fmt.Sprintf("timed out after %s: %s", c.Timeout, r.Output))
	}
	return r
}

func address(port int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// probeHTTP sends one GET on a fresh connection and does not follow
// redirects: a proxy in front of the app sees the same answer.
func probeHTTP(ctx context.Context, c Check, t Target) (bool, string) {
	url := "http://" + address(t.Port) + c.HTTP
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, bound(fmt.Sprintf("GET %s: %v", url, err))
	}
	req.Header.Set("User-Agent", "berth-health")
	transport := &http.Transport{
		Proxy:             nil, // loopback: never through HTTP_PROXY
		DisableKeepAlives: true,
		DialContext:       (&net.Dialer{}).DialContext,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{
		Transport:     transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, bound(err.Error())
	}
	defer resp.Body.Close()
	var out strings.Builder
	fmt.Fprintf(&out, "%s %s\n", resp.Proto, resp.Status)
	body, _ := io.ReadAll(io.LimitReader(resp.Body, MaxOutput))
	out.Write(body)
	ok := resp.StatusCode >= 200 && resp.StatusCode < 400
	return ok, bound(out.String())
}

// probeTCP connects and closes.
func probeTCP(ctx context.Context, t Target) (bool, string) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", address(t.Port))
	if err != nil {
		return false, bound(err.Error())
	}
	conn.Close()
	return true, "connected to " + address(t.Port)
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

// firstLine returns the first non-empty line of s, bounded for messages.
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "..."
	}
	return s
}
