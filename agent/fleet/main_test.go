package fleet_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/agent/fleet"
	"github.com/berth-dev/berth/supervisor"
)

// helperEnv makes the test binary run a fleet agent instead of the
// tests, configured by the JSON of a helperConfig: each node of the
// tests is a real agent process of its own (one supervisor per process).
const helperEnv = "BERTH_FLEET_TEST_AGENT"

// helperConfig is what a test tells a helper agent.
type helperConfig struct {
	DataDir, Socket, Node string
	BasePort              int
	Endpoints             []string
	Labels                map[string]string
	Cert, Key, CA, Token  string
	Retention             int // 0: the agent's default
	// EtcdCert, EtcdKey and EtcdCA, set, reach etcd over TLS with a
	// client certificate.
	EtcdCert, EtcdKey, EtcdCA string
	// EtcdUser and EtcdPassword, set, authenticate to etcd.
	EtcdUser, EtcdPassword string
}

func TestMain(m *testing.M) {
	if js := os.Getenv(helperEnv); js != "" {
		os.Exit(runHelperAgent(js))
	}
	goleak.VerifyTestMain(m,
		// The members' peer streams (rafthttp, HTTP between members in
		// this process) end a moment after the cluster closed.
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).abortPendingRead"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
	)
}

// runHelperAgent runs an agent in fleet mode until SIGTERM.
func runHelperAgent(js string) int {
	var hc helperConfig
	if err := json.Unmarshal([]byte(js), &hc); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	peerTLS, err := fleet.LoadTLS(hc.Cert, hc.Key, hc.CA)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	etcdTLS, err := fleet.LoadTLS(hc.EtcdCert, hc.EtcdKey, hc.EtcdCA)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cfg := agent.Config{
		DataDir: hc.DataDir, SocketPath: hc.Socket, BasePort: hc.BasePort,
		StopTimeout: 2 * time.Second, LockTimeout: time.Second,
		Backoff:      supervisor.Backoff{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond, Settle: 300 * time.Millisecond},
		StartTimeout: 15 * time.Second, Probation: 300 * time.Millisecond, Version: "test", NoSteer: true,
		Retention: hc.Retention,
		Fleet: &fleet.Config{
			Endpoints: hc.Endpoints, TLS: etcdTLS, Username: hc.EtcdUser, Password: hc.EtcdPassword,
			Node: hc.Node, Labels: hc.Labels,
			Listen: "127.0.0.1:0", PeerTLS: peerTLS, Token: hc.Token,
			LeaseTTL: 3, StatusInterval: 200 * time.Millisecond, Retry: 100 * time.Millisecond,
		},
	}
	a, err := agent.New(cfg, hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Info}))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := a.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
