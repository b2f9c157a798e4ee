package fleet

import "testing"

// TestDecide ensures a node applies its target where it differs from
// what it runs or where the fleet stopped the app, never retries a
// version that failed here, and stops only a fleet app it runs, is not
// placed for and may remove (live, the app has a release): never the
// node's own apps, never twice.
func TestDecide(t *testing.T) {
	v2 := Release{App: "web", Version: 2}
	for _, tc := range []struct {
		name          string
		target        Release
		ok, removable bool
		ls            LocalStatus
		want          action
	}{
		{"placed, converged", v2, true, false, LocalStatus{Version: 2, Healthy: 1, Instances: 1}, actNone},
		{"placed, runs an older version", v2, true, false, LocalStatus{Version: 1}, actApply},
		{"placed, not there yet", v2, true, false, LocalStatus{}, actApply},
		{"placed, runs the node's own release", v2, true, false, LocalStatus{Version: 0, Instances: 1}, actApply},
		{"placed, target failed here", v2, true, false, LocalStatus{Version: 1, Failed: 2}, actNone},
		{"placed again after a stop", v2, true, false, LocalStatus{Version: 2, Stopped: true}, actApply},
		{"placed again after a stop, newer target", v2, true, false, LocalStatus{Version: 1, Stopped: true}, actApply},
		{"not placed, runs it", Release{}, false, true, LocalStatus{Version: 2, Instances: 1}, actStop},
		{"not placed, stopped already", Release{}, false, true, LocalStatus{Version: 2, Stopped: true}, actNone},
		{"not placed, the node's own app", Release{}, false, true, LocalStatus{Version: 0, Instances: 1}, actNone},
		{"not placed, never ran it", Release{}, false, true, LocalStatus{}, actNone},
		{"not live (no record in nodes/)", Release{}, false, false, LocalStatus{Version: 2, Instances: 1}, actNone},
	} {
		if got := decide(tc.target, tc.ok, tc.removable, tc.ls); got != tc.want {
			t.Errorf("%s: decide = %d, want %d", tc.name, got, tc.want)
		}
	}
}
