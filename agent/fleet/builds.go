package fleet

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Builds travel by digest: etcd names a release's build, and a node that
// lacks it fetches the tarball from another node's build endpoint or
// from the release's URL, verifying its SHA-256 before it imports it.
// Every tarball a node uploads or fetches is kept in Config.Dir, by
// digest, to serve the nodes that come after.

// MaxTarball is the largest tarball a node keeps or serves: the build
// store unpacks at most 4 GiB either.
const MaxTarball = 4 << 30

var digestRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{64}$`) })

// ValidateDigest refuses anything but a lower-case SHA-256 hex digest.
func ValidateDigest(d string) error {
	if !digestRE().MatchString(d) {
		return fmt.Errorf("%w: build digest %q: want 64 lower-case hex digits (SHA-256)", ErrInvalid, d)
	}
	return nil
}

// tarballs is the directory of kept tarballs, one file per digest.
type tarballs struct{ dir string }

func (t tarballs) path(digest string) string { return filepath.Join(t.dir, digest+".tar") }

// open opens the kept tarball of digest.
func (t tarballs) open(digest string) (*os.File, error) {
	if err := ValidateDigest(digest); err != nil {
		return nil, err
	}
	return os.Open(t.path(digest))
}

// put writes r to the tarball of digest (temp file, fsync, rename) if
// its SHA-256 is digest, and refuses it, keeping nothing, otherwise.
func (t tarballs) put(r io.Reader, digest string) (err error) {
	if err := ValidateDigest(digest); err != nil {
		return err
	}
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return fmt.Errorf("keep build %s: %w", digest[:12], err)
	}
	f, err := os.CreateTemp(t.dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("keep build %s: %w", digest[:12], err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, MaxTarball+1))
	if err != nil {
		return fmt.Errorf("keep build %s: %w", digest[:12], err)
	}
	if n > MaxTarball {
		return fmt.Errorf("%w: build %s: larger than %d bytes", ErrInvalid, digest[:12], int64(MaxTarball))
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != digest {
		return fmt.Errorf("%w: build %s: the tarball's SHA-256 is %s", ErrInvalid, digest[:12], got[:12])
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("keep build %s: %w", digest[:12], err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("keep build %s: %w", digest[:12], err)
	}
	return os.Rename(f.Name(), t.path(digest))
}

// buildServer is the build endpoint: GET and PUT /v1/builds/DIGEST with
// the fleet's bearer token. A PUT keeps the tarball (verified) and
// imports it into the local agent.
type buildServer struct {
	tb    tarballs
	node  Node
	token string
	log   hclog.Logger
}

func (s *buildServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) != 1 {
		http.Error(w, ErrUnauthorized.Error(), http.StatusUnauthorized)
		return
	}
	digest, ok := strings.CutPrefix(r.URL.Path, "/v1/builds/")
	if !ok || ValidateDigest(digest) != nil {
		http.Error(w, "want /v1/builds/SHA256", http.StatusNotFound)
		return
	}
	switch r.Method {
	case http.MethodGet:
		f, err := s.tb.open(digest)
		if err != nil {
			http.Error(w, "no such build", http.StatusNotFound)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		io.Copy(w, f)
	case http.MethodPut:
		if err := s.tb.put(r.Body, digest); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := s.importKept(r.Context(), digest); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.log.Info("build uploaded", "build", digest[:12])
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, "GET or PUT", http.StatusMethodNotAllowed)
	}
}

// importKept imports the kept tarball of digest into the agent.
func (s *buildServer) importKept(ctx context.Context, digest string) error {
	if s.node.HasBuild(digest) {
		return nil
	}
	f, err := s.tb.open(digest)
	if err != nil {
		return err
	}
	defer f.Close()
	return s.node.ImportBuild(ctx, f, digest)
}

// serve runs the build endpoint on ln until ctx ends.
func (s *buildServer) serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }() // owned: serve waits for it
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-done
		return nil
	}
}

// fetcher downloads builds from other nodes or URLs.
type fetcher struct {
	tb     tarballs
	peers  *http.Client // with PeerTLS, for the build endpoints
	public *http.Client // for a release's URL: the system's roots, no token
	token  string
	scheme string // "https" with PeerTLS, else "http"
}

// source is where a build may be: a node's build endpoint (peer: gets
// the token) or a release's URL.
type source struct {
	url  string
	peer bool
}

// fetch gets the tarball of digest into the kept tarballs from the
// first of sources that gives one with that SHA-256.
func (f *fetcher) fetch(ctx context.Context, digest string, sources []source) error {
	var errs []error
	for _, src := range sources {
		err := f.get(ctx, src, digest)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("no node with a build endpoint and no URL"))
	}
	return fmt.Errorf("%w: %s: %w", ErrBuildUnavailable, digest[:12], errors.Join(errs...))
}

func (f *fetcher) get(ctx context.Context, src source, digest string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src.url, nil)
	if err != nil {
		return err
	}
	client := f.public
	if src.peer {
		client = f.peers
		req.Header.Set("Authorization", "Bearer "+f.token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", src.url, resp.Status)
	}
	if err := f.tb.put(resp.Body, digest); err != nil {
		return fmt.Errorf("GET %s: %w", src.url, err)
	}
	return nil
}

// peerSource is digest on the build endpoint at addr.
func (f *fetcher) peerSource(addr, digest string) source {
	return source{url: f.scheme + "://" + addr + "/v1/builds/" + digest, peer: true}
}

// close closes the idle connections.
func (f *fetcher) close() {
	f.peers.CloseIdleConnections()
	f.public.CloseIdleConnections()
}

// digests lists the digests of the kept tarballs.
func (t tarballs) digests() ([]string, error) {
	entries, err := os.ReadDir(t.dir)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if d, ok := strings.CutSuffix(e.Name(), ".tar"); ok && ValidateDigest(d) == nil {
			out = append(out, d)
		}
	}
	return out, nil
}

// pruneTarballs removes the kept tarballs the fleet no longer needs: a
// build neither the agent keeps (it garbage-collects builds past its
// retention) nor a release or rollout in the view names.
func (f *Fleet) pruneTarballs() {
	f.mu.Lock()
	wanted := map[string]bool{}
	for _, r := range f.view.releases {
		wanted[r.Build] = true
	}
	for _, ro := range f.view.rollouts {
		wanted[ro.To.Build] = true
	}
	f.mu.Unlock()
	ds, err := f.tb.digests()
	if err != nil {
		f.log.Warn("list kept builds", "error", err)
		return
	}
	for _, d := range ds {
		if wanted[d] || f.node.HasBuild(d) {
			continue
		}
		if err := os.Remove(f.tb.path(d)); err == nil {
			f.log.Info("removed kept build", "build", short(d))
		}
	}
}
