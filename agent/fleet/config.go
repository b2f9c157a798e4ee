package fleet

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"regexp"
	"sync"
	"time"
)

// Node is what fleet mode needs of the local agent: the agent implements
// it, and fleet knows nothing else of the agent's internals.
type Node interface {
	// Apply makes the app run r as a local release recording r.Version,
	// through the same switch as a local deploy (release phase, health
	// checks, probation, local rollback), and returns once it passed its
	// probation or failed. It does nothing when the app's active release
	// already runs r's content. The build must have been imported.
	Apply(ctx context.Context, r Release) error
	// AppStatus says what the node runs of the app (the zero value when
	// the app does not exist).
	AppStatus(ctx context.Context, app string) (LocalStatus, error)
	// Stop stops every instance of an app whose active release is a
	// fleet release, as if every process type were scaled to 0, and
	// records that the fleet stopped it, so a restarted agent does not
	// start it; its releases and builds stay. It does nothing to an app
	// that does not exist, has no active release or whose active
	// release is not a fleet release. Apply starts the app again.
	Stop(ctx context.Context, app string) error
	// HasBuild reports whether the build is imported.
	HasBuild(digest string) bool
	// ImportBuild imports a tarball whose SHA-256 must be digest.
	ImportBuild(ctx context.Context, body io.Reader, digest string) error
}

// LocalStatus is what a node runs of an app, from the agent's own store.
type LocalStatus struct {
	// Version is the fleet version of the active local release (0: none,
	// or not a fleet release).
	Version int
	// Healthy and Instances count the active release's instances up
	// and in all.
	Healthy, Instances int
	// Failed is the fleet version of a local release newer than the
	// active one that failed (0: none), and Reason why: the agent's
	// record, so a restarted agent does not try it again.
	Failed int
	Reason string
	// Stopped says the fleet stopped the app here (Node.Stop) and
	// nothing started it since.
	Stopped bool
}

// Config is fleet mode's configuration. The zero value of each field
// says what it means when left unset.
type Config struct {
	// Endpoints are the etcd client URLs; required.
	Endpoints []string
	// TLS, when set, is used to reach etcd (client certificates, CA).
	TLS *tls.Config
	// Username and Password authenticate to etcd when Username is set.
	Username, Password string
	// Prefix is the key prefix in etcd; "" means DefaultPrefix.
	Prefix string
	// Node is this node's name; required (the agent defaults it to the
	// host name).
	Node string
	// Labels are this node's labels, matched by placements.
	Labels map[string]string
	// Dir is where fetched and uploaded tarballs are kept, by digest, to
	// be served to other nodes; required.
	Dir string
	// Listen is the address of the build endpoint (host:port); "" means
	// no endpoint: the node fetches builds but serves none.
	Listen string
	// Advertise is the address other nodes reach the build endpoint at;
	// "" means Listen's actual address.
	Advertise string
	// PeerTLS serves the build endpoint over TLS and is used to fetch
	// from other nodes (its RootCAs verifies them); nil means plain HTTP,
	// for development only.
	PeerTLS *tls.Config
	// Token authenticates requests to the build endpoint (a bearer
	// token every node shares); required with Listen.
	Token string
	// Version is the agent's version, shown in the node's record.
	Version string
	// LeaseTTL is the lease of the node's records, in seconds; 0 means
	// DefaultLeaseTTL. A node gone for longer disappears from etcd.
	LeaseTTL int
	// StatusInterval is how often the node refreshes its status records;
	// 0 means DefaultStatusInterval.
	StatusInterval time.Duration
	// WaveTimeout is how long a wave of a rollout this node drives may
	// take before the rollout fails, unless the rollout says; 0 means
	// DefaultWaveTimeout.
	WaveTimeout time.Duration
	// Retry is the pause before reconnecting after etcd failed; 0 means
	// DefaultRetry.
	Retry time.Duration
}

// Defaults.
const (
	DefaultPrefix         = "/berth/"
	DefaultLeaseTTL       = 10
	DefaultStatusInterval = 5 * time.Second
	// DefaultWaveTimeout is above what one switch may take with the
	// agent's defaults: a release phase (10 min), the start (60 s) and
	// the probation (30 s).
	DefaultWaveTimeout = 15 * time.Minute
	DefaultRetry       = time.Second
)

var nameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`) })

func (c Config) withDefaults() Config {
	c.Prefix = normPrefix(c.Prefix)
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.StatusInterval <= 0 {
		c.StatusInterval = DefaultStatusInterval
	}
	if c.WaveTimeout <= 0 {
		c.WaveTimeout = DefaultWaveTimeout
	}
	if c.Retry <= 0 {
		c.Retry = DefaultRetry
	}
	return c
}

func (c Config) validate() error {
	switch {
	case len(c.Endpoints) == 0:
		return fmt.Errorf("%w: fleet: no etcd endpoints", ErrInvalid)
	case !nameRE().MatchString(c.Node):
		return fmt.Errorf("%w: fleet: node name %q: want lower-case letters, digits, '.', '_' or '-' (at most 63)", ErrInvalid, c.Node)
	case c.Dir == "":
		return fmt.Errorf("%w: fleet: no directory for builds", ErrInvalid)
	case c.Listen != "" && c.Token == "":
		return fmt.Errorf("%w: fleet: the build endpoint needs a token", ErrInvalid)
	}
	for k := range c.Labels {
		if !nameRE().MatchString(k) {
			return fmt.Errorf("%w: fleet: label %q: want lower-case letters, digits, '.', '_' or '-'", ErrInvalid, k)
		}
	}
	return nil
}
