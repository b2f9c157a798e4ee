package fleet_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// cluster is an embedded etcd cluster in the test process: real members
// talking over real TCP, with their own data dirs.
type cluster struct {
	members []*embed.Etcd
	clients []string // each member's client URL
}

// freePort returns a TCP port free at the time of the call.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startCluster starts an n-member etcd cluster, stopped at the end of
// the test.
func startCluster(t testing.TB, n int) *cluster {
	t.Helper()
	return startClusterTLS(t, n, nil)
}

// startClusterTLS starts a cluster whose clients must connect over TLS
// with a certificate tls's CA signed (tls nil: plain HTTP).
//
// The ports are probed free, then bound by etcd: in between, another
// test's connection may take one (they come from the ephemeral range), so
// a start that finds a port taken is tried again with fresh ports.
func startClusterTLS(t testing.TB, n int, tls *transport.TLSInfo) *cluster {
	t.Helper()
	for attempt := 1; ; attempt++ {
		c, err := tryStartCluster(t, n, tls)
		if err == nil {
			return c
		}
		inUse := errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
		if !inUse || attempt == 5 {
			t.Fatal(err)
		}
		t.Logf("etcd cluster start, attempt %d: %v; again with other ports", attempt, err)
	}
}

// tryStartCluster starts the cluster once; on an error the members it
// started are stopped.
func tryStartCluster(t testing.TB, n int, tls *transport.TLSInfo) (*cluster, error) {
	c := &cluster{}
	var peers []string
	cfgs := make([]*embed.Config, n)
	for i := range n {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(t.TempDir(), cfg.Name)
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		peer := mustURL(t, fmt.Sprintf("http://127.0.0.1:%d", freePort(t)))
		scheme := "http"
		if tls != nil {
			scheme = "https"
			cfg.ClientTLSInfo = *tls
		}
		client := mustURL(t, fmt.Sprintf("%s://127.0.0.1:%d", scheme, freePort(t)))
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.ListenMetricsUrls = nil
		cfgs[i] = cfg
		peers = append(peers, cfg.Name+"="+peer.String())
		c.clients = append(c.clients, client.String())
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	c.members = make([]*embed.Etcd, n)
	for i, cfg := range cfgs {
		cfg.InitialCluster = strings.Join(peers, ",")
		cfg.InitialClusterToken = "berth-test"
		wg.Go(func() { c.members[i], errs[i] = embed.StartEtcd(cfg) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			c.close()
			return nil, fmt.Errorf("start etcd member %d: %w", i, err)
		}
	}
	t.Cleanup(c.close)
	for i, m := range c.members {
		select {
		case <-m.Server.ReadyNotify():
		case <-time.After(30 * time.Second):
			return nil, fmt.Errorf("etcd member %d not ready after 30s", i)
		}
	}
	return c, nil
}

// live returns the client URLs of the members not killed.
func (c *cluster) live() []string {
	var out []string
	for i, m := range c.members {
		if m != nil {
			out = append(out, c.clients[i])
		}
	}
	return out
}

// kill stops member i at once.
func (c *cluster) kill(i int) {
	if c.members[i] != nil {
		c.members[i].Close()
		c.members[i] = nil
	}
}

func (c *cluster) close() {
	for i := range c.members {
		c.kill(i)
	}
}

// leader returns the index of the leader member.
func (c *cluster) leader() int {
	for i, m := range c.members {
		if m != nil && m.Server.Leader() == m.Server.MemberID() {
			return i
		}
	}
	return -1
}

func mustURL(t testing.TB, s string) url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return *u
}

// proxy forwards TCP connections to target until cut: then it drops
// every connection and refuses new ones, until restored. It stands for
// the network between an agent and etcd.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex // guards cut and conns
	cut   bool
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: strings.TrimPrefix(target, "http://"), conns: map[net.Conn]bool{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		ln.Close()
		p.setCut(true)
		p.wg.Wait()
	})
	return p
}

func (p *proxy) url() string { return "http://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			in.Close()
			continue
		}
		p.conns[in], p.conns[out] = true, true
		p.mu.Unlock()
		p.wg.Go(func() { io.Copy(out, in); out.Close() })
		p.wg.Go(func() { io.Copy(in, out); in.Close() })
	}
}

// setCut cuts the link (true) or restores it.
func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// writeCerts writes a CA and a certificate for 127.0.0.1 signed by it,
// and returns their paths (cert, key, ca).
func writeCerts(t *testing.T) (string, string, string) {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "berth test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "berth node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	caCert, _ := x509.ParseCertificate(caDER)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("node.pem", "CERTIFICATE", der), write("node-key.pem", "EC PRIVATE KEY", keyDER), write("ca.pem", "CERTIFICATE", caDER)
}
