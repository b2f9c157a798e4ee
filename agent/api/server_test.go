package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// testServer is a Server on a real unix socket with a fake backend.
type testServer struct {
	sock   string
	fake   *fakeBackend
	client *Client
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// shortDir returns a temp dir with a path short enough for sun_path.
func shortDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "b")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func startServer(t *testing.T, cfg ServerConfig) *testServer {
	t.Helper()
	sock := filepath.Join(shortDir(t), "s.sock")
	ln, err := Listen(sock, -1)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GID == 0 {
		cfg.GID = -1
	}
	return startOn(t, ln, cfg)
}

// startOn serves cfg (with a fake backend unless it names one) on ln.
func startOn(t *testing.T, ln net.Listener, cfg ServerConfig) *testServer {
	t.Helper()
	sock := ln.Addr().String()
	fake := newFake()
	if cfg.Backend == nil {
		cfg.Backend = fake
	}
	logs := &syncBuffer{}
	log := hclog.New(&hclog.LoggerOptions{Name: "api", Output: logs, Level: hclog.Debug})
	srv := NewServer(cfg, log)
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{sock: sock, fake: fake, client: NewClient(sock), logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { ts.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// stop cancels Serve and checks that it returns nil.
func (ts *testServer) stop(t *testing.T) {
	t.Helper()
	if ts.cancel == nil {
		return
	}
	ts.cancel()
	ts.cancel = nil
	ts.client.Close()
	if err := <-ts.done; err != nil {
		t.Errorf("Serve returned %v after cancel, want nil", err)
	}
}

// raw sends a request the way curl --unix-socket would and returns the
// status and body.
func (ts *testServer) raw(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	ct := ""
	if body != "" {
		ct = "application/json"
		if strings.Contains(path, "/deploy") {
			ct = "application/octet-stream"
		}
	}
	return ts.rawCT(t, method, path, ct, body)
}

// rawCT is raw with the given Content-Type ("" for none).
func (ts *testServer) rawCT(t *testing.T, method, path, ct, body string) (int, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", ts.sock)
	}}}
	defer c.CloseIdleConnections()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://berth"+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// seed creates app "web" with two releases.
func (ts *testServer) seed(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if _, err := ts.client.Deploy(ctx, DeployRequest{App: "web", Body: strings.NewReader("tarball-1")}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.client.SetConfig(ctx, "web", ConfigChange{Set: map[string]string{"FOO": "bar"}}, nil); err != nil {
		t.Fatal(err)
	}
}

// TestServer_Routes checks every route's status and body shape as curl
// sees them.
func TestServer_Routes(t *testing.T) {
	ts := startServer(t, ServerConfig{Version: "1.2.3"})
	ts.seed(t)
	ts.fake.logs = []LogLine{{App: "web", Instance: "web.1", Stream: "stdout", Text: "hello"}}
	ts.fake.events = []Event{{Seq: 1, App: "web", Kind: "deploy", Message: "v1"}, {Seq: 2, App: "other", Kind: "deploy"}}
	tests := []struct {
		method, path, body string
		status             int
		contains           string
	}{
		{"GET", "/v1/info", "", 200, `"version": "1.2.3"`},
		{"GET", "/v1/apps", "", 200, `"name": "web"`},
		{"POST", "/v1/apps", `{"name":"api"}`, 201, `"name": "api"`},
		{"POST", "/v1/apps", `{"name":"api"}`, 409, `"kind": "conflict"`},
		{"POST", "/v1/apps", `{"name":"BAD"}`, 400, `"kind": "invalid"`},
		{"PUT", "/v1/apps/api/user", `{"user":"www-data"}`, 200, `"user": "www-data"`},
		{"DELETE", "/v1/apps/api", "", 204, ""},
		{"DELETE", "/v1/apps/api", "", 404, `"kind": "not_found"`},
		{"POST", "/v1/apps/web/deploy", "tarball-2", 200, `"done":true`},
		{"GET", "/v1/apps/web/releases", "", 200, `"version": 3`},
		{"GET", "/v1/apps/web/releases/v2", "", 200, `"FOO": "bar"`},
		{"GET", "/v1/apps/web/releases/2", "", 200, `"version": 2`},
		{"GET", "/v1/apps/web/releases/v9", "", 404, `release v9 of web`},
		{"GET", "/v1/apps/web/releases/vx", "", 400, `bad release version \"vx\"`},
		{"GET", "/v1/apps/nope/releases", "", 404, `app \"nope\"`},
		{"POST", "/v1/apps/web/rollback", `{"version":1}`, 200, `"description":"rollback to v1"`},
		{"POST", "/v1/apps/web/rollback", "", 200, `"done":true`},
		{"GET", "/v1/apps/web/config", "", 200, `{`},
		{"PATCH", "/v1/apps/web/config", `{"set":{"A":"1"},"unset":["FOO"]}`, 200, `"config_keys":["A"]`},
		{"PUT", "/v1/apps/web/formation", `{"web":2}`, 200, `"instance": "web.2"`},
		{"PUT", "/v1/apps/web/formation", `{"cron":1}`, 404, `process type \"cron\"`},
		{"GET", "/v1/apps/web/ps", "", 200, `"instance": "web.1"`},
		{"GET", "/v1/ps", "", 200, `"app": "web"`},
		{"POST", "/v1/apps/web/restart?target=web.1", "", 204, ""},
		{"POST", "/v1/apps/web/restart?target=nope", "", 404, `no process \"nope\"`},
		{"GET", "/v1/apps/web/logs?n=5", "", 200, `"text":"hello"`},
		{"GET", "/v1/apps/web/logs?n=x", "", 400, `bad n \"x\"`},
		{"GET", "/v1/apps/web/logs?since=2026-12-02T23:10:00.5%2B01:00&release=v1", "", 200, ""},
		{"GET", "/v1/apps/web/logs?since=yesterday", "", 400, `bad since \"yesterday\"`},
		{"GET", "/v1/apps/web/logs?release=x", "", 400, `bad release \"x\"`},
		{"GET", "/v1/events?app=web", "", 200, `"seq":1`},
		{"GET", "/v1/events?since=abc", "", 400, `bad since \"abc\"`},
		{"GET", "/v1/nothing", "", 404, `no such endpoint: GET /v1/nothing`},
		{"POST", "/v1/info", "", 405, `method POST not allowed`},
	}
	for _, tt := range tests {
		status, body := ts.raw(t, tt.method, tt.path, tt.body)
		if status != tt.status || !strings.Contains(body, tt.contains) {
			t.Errorf("%s %s: got %d %s\nwant %d containing %s", tt.method, tt.path, status, body, tt.status, tt.contains)
		}
		if status >= 400 {
			var eb ErrorBody
			if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error == "" || eb.Kind == "" {
				t.Errorf("%s %s: error body %q is not an ErrorBody", tt.method, tt.path, body)
			}
		}
	}
	if got := ts.fake.restarts; len(got) != 1 || got[0] != "web/web.1" {
		t.Errorf("restarts = %q, want [web/web.1]", got)
	}
	if status, body := ts.raw(t, "GET", "/v1/events?app=web", ""); status != 200 || strings.Contains(body, `"other"`) {
		t.Errorf("events filtered by app: %d %s", status, body)
	}
}

// TestServer_EmptyLists ensures an empty list answers [], not null, so a
// client in any language can iterate it.
func TestServer_EmptyLists(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	for _, path := range []string{"/v1/apps", "/v1/ps"} {
		if status, body := ts.raw(t, "GET", path, ""); status != 200 || strings.TrimSpace(body) != "[]" {
			t.Errorf("GET %s with nothing there: %d %q, want 200 []", path, status, body)
		}
	}
}

// TestServer_StrictDecode ensures malformed bodies are refused with a
// message naming the problem and reach no backend method.
func TestServer_StrictDecode(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	ts.seed(t)
	big := `{"set":{"A":"` + strings.Repeat("x", maxJSONBody) + `"}}`
	tests := []struct {
		method, path, body string
		status             int
		contains           string
	}{
		{"POST", "/v1/apps", `{"name":"x","extra":1}`, 400, `unknown field \"extra\"`},
		// Exact names, no duplicates, bounded keys (issue 12, finding 8).
		{"POST", "/v1/apps", `{"Name":"x"}`, 400, `unknown field \"Name\" (field names are case-sensitive)`},
		{"POST", "/v1/apps", `{"NAME":"x"}`, 400, `unknown field \"NAME\"`},
		{"POST", "/v1/apps", `{"name":"x","name":"y"}`, 400, `duplicate key \"name\"`},
		{"PUT", "/v1/apps/web/user", `{"user":"a","User":"root"}`, 400, `unknown field \"User\"`},
		{"POST", "/v1/apps/web/rollback", `{"Version":1}`, 400, `unknown field \"Version\"`},
		{"PATCH", "/v1/apps/web/config", `{"set":{"A":"1","A":"2"}}`, 400, `request body.set: duplicate key \"A\"`},
		{"PATCH", "/v1/apps/web/config", `{"Set":{"A":"1"}}`, 400, `unknown field \"Set\"`},
		{"PATCH", "/v1/apps/web/config", `{"unset":["A"],"unset":["B"]}`, 400, `duplicate key \"unset\"`},
		{"PATCH", "/v1/apps/web/config", `{"set":{"` + strings.Repeat("K", 100000) + `":"1"}}`, 400, "longer than 256 (MaxConfigKeyLen)"},
		{"PATCH", "/v1/apps/web/config", `{"unset":["` + strings.Repeat("K", MaxConfigKeyLen+1) + `"]}`, 400, "MaxConfigKeyLen"},
		{"PUT", "/v1/apps/web/formation", `{"web":1,"web":2}`, 400, `duplicate key \"web\"`},
		{"POST", "/v1/apps", `{"name":"x"} {}`, 400, "unexpected data after the JSON value"},
		{"POST", "/v1/apps", `{"name":`, 400, "truncated JSON"},
		{"POST", "/v1/apps", ``, 400, `want {\"name\": NAME}`},
		{"POST", "/v1/apps", `{"name":""}`, 400, "empty name"},
		{"POST", "/v1/apps", `[1]`, 400, "cannot unmarshal array"},
		{"PATCH", "/v1/apps/web/config", `{}`, 400, "sets and unsets nothing"},
		{"PATCH", "/v1/apps/web/config", `{"set":{"A":"1"},"unset":["A"]}`, 400, `both sets and unsets \"A\"`},
		{"PATCH", "/v1/apps/web/config", `{"set":{"A":1}}`, 400, "cannot unmarshal number"},
		{"PATCH", "/v1/apps/web/config", big, 413, "larger than 1048576 bytes"},
		{"PUT", "/v1/apps/web/formation", `{"web":-1}`, 400, `negative count -1 for \"web\"`},
		{"PUT", "/v1/apps/web/formation", `{}`, 400, "empty formation"},
		{"PUT", "/v1/apps/web/formation", ``, 400, `empty formation, want {\"TYPE\": COUNT}`},
		{"PUT", "/v1/apps/web/formation", `null`, 400, "empty formation"},
		{"PUT", "/v1/apps/web/formation", `{"web":"2"}`, 400, "cannot unmarshal string"},
		{"POST", "/v1/apps/web/rollback", `{"version":-2}`, 400, "bad version -2"},
		{"POST", "/v1/apps/web/rollback", `{"v":2}`, 400, `unknown field \"v\"`},
		{"POST", "/v1/apps/web/deploy?digest=xyz", "tar", 400, `bad digest \"xyz\"`},
		{"POST", "/v1/apps/web/deploy", "", 400, "empty upload"},
		// The agent opens no path for a client (it would as root).
		{"POST", "/v1/apps/web/deploy?path=/etc/shadow", "", 400, "path= is not accepted"},
		{"POST", "/v1/apps/web/deploy?path=rel/x.tar", "", 400, "path= is not accepted"},
		{"POST", "/v1/apps/web/deploy?path=/x.tar", "body", 400, "path= is not accepted"},
		{"POST", "/v1/apps/web/deploy?path=", "body", 400, "path= is not accepted"},
		{"GET", "/v1/apps/web/logs?follow=maybe", "", 400, `bad follow \"maybe\"`},
	}
	for _, tt := range tests {
		status, body := ts.raw(t, tt.method, tt.path, tt.body)
		if status != tt.status || !strings.Contains(body, tt.contains) {
			t.Errorf("%s %s %.40q: got %d %s\nwant %d containing %s", tt.method, tt.path, tt.body, status, body, tt.status, tt.contains)
		}
	}
	rels, err := ts.client.Releases(context.Background(), "web")
	if err != nil || len(rels) != 2 {
		t.Errorf("after refused requests: %d releases, %v; want the 2 seeded", len(rels), err)
	}
}

// TestServer_ContentType ensures a JSON body must say so (415 naming
// what was sent), a body-less request and the deploy upload need not,
// and parameters of application/json are accepted.
func TestServer_ContentType(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	ts.seed(t)
	for _, tt := range []struct {
		method, path, ct, body string
		status                 int
		contains               string
	}{
		{"POST", "/v1/apps", "", `{"name":"a1"}`, 415, "got no Content-Type"},
		{"POST", "/v1/apps", "text/plain", `{"name":"a2"}`, 415, `Content-Type: application/json, got \"text/plain\"`},
		{"PATCH", "/v1/apps/web/config", "application/x-www-form-urlencoded", `{"set":{"A":"1"}}`, 415, "unsupported_media_type"},
		{"PUT", "/v1/apps/web/formation", "application/jsonx", `{"web":1}`, 415, "application/json"},
		{"POST", "/v1/apps", "application/json; charset=utf-8", `{"name":"a3"}`, 201, `"a3"`},
		{"POST", "/v1/apps/web/rollback", "", ``, 200, ""},
	} {
		status, body := ts.rawCT(t, tt.method, tt.path, tt.ct, tt.body)
		if status != tt.status || !strings.Contains(body, tt.contains) {
			t.Errorf("%s %s (%q) %.40q: got %d %s\nwant %d containing %s", tt.method, tt.path, tt.ct, tt.body, status, body, tt.status, tt.contains)
		}
	}
}

// TestServer_UncleanPath ensures a path that is not clean gets a plain
// JSON 404, not the mux's redirect (which lost its Location).
func TestServer_UncleanPath(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	ts.seed(t)
	for _, path := range []string{"/v1//apps", "/v1/apps/../info", "/v1/./apps", "//v1/apps"} {
		status, body := ts.raw(t, "GET", path, "")
		if status != 404 || !strings.Contains(body, "no such endpoint") {
			t.Errorf("GET %s: %d %s, want a 404", path, status, body)
		}
	}
}

// TestClient_RoundTrip drives every Client method against the server and
// checks that values and error kinds survive the socket.
func TestClient_RoundTrip(t *testing.T) {
	ts := startServer(t, ServerConfig{Version: "9.9"})
	c, ctx := ts.client, context.Background()

	info, err := c.Info(ctx)
	if err != nil || info.Version != "9.9" || info.PID != os.Getpid() {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	if _, err := c.CreateApp(ctx, "api"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateApp(ctx, "api"); !errors.Is(err, ErrConflict) {
		t.Errorf("CreateApp twice: %v, want ErrConflict", err)
	}
	var e *Error
	if _, err := c.CreateApp(ctx, "BAD"); !errors.As(err, &e) || e.Status != 400 || !errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotFound) {
		t.Errorf("CreateApp(BAD): %#v, want *Error 400 invalid", err)
	}
	if app, err := c.SetAppUser(ctx, "api", "www"); err != nil || app.User != "www" {
		t.Errorf("SetAppUser = %+v, %v", app, err)
	}
	if err := c.DestroyApp(ctx, "api"); err != nil {
		t.Error(err)
	}
	if err := c.DestroyApp(ctx, "api"); !errors.Is(err, ErrNotFound) {
		t.Errorf("DestroyApp twice: %v, want ErrNotFound", err)
	}

	var steps []string
	rel, err := c.Deploy(ctx, DeployRequest{App: "web", Body: strings.NewReader("tarball"), Source: "cli"},
		func(p Progress) { steps = append(steps, p.Step) })
	if err != nil || rel.Version != 1 || rel.Status != "active" || rel.Description != "deploy from cli" {
		t.Fatalf("Deploy = %+v, %v", rel, err)
	}
	if strings.Join(steps, ",") != "upload,start" {
		t.Errorf("progress steps %q, want upload,start (done is the return value)", steps)
	}
	if string(ts.fake.uploaded) != "tarball" {
		t.Errorf("uploaded %q", ts.fake.uploaded)
	}
	if _, err := c.Deploy(ctx, DeployRequest{App: "web", Body: strings.NewReader("x"), Digest: strings.Repeat("a", 64)}, nil); !errors.Is(err, ErrConflict) {
		t.Errorf("Deploy with wrong digest: %v, want ErrConflict", err)
	}
	if _, err := c.Deploy(ctx, DeployRequest{App: "web"}, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("Deploy without a body: %v, want ErrInvalid", err)
	}
	if rel, err := c.Deploy(ctx, DeployRequest{App: "web", Body: strings.NewReader("second")}, nil); err != nil || rel.Version != 2 {
		t.Errorf("second Deploy = %+v, %v", rel, err)
	}
	if rel, err := c.SetConfig(ctx, "web", ConfigChange{Set: map[string]string{"K": "v"}}, nil); err != nil || rel.Version != 3 {
		t.Errorf("SetConfig = %+v, %v", rel, err)
	}
	if cfg, err := c.Config(ctx, "web"); err != nil || cfg["K"] != "v" {
		t.Errorf("Config = %v, %v", cfg, err)
	}
	if rel, err := c.Release(ctx, "web", 3); err != nil || rel.Config["K"] != "v" {
		t.Errorf("Release = %+v, %v", rel, err)
	}
	if rel, err := c.Rollback(ctx, "web", 0, nil); err != nil || rel.Version != 4 || rel.Description != "rollback to v2" {
		t.Errorf("Rollback = %+v, %v", rel, err)
	}
	if _, err := c.Rollback(ctx, "web", 42, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Rollback(42): %v, want ErrNotFound", err)
	}
	if rels, err := c.Releases(ctx, "web"); err != nil || len(rels) != 4 || rels[0].Version != 4 {
		t.Errorf("Releases = %+v, %v", rels, err)
	}
	if procs, err := c.Scale(ctx, "web", map[string]int{"web": 3}); err != nil || len(procs) != 3 {
		t.Errorf("Scale = %+v, %v", procs, err)
	}
	if procs, err := c.Processes(ctx, ""); err != nil || len(procs) != 3 || procs[2].Instance != "web.3" {
		t.Errorf("Processes = %+v, %v", procs, err)
	}
	if err := c.Restart(ctx, "web", "web"); err != nil {
		t.Error(err)
	}
	if err := c.Restart(ctx, "web", "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Restart(nope): %v", err)
	}
	ts.fake.logs = []LogLine{{App: "web", Instance: "web.1", Text: "a"}, {App: "web", Instance: "web.2", Text: "b"}, {App: "web", Instance: "web.1", Text: "c"}}
	if lines, err := c.Logs(ctx, "web", LogQuery{Instance: "web.1", N: 10}); err != nil || len(lines) != 2 || lines[1].Text != "c" {
		t.Errorf("Logs = %+v, %v", lines, err)
	}
	if lines, err := c.Logs(ctx, "web", LogQuery{N: 1}); err != nil || len(lines) != 1 || lines[0].Text != "c" {
		t.Errorf("Logs(n=1) = %+v, %v", lines, err)
	}
	// The query's since and release reach the backend.
	t0 := time.Date(2026, 12, 2, 23, 10, 0, 0, time.UTC)
	ts.fake.logs = []LogLine{{App: "web", Instance: "web.1", Time: t0, Release: 1, Text: "v1 old"},
		{App: "web", Instance: "web.1", Time: t0.Add(time.Second), Release: 2, Text: "v2 new"},
		{App: "web", Instance: "web.1", Time: t0.Add(2 * time.Second), Release: 1, Text: "v1 new"}}
	if lines, err := c.Logs(ctx, "web", LogQuery{Since: t0.Add(time.Second), Release: 1}); err != nil || len(lines) != 1 || lines[0].Text != "v1 new" {
		t.Errorf("Logs(since, release) = %+v, %v", lines, err)
	}
	ts.fake.events = []Event{{Seq: 1, App: "web"}, {Seq: 2, App: "web"}, {Seq: 3, App: "web"}}
	if evs, err := c.Events(ctx, "web", 1, 1); err != nil || len(evs) != 1 || evs[0].Seq != 2 {
		t.Errorf("Events = %+v, %v", evs, err)
	}
	if _, err := c.Logs(ctx, "nope", LogQuery{N: 10}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Logs(nope): %v", err)
	}
}

// TestServer_ErrorKinds ensures each error kind maps to its status and
// back to the same sentinel in the client, including wrapped kinds.
func TestServer_ErrorKinds(t *testing.T) {
	for _, tt := range []struct {
		err    error
		status int
		is     error
	}{
		{fmt.Errorf("%w: bad", ErrInvalid), 400, ErrInvalid},
		{fmt.Errorf("x: %w", ErrNotFound), 404, ErrNotFound},
		{ErrConflict, 409, ErrConflict},
		{fmt.Errorf("%w: %w", ErrInvalid, ErrTooLarge), 413, ErrTooLarge},
		{ErrUnavailable, 503, ErrUnavailable},
		{fmt.Errorf("%w: uid 1000", errForbidden), 403, errForbidden},
		{errors.New("disk on fire"), 500, nil},
		{fmt.Errorf("deploy: %w", &kindedErr{KindConflict}), 409, ErrConflict},
		{fmt.Errorf("%w: %w", ErrUnavailable, &kindedErr{KindConflict}), 503, ErrUnavailable},
		{&kindedErr{"no_such_kind"}, 500, nil},
	} {
		b := &errBackend{fakeBackend: newFake(), err: tt.err}
		ts := startServer(t, ServerConfig{Backend: b})
		_, err := ts.client.Apps(context.Background())
		var e *Error
		if !errors.As(err, &e) || e.Status != tt.status || e.Error() != tt.err.Error() {
			t.Errorf("%v: client got %#v, want status %d", tt.err, err, tt.status)
		}
		if tt.is != nil && !errors.Is(err, tt.is) {
			t.Errorf("%v: errors.Is(%v) false", tt.err, tt.is)
		}
		if tt.is == nil && (errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotFound)) {
			t.Errorf("%v: internal error matches a kind", tt.err)
		}
		ts.stop(t)
	}
}

// kindedErr is a typed error that names its own kind, as the agent's
// errors do where they wrap no sentinel of this package.
type kindedErr struct{ kind string }

func (e *kindedErr) Error() string   { return "release failed its health check (kind " + e.kind + ")" }
func (e *kindedErr) APIKind() string { return e.kind }

// errBackend fails Apps with err.
type errBackend struct {
	*fakeBackend
	err error
}

func (b *errBackend) Apps(context.Context) ([]App, error) { return nil, b.err }

// TestServer_DeployStreamError ensures an error after progress started
// arrives as the last Progress and becomes the same kind in the client.
func TestServer_DeployStreamError(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	ts.fake.failDeployAfterProgress = fmt.Errorf("%w: release phase exited with status 3", ErrInvalid)
	status, body := ts.raw(t, "POST", "/v1/apps/web/deploy", "tar")
	lines := strings.Split(strings.TrimSpace(body), "\n")
	var last Progress
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatal(err)
	}
	if status != 200 || len(lines) != 2 || !last.Done || last.Error == nil || last.Error.Kind != "invalid" || last.Release != nil {
		t.Fatalf("stream: %d %s", status, body)
	}
	var steps []string
	_, err := ts.client.Deploy(context.Background(), DeployRequest{App: "web", Body: strings.NewReader("tar")}, func(p Progress) { steps = append(steps, p.Step) })
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "release phase exited with status 3") || len(steps) != 1 {
		t.Errorf("client: %v, steps %q", err, steps)
	}
}

// TestServer_UploadLimit ensures an upload over MaxUpload is refused with
// 413, whether the size is announced or not.
func TestServer_UploadLimit(t *testing.T) {
	ts := startServer(t, ServerConfig{MaxUpload: 1000})
	ctx := context.Background()
	// Announced: bytes.Reader gives a Content-Length.
	_, err := ts.client.Deploy(ctx, DeployRequest{App: "web", Body: bytes.NewReader(make([]byte, 2000))}, nil)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "2000 bytes is larger than the limit of 1000") {
		t.Errorf("announced: %v", err)
	}
	// Chunked: the limit trips while the backend reads.
	_, err = ts.client.Deploy(ctx, DeployRequest{App: "web", Body: io.MultiReader(bytes.NewReader(make([]byte, 2000)))}, nil)
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("chunked: %v, want ErrTooLarge", err)
	}
	if _, err := ts.client.Deploy(ctx, DeployRequest{App: "web", Body: io.MultiReader(bytes.NewReader(make([]byte, 1000)))}, nil); err != nil {
		t.Errorf("exactly the limit: %v", err)
	}
}

// TestServer_FollowLogs follows logs through the client: the backlog,
// live lines, then the client's cancel ends it with nil.
func TestServer_FollowLogs(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	ts.seed(t)
	ts.fake.logs = []LogLine{{App: "web", Instance: "web.1", Text: "old1"}, {App: "web", Instance: "web.1", Text: "old2"}}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		done <- ts.client.TailLogs(ctx, "web", LogQuery{Instance: "web.1", N: 1}, func(l LogLine) error { got <- l.Text; return nil })
	}()
	<-ts.fake.following
	ts.fake.liveLogs <- LogLine{App: "web", Instance: "web.2", Text: "other instance"}
	ts.fake.liveLogs <- LogLine{App: "web", Instance: "web.1", Text: "new"}
	for _, want := range []string{"old2", "new"} {
		if l := <-got; l != want {
			t.Errorf("got line %q, want %q", l, want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("TailLogs after cancel: %v, want nil", err)
	}
}

// TestServer_FollowEnds covers the two other ends of a follow stream: a
// backend error sent as the last line, and the agent shutting down.
func TestServer_FollowEnds(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	ts.seed(t)
	done := make(chan error, 1)
	go func() {
		done <- ts.client.FollowLogs(context.Background(), "web", LogQuery{}, func(LogLine) error { return nil })
	}()
	<-ts.fake.following
	close(ts.fake.liveLogs)
	if err := <-done; !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "log stream of web ended") {
		t.Errorf("backend error: %v", err)
	}

	ts.fake.events = []Event{{Seq: 1, App: "web", Kind: "deploy"}}
	var seqs []uint64
	go func() {
		done <- ts.client.FollowEvents(context.Background(), "", 0, func(e Event) error { seqs = append(seqs, e.Seq); return nil })
	}()
	<-ts.fake.following
	ts.fake.liveEvents <- Event{Seq: 1, Kind: "duplicate of the backlog"}
	ts.fake.liveEvents <- Event{Seq: 2, Kind: "scale"}
	ts.stop(t) // Serve must return although a stream is open
	if err := <-done; !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "shutting down") {
		t.Errorf("shutdown: %v, want ErrUnavailable saying the agent is shutting down", err)
	}
	if fmt.Sprint(seqs) != "[1 2]" {
		t.Errorf("events %v, want [1 2]", seqs)
	}
}

// TestClient_Unreachable ensures a missing or dead socket gives an error
// that says where the client looked and how to start the agent.
func TestClient_Unreachable(t *testing.T) {
	dir := shortDir(t)
	missing := filepath.Join(dir, "none.sock")
	dead := filepath.Join(dir, "dead.sock")
	ln, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	for _, sock := range []string{missing, dead} {
		_, err := NewClient(sock).Apps(context.Background())
		var ue *UnreachableError
		if !errors.As(err, &ue) || !errors.Is(err, ErrUnavailable) {
			t.Fatalf("%s: %#v, want *UnreachableError", sock, err)
		}
		msg := err.Error()
		for _, want := range []string{sock, "berth agent", "systemctl start berth", "BERTH_SOCKET", "--socket"} {
			if !strings.Contains(msg, want) {
				t.Errorf("message %q lacks %q", msg, want)
			}
		}
	}
}

// TestListen covers the socket file: mode, a stale socket replaced, a
// live agent refused, and a non-socket left alone.
func TestListen(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "run", "s.sock")
	ln, err := Listen(sock, os.Getegid())
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("socket mode %v, %v; want 0660 socket", fi.Mode(), err)
	}
	if di, _ := os.Stat(filepath.Dir(sock)); di.Mode().Perm() != 0o750 {
		t.Errorf("dir mode %v, want 0750", di.Mode().Perm())
	}
	// A live listener: refused, and the socket still works.
	if _, err := Listen(sock, -1); !errors.Is(err, ErrSocketInUse) || !strings.Contains(err.Error(), "another berth agent serves this socket") {
		t.Errorf("second Listen: %v, want ErrSocketInUse", err)
	}
	if c, err := net.Dial("unix", sock); err != nil {
		t.Errorf("first listener lost its socket: %v", err)
	} else {
		c.Close()
	}
	// A stale socket (the agent died without unlinking): replaced.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln2, err := Listen(sock, -1)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln2.Close()
	// A regular file: refused and kept.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("data"), 0o644)
	if _, err := Listen(file, -1); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen on a file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "data" {
		t.Error("Listen changed a regular file")
	}
	// A directory another user owns, or anybody may write to: refused.
	foreign := filepath.Join(dir, "foreign")
	os.Mkdir(foreign, 0o755)
	if err := os.Chown(foreign, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(filepath.Join(foreign, "s"), -1); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "belongs to uid 65534") {
		t.Errorf("Listen in a foreign dir: %v", err)
	}
	open := filepath.Join(dir, "open")
	os.Mkdir(open, 0o755)
	os.Chmod(open, 0o777)
	if _, err := Listen(filepath.Join(open, "s"), -1); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "writable by everyone") {
		t.Errorf("Listen in a world-writable dir: %v", err)
	}
	os.Chmod(open, 0o777|os.ModeSticky)
	if ln, err := Listen(filepath.Join(open, "s"), -1); err != nil {
		t.Errorf("Listen in a sticky world-writable dir: %v", err)
	} else {
		ln.Close()
	}
}

// TestDefaultPaths checks the defaults as root (the tests run as root)
// and, through a child process running as nobody, the XDG locations and
// their fallbacks.
func TestDefaultPaths(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatalf("the berth test suite runs as root (it tests peer credentials); euid %d", os.Geteuid())
	}
	if got := DefaultSocketPath(); got != "/run/berth/berth.sock" {
		t.Errorf("DefaultSocketPath = %s", got)
	}
	if got := DefaultDataDir(); got != "/var/lib/berth" {
		t.Errorf("DefaultDataDir = %s", got)
	}
	dir := shortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := copyTestBinary(t, dir)
	for _, tt := range []struct {
		env  []string
		want string
	}{
		{[]string{"XDG_RUNTIME_DIR=/run/user/65534", "XDG_STATE_HOME=/st", "HOME=/home/x"}, "/run/user/65534/berth/berth.sock\n/st/berth\n"},
		{[]string{"HOME=/home/x"}, "/tmp/berth-65534/berth.sock\n/home/x/.local/state/berth\n"},
		{[]string{"XDG_RUNTIME_DIR=relative", "XDG_STATE_HOME=rel", "HOME=/h"}, "/tmp/berth-65534/berth.sock\n/h/.local/state/berth\n"},
	} {
		cmd := exec.Command(bin)
		cmd.Env = append([]string{"BERTH_API_TEST_PATHS=1"}, tt.env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.Output()
		if err != nil || string(out) != tt.want {
			t.Errorf("as nobody with %q: %q, %v; want %q", tt.env, out, err, tt.want)
		}
	}
}

// blockingBackend's SetConfig reports one step, hands over its context,
// then waits for release.
type blockingBackend struct {
	*fakeBackend
	ctxs    chan context.Context
	release chan struct{}
}

func newBlocking() *blockingBackend {
	return &blockingBackend{fakeBackend: newFake(), ctxs: make(chan context.Context, 1), release: make(chan struct{})}
}

func (b *blockingBackend) SetConfig(ctx context.Context, app string, c ConfigChange, progress ProgressFunc) (Release, error) {
	progress(Progress{Step: "record", Message: "created v2"})
	b.ctxs <- ctx
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return Release{App: app, Version: 2, Status: "active"}, ctx.Err()
}

// TestServer_OperationOutlivesClient ensures a client that goes away
// mid-switch does not cancel the switch, while a server shutdown does.
func TestServer_OperationOutlivesClient(t *testing.T) {
	b := newBlocking()
	ts := startServer(t, ServerConfig{Backend: b})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := ts.client.SetConfig(ctx, "web", ConfigChange{Set: map[string]string{"A": "1"}}, nil)
		done <- err
	}()
	opCtx := <-b.ctxs
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("client after cancel: %v, want context.Canceled", err)
	}
	// A negative check needs a window: the server notices a closed
	// connection within milliseconds.
	select {
	case <-opCtx.Done():
		t.Errorf("the operation's context ended with the client: %v", opCtx.Err())
	case <-time.After(300 * time.Millisecond):
	}
	close(b.release)

	b2 := newBlocking()
	ts2 := startServer(t, ServerConfig{Backend: b2})
	go func() {
		_, err := ts2.client.SetConfig(context.Background(), "web", ConfigChange{Set: map[string]string{"A": "1"}}, nil)
		done <- err
	}()
	opCtx = <-b2.ctxs
	ts2.stop(t) // returns once the handler did: the shutdown canceled the operation
	if !errors.Is(opCtx.Err(), context.Canceled) {
		t.Errorf("the operation's context after shutdown: %v, want canceled", opCtx.Err())
	}
	if err := <-done; err == nil {
		t.Error("the client saw success for an operation the shutdown canceled")
	}
}

// TestServer_WaitProbation ensures a switch accepts wait=probation, and
// that any other value of wait is refused with a 400 that names the
// accepted one, before the backend is called.
func TestServer_WaitProbation(t *testing.T) {
	ts := startServer(t, ServerConfig{})
	ts.seed(t)
	for _, tt := range []struct {
		path     string
		status   int
		contains string
	}{
		{"/v1/apps/web/config?wait=probation", 200, `"done":true`},
		{"/v1/apps/web/config?wait=yes", 400, `wait=\"yes\": the only value is \"probation\"`},
		{"/v1/apps/web/config?wait=", 400, "the only value is"},
	} {
		status, body := ts.raw(t, "PATCH", tt.path, `{"set":{"A":"1"}}`)
		if status != tt.status || !strings.Contains(body, tt.contains) {
			t.Errorf("PATCH %s: got %d %s\nwant %d containing %s", tt.path, status, body, tt.status, tt.contains)
		}
	}
}

// TestClient_WaitProbation ensures a context made with
// WithProbationWait is what WaitsForProbation reports, and that the
// client turns it into the query the server reads back.
func TestClient_WaitProbation(t *testing.T) {
	ctx := WithProbationWait(context.Background())
	if !WaitsForProbation(ctx) || WaitsForProbation(context.Background()) {
		t.Fatal("WaitsForProbation does not report WithProbationWait")
	}
	q := addWait(ctx, nil)
	back, err := waitContext(context.Background(), q)
	if err != nil || !WaitsForProbation(back) || q.Encode() != "wait=probation" {
		t.Fatalf("query %q read back: %v, %v", q.Encode(), WaitsForProbation(back), err)
	}
	if q := addWait(context.Background(), nil); q != nil {
		t.Fatalf("query without wait = %v", q)
	}
}
