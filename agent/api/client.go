package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

// Client talks to the agent over its unix socket. Its methods mirror
// Backend; errors from the agent come back as *Error (errors.Is works with
// the kinds in errors.go), and a socket nobody serves as
// *UnreachableError.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent listening on socketPath. It
// connects lazily, on the first call.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:      4,
		DisableKeepAlives: false,
	}
	return &Client{socket: socketPath, http: &http.Client{Transport: tr}}
}

// Socket returns the socket path the client dials.
func (c *Client) Socket() string { return c.socket }

// Close closes idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// do sends a request and returns the response when its status is 2xx,
// else the agent's error.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body io.Reader, contentType string) (*http.Response, error) {
	return c.doClose(ctx, method, path, q, body, contentType, false)
}

// doClose is do; closeConn asks for a connection used by this request
// alone. Uploads use one: the agent may answer (413, a corrupt tarball)
// before it has read the whole body, and then closes the connection, which
// must not be reused by the next request.
func (c *Client) doClose(ctx context.Context, method, path string, q url.Values, body io.Reader, contentType string, closeConn bool) (*http.Response, error) {
	u := "http://berth" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Close = closeConn
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if isUnreachable(err) {
			return nil, &UnreachableError{Socket: c.socket, Err: err}
		}
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp, nil
}

func isUnreachable(err error) bool {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		return false
	}
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.ENOTDIR)
}

// readError turns an error response into *Error.
func readError(resp *http.Response) error {
	e := &Error{Status: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxJSONBody))
	if err := json.Unmarshal(b, &e.Body); err != nil || e.Body.Kind == "" {
		e.Body = ErrorBody{Error: fmt.Sprintf("agent answered %s: %s", resp.Status, bytes.TrimSpace(b)), Kind: kindOfStatus(resp.StatusCode)}
	}
	return e
}

func kindOfStatus(status int) string {
	for _, k := range kinds {
		if k.status == status {
			return k.kind
		}
	}
	return KindInternal
}

// call sends a JSON request (in may be nil) and decodes a JSON response
// into out (out may be nil).
func (c *Client) call(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	ct := ""
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body, ct = bytes.NewReader(b), "application/json"
	}
	resp, err := c.do(ctx, method, path, q, body, ct)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body) //nolint:errcheck // draining for reuse
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

// readStream decodes an NDJSON response, calling each for every message
// until EOF. A {"error": ...} line ends the stream with that error.
func readStream[T any](resp *http.Response, each func(T) error) error {
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var se streamError
		if err := json.Unmarshal(line, &se); err == nil && se.Error != nil {
			return &Error{Status: StatusOf(se.Error.Kind), Body: *se.Error}
		}
		var v T
		if err := json.Unmarshal(line, &v); err != nil {
			return fmt.Errorf("decode stream message: %w", err)
		}
		if err := each(v); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read stream: %w", err)
	}
	return nil
}

func appPath(app string, rest ...string) string {
	p := "/v1/apps/" + url.PathEscape(app)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// Info returns the agent's version and counters.
func (c *Client) Info(ctx context.Context) (AgentInfo, error) {
	var info AgentInfo
	err := c.call(ctx, "GET", "/v1/info", nil, nil, &info)
	return info, err
}

// Apps lists the apps.
func (c *Client) Apps(ctx context.Context) ([]App, error) {
	var apps []App
	err := c.call(ctx, "GET", "/v1/apps", nil, nil, &apps)
	return apps, err
}

// CreateApp creates an app with nothing deployed.
func (c *Client) CreateApp(ctx context.Context, name string) (App, error) {
	var app App
	err := c.call(ctx, "POST", "/v1/apps", nil, CreateAppRequest{Name: name}, &app)
	return app, err
}

// DestroyApp stops the app's processes and removes it.
func (c *Client) DestroyApp(ctx context.Context, name string) error {
	return c.call(ctx, "DELETE", appPath(name), nil, nil, nil)
}

// SetAppUser sets the user the app runs as and restarts it.
func (c *Client) SetAppUser(ctx context.Context, name, user string) (App, error) {
	var app App
	err := c.call(ctx, "PUT", appPath(name, "user"), nil, SetUserRequest{User: user}, &app)
	return app, err
}

// progressCall sends a request whose response is a Progress stream and
// returns the release of the last message.
func (c *Client) progressCall(ctx context.Context, method, path string, q url.Values, body io.Reader, ct string, progress ProgressFunc) (Release, error) {
	q = addWait(ctx, q)
	resp, err := c.doClose(ctx, method, path, q, body, ct, ct == "application/octet-stream")
	if err != nil {
		return Release{}, err
	}
	var last *Progress
	err = readStream(resp, func(p Progress) error {
		if p.Done {
			last = &p
			return nil
		}
		if progress != nil {
			progress(p)
		}
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return Release{}, ctx.Err()
		}
		return Release{}, err
	}
	switch {
	case last == nil:
		return Release{}, fmt.Errorf("%s %s: the agent closed the stream before the operation finished", method, path)
	case last.Error != nil:
		return Release{}, &Error{Status: StatusOf(last.Error.Kind), Body: *last.Error}
	case last.Release == nil:
		return Release{}, fmt.Errorf("%s %s: the last progress message has neither a release nor an error", method, path)
	}
	return *last.Release, nil
}

// Deploy uploads req.Body, then calls progress for each step until the
// new release runs, and returns it.
func (c *Client) Deploy(ctx context.Context, req DeployRequest, progress ProgressFunc) (Release, error) {
	q := url.Values{}
	if req.Digest != "" {
		q.Set("digest", req.Digest)
	}
	if req.Source != "" {
		q.Set("source", req.Source)
	}
	if req.Body == nil {
		return Release{}, fmt.Errorf("deploy %s: %w: no tarball to upload", req.App, ErrInvalid)
	}
	body := req.Body
	return c.progressCall(ctx, "POST", appPath(req.App, "deploy"), q, body, "application/octet-stream", progress)
}

// Releases lists the app's releases, newest first.
func (c *Client) Releases(ctx context.Context, app string) ([]Release, error) {
	var rels []Release
	err := c.call(ctx, "GET", appPath(app, "releases"), nil, nil, &rels)
	return rels, err
}

// Release returns one release with its config.
func (c *Client) Release(ctx context.Context, app string, version int) (Release, error) {
	var rel Release
	err := c.call(ctx, "GET", appPath(app, "releases", strconv.Itoa(version)), nil, nil, &rel)
	return rel, err
}

// Rollback makes a new release with version's build and config (0: the
// release before the active one) and activates it.
func (c *Client) Rollback(ctx context.Context, app string, version int, progress ProgressFunc) (Release, error) {
	b, _ := json.Marshal(RollbackRequest{Version: version})
	return c.progressCall(ctx, "POST", appPath(app, "rollback"), nil, bytes.NewReader(b), "application/json", progress)
}

// Config returns the app's active config.
func (c *Client) Config(ctx context.Context, app string) (map[string]string, error) {
	var cfg map[string]string
	err := c.call(ctx, "GET", appPath(app, "config"), nil, nil, &cfg)
	return cfg, err
}

// SetConfig makes and activates a release with the config changed.
func (c *Client) SetConfig(ctx context.Context, app string, change ConfigChange, progress ProgressFunc) (Release, error) {
	b, err := json.Marshal(change)
	if err != nil {
		return Release{}, fmt.Errorf("config %s: encode: %w", app, err)
	}
	return c.progressCall(ctx, "PATCH", appPath(app, "config"), nil, bytes.NewReader(b), "application/json", progress)
}

// Scale sets the count of the given process types.
func (c *Client) Scale(ctx context.Context, app string, formation map[string]int) ([]Process, error) {
	var procs []Process
	err := c.call(ctx, "PUT", appPath(app, "formation"), nil, formation, &procs)
	return procs, err
}

// Processes lists the app's processes, or every app's when app is "".
func (c *Client) Processes(ctx context.Context, app string) ([]Process, error) {
	var procs []Process
	path := "/v1/ps"
	if app != "" {
		path = appPath(app, "ps")
	}
	err := c.call(ctx, "GET", path, nil, nil, &procs)
	return procs, err
}

// Restart restarts all of the app's processes (target ""), one type or
// one instance.
func (c *Client) Restart(ctx context.Context, app, target string) error {
	q := url.Values{}
	if target != "" {
		q.Set("target", target)
	}
	return c.call(ctx, "POST", appPath(app, "restart"), q, nil, nil)
}

// Logs returns the stored lines of the app's output that q asks for.
func (c *Client) Logs(ctx context.Context, app string, q LogQuery) ([]LogLine, error) {
	var lines []LogLine
	err := c.streamLogs(ctx, app, q, false, func(l LogLine) error {
		lines = append(lines, l)
		return nil
	})
	return lines, err
}

// FollowLogs sends new lines as they come until ctx ends (nil), send
// fails (its error) or the agent ends the stream. q.N and q.Since are
// ignored.
func (c *Client) FollowLogs(ctx context.Context, app string, q LogQuery, send func(LogLine) error) error {
	q.N, q.Since = 0, time.Time{}
	return c.TailLogs(ctx, app, q, send)
}

// TailLogs sends the stored lines q asks for (none when q.N is 0 and
// q.Since zero), then new lines as they come, like `tail -n N -f`, until
// ctx ends (nil), send fails or the agent ends the stream.
func (c *Client) TailLogs(ctx context.Context, app string, q LogQuery, send func(LogLine) error) error {
	return c.streamLogs(ctx, app, q, true, send)
}

func (c *Client) streamLogs(ctx context.Context, app string, q LogQuery, follow bool, send func(LogLine) error) error {
	v := url.Values{"n": {strconv.Itoa(q.N)}}
	if q.Instance != "" {
		v.Set("instance", q.Instance)
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.Format(time.RFC3339Nano))
	}
	if q.Release != 0 {
		v.Set("release", strconv.Itoa(q.Release))
	}
	if follow {
		v.Set("follow", "1")
	}
	resp, err := c.do(ctx, "GET", appPath(app, "logs"), v, nil, "")
	if err != nil {
		return followErr(ctx, follow, err)
	}
	return followErr(ctx, follow, readStream(resp, send))
}

// followErr turns the end of a follow stream caused by ctx into nil.
func followErr(ctx context.Context, follow bool, err error) error {
	if err != nil && follow && ctx.Err() != nil {
		return nil
	}
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Events returns events with Seq > since (of one app, or all when app is
// ""), oldest first, at most limit (0: the agent's default).
func (c *Client) Events(ctx context.Context, app string, since uint64, limit int) ([]Event, error) {
	var events []Event
	err := c.streamEvents(ctx, app, since, limit, false, func(e Event) error {
		events = append(events, e)
		return nil
	})
	return events, err
}

// FollowEvents sends the events with Seq > since, then new ones as they
// happen, until ctx ends (nil), send fails or the agent ends the stream.
func (c *Client) FollowEvents(ctx context.Context, app string, since uint64, send func(Event) error) error {
	return c.streamEvents(ctx, app, since, 0, true, send)
}

func (c *Client) streamEvents(ctx context.Context, app string, since uint64, limit int, follow bool, send func(Event) error) error {
	q := url.Values{}
	if app != "" {
		q.Set("app", app)
	}
	if since > 0 {
		q.Set("since", strconv.FormatUint(since, 10))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := c.do(ctx, "GET", "/v1/events", q, nil, "")
	if err != nil {
		return followErr(ctx, follow, err)
	}
	return followErr(ctx, follow, readStream(resp, send))
}

// The client offers every Backend method, so the CLI (and tests) can hold
// either behind one interface.
var _ Backend = (*Client)(nil)
