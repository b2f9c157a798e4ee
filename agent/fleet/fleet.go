package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/berth-dev/berth/agent/internal/notify"
	"github.com/hashicorp/go-hclog"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Fleet is fleet mode in one agent: it registers the node, watches the
// desired state, converges the node onto it, reports the node's status
// and drives the rollouts whose lock it holds. Create it with New and
// run it with Run.
type Fleet struct {
	cfg   Config
	log   hclog.Logger
	node  Node
	keys  keys
	tb    tarballs
	fetch *fetcher

	// mu guards view, session, failed, fetchErr, fetchTries, retryAt,
	// busy, driving and written. Never held across a call to etcd or to
	// the node.
	mu      sync.Mutex
	view    *view
	session *concurrency.Session // nil while etcd is unreachable
	failed  map[string]failure   // app -> the last local failure
	// fetchErr and fetchTries are, per app, why its build could not be
	// had yet and how many times in a row.
	fetchErr   map[string]string
	fetchTries map[string]uint
	retryAt    map[string]time.Time // no new attempt before
	busy       map[string]bool      // apps being converged
	driving    map[string]bool      // apps whose rollout this node drives
	written    map[string]string    // status key -> value written under the session
	addr       string               // the build endpoint's advertised address

	changed notify.Notifier // notified at every change of the view or the session
}

type failure struct {
	version int
	err     string
}

// New checks cfg and returns a Fleet for node. It starts nothing.
func New(cfg Config, node Node, log hclog.Logger) (*Fleet, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	tb := tarballs{dir: cfg.Dir}
	scheme, tr := "http", &http.Transport{}
	if cfg.PeerTLS != nil {
		scheme, tr.TLSClientConfig = "https", cfg.PeerTLS.Clone()
	}
	return &Fleet{
		cfg: cfg, log: log, node: node, keys: keys{prefix: cfg.Prefix}, tb: tb,
		fetch: &fetcher{tb: tb, peers: &http.Client{Transport: tr}, public: &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()},
			token: cfg.Token, scheme: scheme},
		view:     newView(),
		failed:   map[string]failure{},
		fetchErr: map[string]string{}, fetchTries: map[string]uint{}, retryAt: map[string]time.Time{},
		busy:    map[string]bool{},
		driving: map[string]bool{},
		written: map[string]string{},
	}, nil
}

// Run runs fleet mode until ctx ends, then returns nil. etcd being
// unreachable is not an error: the node keeps running what it runs and
// Run keeps trying to reach etcd.
func (f *Fleet) Run(ctx context.Context) error {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: f.cfg.Endpoints, TLS: f.cfg.TLS, Username: f.cfg.Username, Password: f.cfg.Password,
		DialKeepAliveTime: 5 * time.Second, DialKeepAliveTimeout: 3 * time.Second,
		Logger: zapLogger(),
	})
	if err != nil {
		return fmt.Errorf("fleet: etcd client: %w", err)
	}
	defer cli.Close()
	var ln net.Listener
	if f.cfg.Listen != "" {
		if ln, err = f.listen(); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	if ln != nil {
		srv := &buildServer{tb: f.tb, node: f.node, token: f.cfg.Token, log: f.log}
		wg.Go(func() {
			if err := srv.serve(ctx, ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				f.log.Error("build endpoint stopped", "error", err)
			}
		})
	}
	wg.Go(func() { f.keepSession(ctx, cli) })
	wg.Go(func() { f.watch(ctx, cli) })
	wg.Go(func() { f.converge(ctx) })
	wg.Go(func() { f.report(ctx, cli) })
	wg.Go(func() { f.drive(ctx, cli) })
	f.log.Info("fleet mode", "node", f.cfg.Node, "endpoints", f.cfg.Endpoints, "builds", f.addr)
	wg.Wait()
	f.fetch.close()
	return nil
}

// listen opens the build endpoint's listener and sets the advertised
// address.
func (f *Fleet) listen() (net.Listener, error) {
	ln, err := net.Listen("tcp", f.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("fleet: build endpoint: %w", err)
	}
	if f.cfg.PeerTLS != nil {
		ln = tlsListener(ln, f.cfg.PeerTLS)
	} else {
		f.log.Warn("the build endpoint is plain HTTP: its token and builds cross the network in clear; for development only (--fleet-cert, --fleet-key)")
	}
	f.addr = f.cfg.Advertise
	if f.addr == "" {
		f.addr = ln.Addr().String()
	}
	return ln, nil
}

// keepSession keeps a lease (a concurrency.Session) and the node's
// record under it, making a new one whenever the lease is lost.
func (f *Fleet) keepSession(ctx context.Context, cli *clientv3.Client) {
	for ctx.Err() == nil {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(f.cfg.LeaseTTL), concurrency.WithContext(ctx))
		if err == nil {
			err = f.register(ctx, cli, s)
		}
		if err != nil {
			if ctx.Err() == nil {
				f.log.Warn("etcd unreachable; running on", "error", err)
			}
			if s != nil {
				s.Orphan()
			}
			pause(ctx, f.cfg.Retry)
			continue
		}
		f.setSession(s)
		select {
		case <-ctx.Done():
			f.setSession(nil)
			// Give the lease up so the node disappears at once.
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = cli.Revoke(rctx, s.Lease())
			cancel()
			s.Orphan()
			return
		case <-s.Done():
			f.log.Warn("lost the etcd lease; registering again")
			f.setSession(nil)
		}
	}
}

// register writes the node's record under the session's lease.
func (f *Fleet) register(ctx context.Context, cli *clientv3.Client, s *concurrency.Session) error {
	val, err := encode(NodeInfo{Name: f.cfg.Node, Address: f.addr, Labels: f.cfg.Labels, Version: f.cfg.Version, Since: time.Now().UTC()})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := cli.Put(rctx, f.keys.node(f.cfg.Node), val, clientv3.WithLease(s.Lease())); err != nil {
		return fmt.Errorf("register node %s: %w", f.cfg.Node, err)
	}
	return nil
}

func (f *Fleet) setSession(s *concurrency.Session) {
	f.mu.Lock()
	f.session = s
	f.written = map[string]string{} // a new lease holds none of them
	f.mu.Unlock()
	f.changed.Notify()
}

func (f *Fleet) currentSession() *concurrency.Session {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.session
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
