package state

import (
	"errors"
	"maps"
	"slices"
	"testing"
)

// TestStore_AppRoundTrip ensures apps are created, read, listed in name
// order, refused when they exist, and given a user.
func TestStore_AppRoundTrip(t *testing.T) {
	s := openTest(t)
	for _, n := range []string{"zeta", "alpha", "mid-1"} {
		a := mustApp(t, s, n)
		if a.Name != n || a.CreatedAt.IsZero() || a.User != "" || a.ActiveRelease != 0 {
			t.Errorf("CreateApp(%s) = %+v", n, a)
		}
	}
	_, err := s.CreateApp("alpha")
	wantErr(t, err, ErrAppExists, `"alpha"`)

	apps, err := s.Apps()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range apps {
		names = append(names, a.Name)
	}
	if want := []string{"alpha", "mid-1", "zeta"}; !slices.Equal(names, want) {
		t.Errorf("Apps = %v, want %v", names, want)
	}
	a, err := s.SetAppUser("alpha", "www-data")
	if err != nil || a.User != "www-data" {
		t.Fatalf("SetAppUser = %+v, %v", a, err)
	}
	got, err := s.App("alpha")
	if err != nil || got != a {
		t.Errorf("App = %+v, %v; want %+v", got, err, a)
	}
	if a, err := s.SetAppUser("alpha", ""); err != nil || a.User != "" {
		t.Errorf("SetAppUser(\"\") = %+v, %v", a, err)
	}
	_, err = s.App("nope")
	wantErr(t, err, ErrAppNotFound, `"nope"`)
	_, err = s.App("NOPE")
	wantErr(t, err, ErrInvalidName, `"NOPE"`)
}

// TestStore_DeleteApp ensures deleting an app removes its releases,
// config, formation, ports and process records and nothing of other apps;
// its ports become free again; a new app of the same name starts at v1.
func TestStore_DeleteApp(t *testing.T) {
	s := openTest(t)
	for _, app := range []string{"doomed", "kept"} {
		mustApp(t, s, app)
		r := mustRelease(t, s, app, NewRelease{Build: testDigest(1), Config: map[string]string{"K": app}})
		if _, err := s.Activate(app, r.Version); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetFormation(app, map[string]int{"web": 2}); err != nil {
			t.Fatal(err)
		}
		for _, inst := range []string{"web.1", "web.2"} {
			if _, err := s.Port(app, inst, 5000); err != nil {
				t.Fatal(err)
			}
			if err := s.PutProc(ProcRecord{App: app, Instance: inst, Name: app + "/" + inst, PID: 10, PGID: 10}); err != nil {
				t.Fatal(err)
			}
		}
	}
	doomedPorts, _ := s.Ports("doomed")
	keptPorts, _ := s.Ports("kept")
	if err := s.DeleteApp("doomed"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.App("doomed"); !errors.Is(err, ErrAppNotFound) {
		t.Errorf("App after delete: %v", err)
	}
	if _, err := s.Releases("doomed", 0); !errors.Is(err, ErrAppNotFound) {
		t.Errorf("Releases after delete: %v", err)
	}
	procs, err := s.Procs()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if p.App != "kept" {
			t.Errorf("proc %+v of the deleted app survived", p)
		}
	}
	if len(procs) != 2 {
		t.Errorf("procs of kept = %d, want 2", len(procs))
	}
	if p, _ := s.Ports("kept"); !maps.Equal(p, keptPorts) {
		t.Errorf("kept ports changed: %v, want %v", p, keptPorts)
	}
	if rs, err := s.Releases("kept", 0); err != nil || len(rs) != 1 {
		t.Errorf("kept releases = %v, %v", rs, err)
	}

	mustApp(t, s, "doomed")
	if cfg, err := s.Config("doomed"); err != nil || len(cfg) != 0 {
		t.Errorf("config of re-created app = %v, %v", cfg, err)
	}
	if f, err := s.Formation("doomed"); err != nil || len(f) != 0 {
		t.Errorf("formation of re-created app = %v, %v", f, err)
	}
	if r := mustRelease(t, s, "doomed", NewRelease{Build: testDigest(1)}); r.Version != 1 {
		t.Errorf("first version of re-created app = %d, want 1", r.Version)
	}
	// The deleted app's ports were freed: the new app gets them back.
	if p, err := s.Port("doomed", "web.1", 5000); err != nil || p != doomedPorts["web.1"] {
		t.Errorf("Port of re-created app = %d, %v; want the freed %d", p, err, doomedPorts["web.1"])
	}
}
