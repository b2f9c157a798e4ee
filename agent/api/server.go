package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Backend serves the requests; required.
	Backend Backend
	// GID is the socket's group: peers whose primary or supplementary
	// groups contain it may connect, besides root and the agent's own
	// uid. A negative GID allows only root and the agent's uid.
	GID int
	// MaxUpload bounds a deploy upload; 0 means 8 GiB.
	MaxUpload int64
	// Version is the agent's version, sent in the Berth-Version header and
	// in /v1/info when the backend leaves it empty.
	Version string
	// ShutdownTimeout bounds the graceful shutdown when Serve's context
	// ends; 0 means 10 s. Open connections are closed after it.
	ShutdownTimeout time.Duration
	// WriteTimeout bounds each write of a streamed response, so a stuck
	// client cannot hold up the operation it follows; 0 means 30 s.
	WriteTimeout time.Duration
	// AfterRequest, if set, is called after each request has been
	// answered (the agent's image trim waits for quiet; see agent/trim.go).
	AfterRequest func()
}

// Server serves the Backend over HTTP on the agent's unix socket.
type Server struct {
	cfg ServerConfig
	log hclog.Logger
	mux *http.ServeMux
}

// NewServer returns a Server for cfg; it fills defaults and starts nothing.
func NewServer(cfg ServerConfig, log hclog.Logger) *Server {
	if cfg.MaxUpload <= 0 {
		cfg.MaxUpload = 8 << 30
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 30 * time.Second
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	s := &Server{cfg: cfg, log: log, mux: http.NewServeMux()}
	s.routes()
	return s
}

type serveCtxKey struct{}

// Serve serves HTTP on ln until ctx ends, then shuts down gracefully:
// request contexts (and so long streams such as `logs -f`) end with ctx,
// and Serve waits up to ShutdownTimeout for handlers to return. It
// returns nil after a shutdown caused by ctx, and closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	base := context.WithValue(ctx, serveCtxKey{}, ctx)
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return base },
		ConnContext: func(c context.Context, conn net.Conn) context.Context {
			return withPeer(c, peerOf(conn, s.cfg.GID))
		},
		ErrorLog: s.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true, ForceLevel: hclog.Debug}),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve api on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		s.log.Warn("api shutdown timed out; closing connections", "error", err)
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve api on %s: %w", ln.Addr(), err)
	}
	return nil
}

// ServeHTTP checks the peer's credentials and routes the request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.cfg.AfterRequest != nil {
		defer s.cfg.AfterRequest()
	}
	p, ok := peerFrom(r.Context())
	if !ok || !p.Allowed {
		s.log.Warn("refused socket peer", "uid", p.UID, "gid", p.GID, "pid", p.PID, "method", r.Method, "path", r.URL.Path, "error", p.Err)
		writeJSON(w, http.StatusForbidden, ErrorBody{
			Error: fmt.Sprintf("permission denied: uid %d is not root, not the agent's user and not in the socket's group", p.UID),
			Kind:  KindForbidden,
		})
		return
	}
	if s.cfg.Version != "" {
		w.Header().Set("Berth-Version", s.cfg.Version)
	}
	h, pattern := s.mux.Handler(r)
	if pattern == "" || path.Clean(r.URL.Path) != r.URL.Path {
		// The mux's own 404 or 405: answer in JSON like every other error.
		rec := &statusRecorder{header: http.Header{}}
		h.ServeHTTP(rec, r)
		if allow := rec.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		// Anything but a 405 is a 404. The API does not redirect: a
		// path that is not clean ("/v1//apps", "/v1/apps/../info") is
		// no endpoint, where the mux would answer with a redirect.
		status := http.StatusNotFound
		kind := KindNotFound
		msg := fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path)
		if rec.status == http.StatusMethodNotAllowed && pattern == "" {
			status = rec.status
			kind = KindInvalid
			msg = fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, rec.header.Get("Allow"))
		}
		writeJSON(w, status, ErrorBody{Error: msg, Kind: kind})
		return
	}
	if err := checkContentType(r, pattern); err != nil {
		s.writeError(w, r, err)
		return
	}
	// The mux, not h, sets the request's path values.
	s.mux.ServeHTTP(w, r)
}

// checkContentType refuses a request body that is not declared as what
// the endpoint takes: application/json everywhere but the deploy upload
// (the tarball's bytes). A request without a body passes.
func checkContentType(r *http.Request, pattern string) error {
	if r.ContentLength == 0 || r.Method == http.MethodGet || strings.HasSuffix(pattern, "/deploy") {
		return nil
	}
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err == nil && mt == "application/json" {
		return nil
	}
	got := "no Content-Type"
	if ct != "" {
		got = fmt.Sprintf("%.60q", ct)
	}
	return fmt.Errorf("%w: %s %s takes a JSON body with Content-Type: application/json, got %s", ErrMediaType, r.Method, r.URL.Path, got)
}

// statusRecorder captures the status the mux's fallback handler writes.
type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(p []byte) (int, error) { return len(p), nil }
func (r *statusRecorder) WriteHeader(status int)      { r.status = status }

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /v1/info", s.handleInfo)
	m.HandleFunc("GET /v1/apps", s.handleApps)
	m.HandleFunc("POST /v1/apps", s.handleCreateApp)
	m.HandleFunc("DELETE /v1/apps/{app}", s.handleDestroyApp)
	m.HandleFunc("PUT /v1/apps/{app}/user", s.handleSetUser)
	m.HandleFunc("POST /v1/apps/{app}/deploy", s.handleDeploy)
	m.HandleFunc("GET /v1/apps/{app}/releases", s.handleReleases)
	m.HandleFunc("GET /v1/apps/{app}/releases/{version}", s.handleRelease)
	m.HandleFunc("POST /v1/apps/{app}/rollback", s.handleRollback)
	m.HandleFunc("GET /v1/apps/{app}/config", s.handleConfig)
	m.HandleFunc("PATCH /v1/apps/{app}/config", s.handleSetConfig)
	m.HandleFunc("PUT /v1/apps/{app}/formation", s.handleScale)
	m.HandleFunc("GET /v1/apps/{app}/ps", s.handleProcesses)
	m.HandleFunc("GET /v1/ps", s.handleProcesses)
	m.HandleFunc("POST /v1/apps/{app}/restart", s.handleRestart)
	m.HandleFunc("GET /v1/apps/{app}/logs", s.handleLogs)
	m.HandleFunc("GET /v1/events", s.handleEvents)
	m.HandleFunc("POST /v1/apps/{app}/run", s.handleRun)
	m.HandleFunc("GET /metrics", s.handleMetrics)
}

// failure turns err into the wire error and its status, and logs it: as
// an error when the status says the agent failed (5xx), else at debug
// level, since the client hears about it.
func (s *Server) failure(r *http.Request, err error) (ErrorBody, int) {
	body := ErrorBody{Error: err.Error(), Kind: KindOf(err)}
	status := StatusOf(body.Kind)
	if status >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
	} else {
		s.log.Debug("request refused", "method", r.Method, "path", r.URL.Path, "status", status, "error", err)
	}
	return body, status
}

// writeError answers with err's status and ErrorBody.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	body, status := s.failure(r, err)
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v) //nolint:errcheck // the client went away; nothing to do
}

// orEmpty returns s, or an empty slice for nil, so a list answers [] and
// not null.
func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// reply writes v as JSON with status 200, or the error.
func (s *Server) reply(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request) {
	info, err := s.cfg.Backend.Info(r.Context())
	if info.Version == "" {
		info.Version = s.cfg.Version
	}
	s.reply(w, r, info, err)
}

func (s *Server) handleApps(w http.ResponseWriter, r *http.Request) {
	apps, err := s.cfg.Backend.Apps(r.Context())
	s.reply(w, r, orEmpty(apps), err)
}

func (s *Server) handleCreateApp(w http.ResponseWriter, r *http.Request) {
	req, err := decodeCreateApp(r.Body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	app, err := s.cfg.Backend.CreateApp(r.Context(), req.Name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, app)
}

func (s *Server) handleDestroyApp(w http.ResponseWriter, r *http.Request) {
	if err := s.cfg.Backend.DestroyApp(r.Context(), r.PathValue("app")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleSetUser(w http.ResponseWriter, r *http.Request) {
	req, err := decodeSetUser(r.Body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	app, err := s.cfg.Backend.SetAppUser(r.Context(), r.PathValue("app"), req.User)
	s.reply(w, r, app, err)
}

func (s *Server) handleDeploy(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	digest, err := checkDigest(q.Get("digest"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if q.Has("path") {
		// The agent runs as root: opening a client's path would read
		// any file of the host on the client's behalf.
		s.writeError(w, r, fmt.Errorf("%w: deploy: path= is not accepted: the agent opens no file for a client; send the tarball as the request body", ErrInvalid))
		return
	}
	req := DeployRequest{App: r.PathValue("app"), Digest: digest, Source: q.Get("source")}
	if req.Source == "" {
		req.Source = "api"
	}
	var limited *limitReader
	switch {
	case r.ContentLength == 0:
		s.writeError(w, r, fmt.Errorf("%w: deploy: empty upload: send the tarball as the request body", ErrInvalid))
		return
	case r.ContentLength > s.cfg.MaxUpload:
		s.writeError(w, r, fmt.Errorf("%w: deploy: upload of %d bytes is larger than the limit of %d bytes", ErrTooLarge, r.ContentLength, s.cfg.MaxUpload))
		return
	default:
		limited = &limitReader{r: r.Body, max: s.cfg.MaxUpload, what: "upload"}
		req.Body = limited
		// Progress is written while the body is still being read.
		if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
			s.log.Debug("full duplex unavailable", "error", err)
		}
	}
	s.progressOp(w, r, func(ctx context.Context, progress ProgressFunc) (Release, error) {
		rel, err := s.cfg.Backend.Deploy(ctx, req, progress)
		if err != nil && limited != nil && limited.tripd && !errors.Is(err, ErrTooLarge) {
			err = fmt.Errorf("%w: deploy: upload is larger than the limit of %d bytes: %v", ErrTooLarge, s.cfg.MaxUpload, err)
		}
		return rel, err
	})
}

func (s *Server) handleReleases(w http.ResponseWriter, r *http.Request) {
	rels, err := s.cfg.Backend.Releases(r.Context(), r.PathValue("app"))
	s.reply(w, r, orEmpty(rels), err)
}

func (s *Server) handleRelease(w http.ResponseWriter, r *http.Request) {
	v, err := ParseVersion(r.PathValue("version"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rel, err := s.cfg.Backend.Release(r.Context(), r.PathValue("app"), v)
	s.reply(w, r, rel, err)
}

func (s *Server) handleRollback(w http.ResponseWriter, r *http.Request) {
	req, err := decodeRollback(r.Body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	app := r.PathValue("app")
	s.progressOp(w, r, func(ctx context.Context, progress ProgressFunc) (Release, error) {
		return s.cfg.Backend.Rollback(ctx, app, req.Version, progress)
	})
}

func (s *Server) handleConfig(w http.ResponseWriter, r *http.Request) {
	cfg, err := s.cfg.Backend.Config(r.Context(), r.PathValue("app"))
	if cfg == nil {
		cfg = map[string]string{}
	}
	s.reply(w, r, cfg, err)
}

func (s *Server) handleSetConfig(w http.ResponseWriter, r *http.Request) {
	change, err := decodeConfigChange(r.Body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	app := r.PathValue("app")
	s.progressOp(w, r, func(ctx context.Context, progress ProgressFunc) (Release, error) {
		return s.cfg.Backend.SetConfig(ctx, app, change, progress)
	})
}

func (s *Server) handleScale(w http.ResponseWriter, r *http.Request) {
	f, err := decodeFormation(r.Body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	procs, err := s.cfg.Backend.Scale(r.Context(), r.PathValue("app"), f)
	s.reply(w, r, orEmpty(procs), err)
}

func (s *Server) handleProcesses(w http.ResponseWriter, r *http.Request) {
	procs, err := s.cfg.Backend.Processes(r.Context(), r.PathValue("app"))
	s.reply(w, r, orEmpty(procs), err)
}

func (s *Server) handleRestart(w http.ResponseWriter, r *http.Request) {
	if err := s.cfg.Backend.Restart(r.Context(), r.PathValue("app"), r.URL.Query().Get("target")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleLogs(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	n, err := intParam(v.Get("n"), "n", 100)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	follow, err := boolParam(v.Get("follow"), "follow")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q := LogQuery{Instance: v.Get("instance"), N: n}
	if since := v.Get("since"); since != "" {
		if q.Since, err = time.Parse(time.RFC3339Nano, since); err != nil {
			s.writeError(w, r, fmt.Errorf("%w: bad since %q, want a time such as 2026-12-02T23:10:00Z", ErrInvalid, since))
			return
		}
	}
	if rel := v.Get("release"); rel != "" {
		if q.Release, err = ParseVersion(rel); err != nil {
			s.writeError(w, r, fmt.Errorf("%w: bad release %q, want a version such as v3", ErrInvalid, rel))
			return
		}
	}
	app, ctx := r.PathValue("app"), r.Context()
	st := s.newStream(w)
	defer st.close()
	if follow {
		// The backend sends the stored lines and the new ones, and says
		// when it has accepted the request (FollowStarted): an error
		// before that is the response.
		err := s.cfg.Backend.FollowLogs(context.WithValue(ctx, followStartedKey{}, st.start), app, q,
			func(l LogLine) error { return st.send(l) })
		if err != nil && !st.started() {
			s.writeError(w, r, err)
			return
		}
		s.endFollow(r, st, err)
		return
	}
	lines, err := s.cfg.Backend.Logs(ctx, app, q)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st.start()
	for _, l := range lines {
		if st.send(l) != nil {
			return
		}
	}
}

// followStartedKey holds, in the context of a FollowLogs call, the
// function that starts the response stream.
type followStartedKey struct{}

// FollowStarted tells the server that a FollowLogs call has accepted its
// request (the app exists, the query is valid, what it follows is set
// up): it starts the response, so the client knows it is connected. A
// backend calls it once, before it sends the first line; outside a
// server's call it does nothing.
func FollowStarted(ctx context.Context) {
	if start, ok := ctx.Value(followStartedKey{}).(func()); ok {
		start()
	}
}

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := intParam(q.Get("limit"), "limit", 0)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	since, err := strconv.ParseUint(q.Get("since"), 10, 64)
	if q.Get("since") == "" {
		since, err = 0, nil
	}
	if err != nil {
		s.writeError(w, r, fmt.Errorf("%w: bad since %q, want an event sequence number", ErrInvalid, q.Get("since")))
		return
	}
	follow, err := boolParam(q.Get("follow"), "follow")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	app, ctx := q.Get("app"), r.Context()
	events, err := s.cfg.Backend.Events(ctx, app, since, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st := s.newStream(w)
	defer st.close()
	st.start()
	last := since
	for _, e := range events {
		if st.send(e) != nil {
			return
		}
		last = max(last, e.Seq)
	}
	if !follow {
		return
	}
	err = s.cfg.Backend.FollowEvents(ctx, app, last, func(e Event) error {
		if e.Seq <= last {
			return nil // already sent from the backlog
		}
		last = e.Seq
		return st.send(e)
	})
	s.endFollow(r, st, err)
}

// endFollow ends a follow stream: a backend error, or the agent shutting
// down, is sent as a last {"error": ...} line; a client that went away
// needs nothing.
func (s *Server) endFollow(r *http.Request, st *stream, err error) {
	serveCtx, _ := r.Context().Value(serveCtxKey{}).(context.Context)
	switch {
	case serveCtx != nil && serveCtx.Err() != nil:
		body := ErrorBody{Error: "the agent is shutting down", Kind: KindUnavailable}
		st.send(streamError{Error: &body}) //nolint:errcheck // last line
	case r.Context().Err() != nil, errors.Is(err, errStreamClosed):
	case err != nil:
		body, _ := s.failure(r, err)
		st.send(streamError{Error: &body}) //nolint:errcheck // last line
	}
}

// streamError is the last line of a log or event stream that failed.
type streamError struct {
	Error *ErrorBody `json:"error"`
}

// progressOp runs a long operation and streams its progress as NDJSON.
// An error before the first progress message is an ordinary JSON error
// response; after it, the last message carries the error.
//
// The operation's context does not end when the client goes away (a
// Ctrl-C of `berth deploy` after the upload must not leave a switch half
// done; the operation finishes and the event log records it), only when
// the server shuts down. An upload still fails when its client goes away,
// since its body ends early.
func (s *Server) progressOp(w http.ResponseWriter, r *http.Request, op func(context.Context, ProgressFunc) (Release, error)) {
	wctx, err := waitContext(context.WithoutCancel(r.Context()), r.URL.Query())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st := s.newStream(w)
	start := time.Now()
	ctx, cancel := context.WithCancel(wctx)
	defer cancel()
	if serveCtx, ok := r.Context().Value(serveCtxKey{}).(context.Context); ok {
		stop := context.AfterFunc(serveCtx, cancel)
		defer stop()
	}
	rel, err := op(ctx, func(p Progress) {
		if p.Time.IsZero() {
			p.Time = time.Now()
		}
		p.Done, p.Error, p.Release = false, nil, nil
		st.send(p) //nolint:errcheck // a client that went away is the backend's ctx ending
	})
	defer st.close()
	if err != nil {
		if !st.started() {
			s.writeError(w, r, err)
			return
		}
		body, _ := s.failure(r, err)
		st.send(Progress{Time: time.Now(), Step: "done", Message: "failed: " + body.Error, Elapsed: time.Since(start), Done: true, Error: &body}) //nolint:errcheck // last message
		return
	}
	st.send(Progress{ //nolint:errcheck // last message
		Time: time.Now(), Step: "done", Message: fmt.Sprintf("%s v%d is %s", rel.App, rel.Version, rel.Status),
		Elapsed: time.Since(start), Done: true, Release: &rel,
	})
}

var errStreamClosed = errors.New("stream closed")

// stream writes NDJSON messages, each flushed, from any goroutine.
type stream struct {
	w  http.ResponseWriter
	rc *http.ResponseController

	timeout time.Duration

	mu      sync.Mutex // guards the fields below and writes to w
	begun   bool       // the 200 header is written
	closed  bool       // the handler returned; later sends are dropped
	lastErr error      // the first write error; later sends fail with it
}

func (s *Server) newStream(w http.ResponseWriter) *stream {
	return &stream{w: w, rc: http.NewResponseController(w), timeout: s.cfg.WriteTimeout}
}

func (st *stream) started() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.begun
}

// start writes the header and flushes it, so a follower knows it is
// connected before the first message.
func (st *stream) start() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.begin()
	st.rc.Flush() //nolint:errcheck // surfaced by the next send
}

func (st *stream) begin() {
	if st.begun {
		return
	}
	st.begun = true
	st.w.Header().Set("Content-Type", "application/x-ndjson")
	st.w.Header().Set("X-Content-Type-Options", "nosniff")
	st.w.WriteHeader(http.StatusOK)
}

func (st *stream) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode stream message: %w", err)
	}
	b = append(b, '\n')
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		return errStreamClosed
	}
	if st.lastErr != nil {
		return st.lastErr
	}
	st.begin()
	st.rc.SetWriteDeadline(time.Now().Add(st.timeout)) //nolint:errcheck // not all writers support deadlines
	if _, err := st.w.Write(b); err != nil {
		st.lastErr = fmt.Errorf("write to client: %w", err)
		return st.lastErr
	}
	if err := st.rc.Flush(); err != nil {
		st.lastErr = fmt.Errorf("write to client: %w", err)
		return st.lastErr
	}
	return nil
}

// close drops any later send (from a backend goroutine that outlives the
// handler) and clears the write deadline.
func (st *stream) close() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.closed = true
	if st.begun {
		st.rc.SetWriteDeadline(time.Time{}) //nolint:errcheck // best effort
	}
}

func intParam(s, name string, def int) (int, error) {
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%w: bad %s %q, want a non-negative integer", ErrInvalid, name, s)
	}
	return n, nil
}

func boolParam(s, name string) (bool, error) {
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("%w: bad %s %q, want 1 or 0", ErrInvalid, name, s)
	}
	return b, nil
}

var _ io.Reader = (*limitReader)(nil)
