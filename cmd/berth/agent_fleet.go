package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/berth-dev/berth/agent/fleet"
	"github.com/spf13/pflag"
)

// fleetSettings are the agent's fleet-mode settings (--etcd and the
// flags that go with it). Without --etcd the agent is the single-VM
// agent and every other fleet setting is ignored.
type fleetSettings struct {
	Etcd                      []string
	EtcdCert, EtcdKey, EtcdCA string
	EtcdUser, EtcdPassword    string
	Prefix                    string
	Node                      string
	Labels                    string
	Listen, Advertise         string
	PeerCert, PeerKey, PeerCA string
	Token                     string
}

func strSetting(flag, env, usage string, field func(m *settings) *string) agentSetting {
	return agentSetting{flag, env, func(fs *pflag.FlagSet, m *settings, n, u string) { fs.StringVar(field(m), n, "", u) }, usage}
}

// fleetAgentSettings are appended to agentSettings.
var fleetAgentSettings = []agentSetting{
	{"etcd", "BERTH_ETCD", func(fs *pflag.FlagSet, m *settings, n, u string) { fs.StringSliceVar(&m.Fleet.Etcd, n, nil, u) },
		"fleet mode: etcd client URLs (comma-separated); without it the agent uses no etcd"},
	strSetting("etcd-cert", "BERTH_ETCD_CERT", "fleet mode: client certificate (PEM) for etcd", func(m *settings) *string { return &m.Fleet.EtcdCert }),
	strSetting("etcd-key", "BERTH_ETCD_KEY", "fleet mode: its key (PEM)", func(m *settings) *string { return &m.Fleet.EtcdKey }),
	strSetting("etcd-ca", "BERTH_ETCD_CA", "fleet mode: CA (PEM) that verifies etcd", func(m *settings) *string { return &m.Fleet.EtcdCA }),
	strSetting("etcd-user", "BERTH_ETCD_USER", "fleet mode: etcd user (its password from $BERTH_ETCD_PASSWORD)", func(m *settings) *string { return &m.Fleet.EtcdUser }),
	strSetting("etcd-prefix", "BERTH_ETCD_PREFIX", "fleet mode: key prefix in etcd (default "+fleet.DefaultPrefix+")", func(m *settings) *string { return &m.Fleet.Prefix }),
	strSetting("node", "BERTH_NODE", "fleet mode: this node's name (default: the host name)", func(m *settings) *string { return &m.Fleet.Node }),
	strSetting("labels", "BERTH_LABELS", "fleet mode: this node's labels, k=v,... (placements match them)", func(m *settings) *string { return &m.Fleet.Labels }),
	strSetting("fleet-listen", "BERTH_FLEET_LISTEN", "fleet mode: address of the build endpoint other nodes fetch builds from, e.g. :7070 (default: none)", func(m *settings) *string { return &m.Fleet.Listen }),
	strSetting("fleet-advertise", "BERTH_FLEET_ADVERTISE", "fleet mode: host:port other nodes reach the build endpoint at (default: its listen address)", func(m *settings) *string { return &m.Fleet.Advertise }),
	strSetting("fleet-cert", "BERTH_FLEET_CERT", "fleet mode: the build endpoint's certificate (PEM); without it the endpoint is plain HTTP, for development only", func(m *settings) *string { return &m.Fleet.PeerCert }),
	strSetting("fleet-key", "BERTH_FLEET_KEY", "fleet mode: its key (PEM)", func(m *settings) *string { return &m.Fleet.PeerKey }),
	strSetting("fleet-ca", "BERTH_FLEET_CA", "fleet mode: CA (PEM) that verifies the other nodes' build endpoints", func(m *settings) *string { return &m.Fleet.PeerCA }),
}

// fleetConfig turns the settings into the agent's fleet config (nil
// without --etcd). Secrets come from the environment only:
// BERTH_ETCD_PASSWORD and BERTH_FLEET_TOKEN.
func (s fleetSettings) fleetConfig(getenv func(string) string) (*fleet.Config, error) {
	if len(s.Etcd) == 0 {
		return nil, nil
	}
	etcdTLS, err := fleet.LoadTLS(s.EtcdCert, s.EtcdKey, s.EtcdCA)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	peerTLS, err := fleet.LoadTLS(s.PeerCert, s.PeerKey, s.PeerCA)
	if err != nil {
		return nil, fmt.Errorf("build endpoint: %w", err)
	}
	labels, err := parseLabels(s.Labels)
	if err != nil {
		return nil, err
	}
	node := s.Node
	if node == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("node name: %w (set --node)", err)
		}
		node = strings.ToLower(h)
	}
	return &fleet.Config{Endpoints: s.Etcd, TLS: etcdTLS, Username: s.EtcdUser, Password: getenv("BERTH_ETCD_PASSWORD"),
		Prefix: s.Prefix, Node: node, Labels: labels, Listen: s.Listen, Advertise: s.Advertise, PeerTLS: peerTLS,
		Token: getenv("BERTH_FLEET_TOKEN")}, nil
}

// parseLabels parses k=v,k2=v2.
func parseLabels(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}
