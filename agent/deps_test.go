package agent_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// berthMod is the import path prefix of berth's own packages.
const berthMod = "github.com/berth-dev/berth/"

// leaves are berth's leaf packages and what each may import: the rules
// their doc.go files state, kept here so that a build breaks them in a
// test rather than in review.
var leaves = []struct {
	pkg    string   // below berthMod
	allow  []string // the only berth packages it may import, below berthMod
	forbid []string // other packages it must not import
}{
	{pkg: "state", forbid: []string{"net", "os/exec"}}, // no process, no network
	{pkg: "state/build"},
	{pkg: "supervisor", forbid: []string{"go.etcd.io/bbolt", "net/http"}}, // no releases, bbolt or HTTP
	{pkg: "systemd"},
	{pkg: "agent/api"}, // above all not agent, which implements its Backend
	{pkg: "agent/health"},
	{pkg: "agent/rollout"},         // pure planning: no processes, files or network
	{pkg: "agent/internal/procfs"}, // parsing /proc and sock_diag only
	{pkg: "agent/internal/promtext", forbid: []string{"github.com/prometheus/common/expfmt"}}, // the format only; Prometheus's parser in its tests alone
	{pkg: "agent/internal/steer"}, // the sk_lookup program and its maps only
	// Fleet mode talks to the agent through its Node interface only, and
	// the agent binary never links etcd's server.
	{pkg: "agent/fleet", allow: []string{"agent/internal/notify"}, forbid: []string{"go.etcd.io/etcd/server/v3/embed", "go.etcd.io/bbolt"}},
	{pkg: "agent/internal/notify"}, // a wake-up for any number of waiters
}

// TestDeps ensures berth's leaf packages stay leaves: none imports package
// agent or any other berth package beyond those it is allowed, directly
// or through another package, nor a package its doc rules out. As
// tailscale's cmd/tailscaled/deps_test.go does, it reads the import graph
// from `go list -deps`; only non-test imports count (a leaf's external
// tests may use more).
func TestDeps(t *testing.T) {
	args := []string{"list", "-deps", "-json=ImportPath,Imports"}
	for _, l := range leaves {
		args = append(args, berthMod+l.pkg)
	}
	cmd := exec.Command("go", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	imports := map[string][]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		imports[p.ImportPath] = p.Imports
	}

	for _, l := range leaves {
		root := berthMod + l.pkg
		if _, ok := imports[root]; !ok {
			t.Errorf("go list did not list %s", root)
			continue
		}
		parent := importedVia(imports, root)
		for _, dep := range slices.Sorted(maps.Keys(parent)) {
			own, isBerth := strings.CutPrefix(dep, berthMod)
			badBerth := isBerth && dep != root && !slices.Contains(l.allow, own)
			if badBerth || slices.Contains(l.forbid, dep) {
				t.Errorf("%s imports %s, which it must not (%s)", l.pkg, dep, importChain(parent, dep))
			}
		}
	}
}

// importedVia walks the import graph from root and returns, for each
// package reached, the package it was first reached from (breadth first,
// so along a shortest chain).
func importedVia(imports map[string][]string, root string) map[string]string {
	parent := map[string]string{}
	queue := []string{root}
	for len(queue) > 0 {
		pkg := queue[0]
		queue = queue[1:]
		for _, imp := range imports[pkg] {
			if _, seen := parent[imp]; seen || imp == root {
				continue
			}
			parent[imp] = pkg
			queue = append(queue, imp)
		}
	}
	return parent
}

// importChain returns how the root of parent reaches dep: "state/build ->
// agent/api -> agent", with berth's packages shortened.
func importChain(parent map[string]string, dep string) string {
	chain := []string{strings.TrimPrefix(dep, berthMod)}
	for p := parent[dep]; p != ""; p = parent[p] { // root has no parent
		chain = append(chain, strings.TrimPrefix(p, berthMod))
	}
	slices.Reverse(chain)
	return strings.Join(chain, " -> ")
}
