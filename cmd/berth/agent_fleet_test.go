package main

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// TestMain_ParseFleetFlags ensures fleet mode is off without --etcd,
// that --etcd and its settings (flags or environment, secrets from the
// environment only) make the agent's fleet config, and that a bad label
// is a usage error.
func TestMain_ParseFleetFlags(t *testing.T) {
	parse := func(env map[string]string, args ...string) (*Main, error) {
		m := &Main{Getenv: func(k string) string { return env[k] }, Stderr: &bytes.Buffer{}}
		return m, m.ParseFlags(append([]string{"--data-dir", t.TempDir()}, args...))
	}
	m, err := parse(nil)
	if err != nil || m.Config.Fleet != nil {
		t.Fatalf("without --etcd: fleet config %+v, %v; want none", m.Config.Fleet, err)
	}
	env := map[string]string{"BERTH_ETCD": "http://e1:2379,http://e2:2379", "BERTH_FLEET_TOKEN": "tok", "BERTH_ETCD_PASSWORD": "pw", "BERTH_LABELS": "zone=a"}
	m, err = parse(env, "--node", "web-1", "--labels", "zone=b,role=web", "--fleet-listen", ":7070", "--etcd-user", "berth")
	if err != nil {
		t.Fatal(err)
	}
	fc := m.Config.Fleet
	if fc == nil {
		t.Fatal("--etcd from the environment: no fleet config")
	}
	if !reflect.DeepEqual(fc.Endpoints, []string{"http://e1:2379", "http://e2:2379"}) || fc.Node != "web-1" || fc.Listen != ":7070" ||
		!reflect.DeepEqual(fc.Labels, map[string]string{"zone": "b", "role": "web"}) || fc.Token != "tok" ||
		fc.Username != "berth" || fc.Password != "pw" {
		t.Errorf("fleet config: %+v", fc)
	}
	_, err = parse(env, "--labels", "zone")
	var ue *usageError
	if !errors.As(err, &ue) {
		t.Errorf("--labels zone: want a usage error, got %v", err)
	}
	_, err = parse(env, "--etcd-cert", "/nonexistent.pem")
	if !errors.As(err, &ue) {
		t.Errorf("--etcd-cert without --etcd-key: want a usage error, got %v", err)
	}
}
