package fleet

import (
	"fmt"
	"reflect"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestPlaced ensures placement picks the nodes with every label, in name
// order, at most Count of them.
func TestPlaced(t *testing.T) {
	nodes := map[string]NodeInfo{
		"c": {Labels: map[string]string{"role": "web", "zone": "a"}},
		"a": {Labels: map[string]string{"role": "web", "zone": "b"}},
		"b": {Labels: map[string]string{"role": "db"}},
	}
	for _, tc := range []struct {
		name string
		p    Placement
		want []string
	}{
		{"all", Placement{}, []string{"a", "b", "c"}},
		{"label", Placement{Labels: map[string]string{"role": "web"}}, []string{"a", "c"}},
		{"two labels", Placement{Labels: map[string]string{"role": "web", "zone": "a"}}, []string{"c"}},
		{"count", Placement{Count: 2}, []string{"a", "b"}},
		{"none match", Placement{Labels: map[string]string{"role": "cache"}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Placed(tc.p, nodes); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Placed(%+v) = %v, want %v", tc.p, got, tc.want)
			}
		})
	}
}

// TestWaves ensures nodes are split in order into waves of the size
// asked, 0 meaning one wave.
func TestWaves(t *testing.T) {
	nodes := []string{"a", "b", "c", "d", "e"}
	for _, tc := range []struct {
		size int
		want [][]string
	}{
		{0, [][]string{{"a", "b", "c", "d", "e"}}},
		{1, [][]string{{"a"}, {"b"}, {"c"}, {"d"}, {"e"}}},
		{2, [][]string{{"a", "b"}, {"c", "d"}, {"e"}}},
		{9, [][]string{{"a", "b", "c", "d", "e"}}},
	} {
		if got := Waves(nodes, tc.size); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Waves(size %d) = %v, want %v", tc.size, got, tc.want)
		}
	}
	if got := Waves(nil, 2); got != nil {
		t.Errorf("Waves of no nodes = %v, want none", got)
	}
}

// TestTarget ensures a node a running rollout reached runs its release,
// every other placed node the app's release, and a failed rollout sends
// its nodes back.
func TestTarget(t *testing.T) {
	v1, v2 := &Release{Version: 1}, Release{Version: 2}
	running := &Rollout{To: v2, State: RolloutRunning, Waves: [][]string{{"a"}, {"b"}}, Wave: 0}
	failed := &Rollout{To: v2, State: RolloutFailed, Waves: [][]string{{"a"}, {"b"}}, Wave: 0}
	for _, tc := range []struct {
		name    string
		node    string
		placed  bool
		rel     *Release
		ro      *Rollout
		want    int
		wantAny bool
	}{
		{"reached", "a", true, v1, running, 2, true},
		{"not reached yet", "b", true, v1, running, 1, true},
		{"failed: back", "a", true, v1, failed, 1, true},
		{"not placed", "c", false, v1, running, 0, false},
		{"first deploy, not reached", "b", true, nil, running, 0, false},
		{"first deploy, reached", "a", true, nil, running, 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Target(tc.node, tc.placed, tc.rel, tc.ro)
			if ok != tc.wantAny || got.Version != tc.want {
				t.Errorf("Target = v%d, %v; want v%d, %v", got.Version, ok, tc.want, tc.wantAny)
			}
		})
	}
}

// TestCheckWave ensures a wave is up only once every live node reports
// the version up past its probation, and failed as soon as one failed.
func TestCheckWave(t *testing.T) {
	live := map[string]NodeInfo{"a": {}, "b": {}}
	up := Status{Version: 2, Healthy: 1, Instances: 1}
	for _, tc := range []struct {
		name     string
		wave     []string
		statuses map[string]Status
		want     WaveResult
	}{
		{"all up", []string{"a", "b"}, map[string]Status{"a": up, "b": up}, WaveUp},
		{"one silent", []string{"a", "b"}, map[string]Status{"a": up}, WavePending},
		{"one switching", []string{"a", "b"}, map[string]Status{"a": up, "b": {Version: 2, Healthy: 1, Instances: 1, Switching: true}}, WavePending},
		{"one unhealthy", []string{"a", "b"}, map[string]Status{"a": up, "b": {Version: 2, Healthy: 0, Instances: 1}}, WavePending},
		{"one failed", []string{"a", "b"}, map[string]Status{"a": up, "b": {Version: 1, Failed: 2, Error: "check"}}, WaveFailed},
		{"gone node skipped", []string{"a", "gone"}, map[string]Status{"a": up}, WaveUp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, reason := CheckWave(tc.wave, 2, tc.statuses, live); got != tc.want {
				t.Errorf("CheckWave = %v (%s), want %v", got, reason, tc.want)
			}
		})
	}
}

// TestKeys_Parse ensures the view tells berth's keys apart and ignores
// any other.
func TestKeys_Parse(t *testing.T) {
	k := keys{prefix: "/berth/"}
	for key, want := range map[string][3]string{
		k.release("web"):          {"release", "web", ""},
		k.rollout("web"):          {"rollout", "web", ""},
		k.placement("web"):        {"placement", "web", ""},
		k.node("n1"):              {"node", "", "n1"},
		k.status("web", "n1"):     {"status", "web", "n1"},
		k.history("web", 3):       {"", "", ""},
		k.lock("web") + "/694d7":  {"", "", ""},
		"/other/apps/web/release": {"", "", ""},
	} {
		kind, app, node := k.parse(key)
		if [3]string{kind, app, node} != want {
			t.Errorf("parse(%q) = %q %q %q, want %q", key, kind, app, node, want)
		}
	}
}

// FuzzViewApply feeds arbitrary keys and values, as anything with write
// access to etcd could write them, to the view: it must not panic, and
// a value that does not decode must leave no record.
func FuzzViewApply(f *testing.F) {
	f.Add("/berth/apps/web/release", `{"version":1,"build":"ab"}`)
	f.Add("/berth/nodes/n1", `{"name":"n1"}`)
	f.Add("/berth/status/web/n1", `not json`)
	f.Add("/berth/apps//rollout", `{"waves":[[]],"wave":-5}`)
	f.Fuzz(func(t *testing.T, key, value string) {
		v := newView()
		v.apply(keys{prefix: "/berth/"}, &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value)}, false)
		for _, app := range v.apps() {
			v.target("n1", app)
		}
	})
}

// BenchmarkPlanRollout measures planning and checking a rollout over a
// fleet of 200 nodes: what the client and the driver compute per step.
func BenchmarkPlanRollout(b *testing.B) {
	nodes := map[string]NodeInfo{}
	statuses := map[string]Status{}
	for i := range 200 {
		name := fmt.Sprintf("node-%03d", i)
		nodes[name] = NodeInfo{Labels: map[string]string{"role": "web"}}
		statuses[name] = Status{Version: 2, Healthy: 3, Instances: 3}
	}
	for b.Loop() {
		waves := Waves(Placed(Placement{Labels: map[string]string{"role": "web"}}, nodes), 20)
		for _, w := range waves {
			CheckWave(w, 2, statuses, nodes)
		}
	}
}
