package state

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
)

// TestStore_CreateReleaseRoundTrip ensures a release is stored as given,
// pending, with copies of the caller's maps (changing them afterwards, or
// the maps the store returned, changes nothing stored), and that a nil
// formation snapshots the app's formation.
func TestStore_CreateReleaseRoundTrip(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "web")
	if _, err := s.SetFormation("web", map[string]int{"web": 3}); err != nil {
		t.Fatal(err)
	}
	cfg := map[string]string{"DATABASE_URL": "postgres://x", "EMPTY": ""}
	r := mustRelease(t, s, "web", NewRelease{Build: testDigest(1), Config: cfg, Description: "Deploy 3f2a9c1"})
	want := Release{
		App: "web", Version: 1, Build: testDigest(1), Config: map[string]string{"DATABASE_URL": "postgres://x", "EMPTY": ""},
		Formation: map[string]int{"web": 3}, Description: "Deploy 3f2a9c1", CreatedAt: r.CreatedAt, Status: StatusPending,
	}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("CreateRelease = %+v, want %+v", r, want)
	}
	cfg["DATABASE_URL"] = "changed"
	r.Config["EMPTY"] = "changed"
	got, err := s.Release("web", 1)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Release = %+v, %v; want %+v", got, err, want)
	}
	got.Formation["web"] = 99
	if again, _ := s.Release("web", 1); again.Formation["web"] != 3 {
		t.Error("changing a returned formation changed the store")
	}
	// An explicit formation is stored as given; a nil config is empty.
	r2 := mustRelease(t, s, "web", NewRelease{Build: testDigest(2), Formation: map[string]int{"web": 1, "worker": 0}})
	if r2.Version != 2 || !maps.Equal(r2.Formation, map[string]int{"web": 1, "worker": 0}) || r2.Config == nil || len(r2.Config) != 0 {
		t.Errorf("second release = %+v", r2)
	}
	_, err = s.Release("web", 3)
	wantErr(t, err, ErrReleaseNotFound, "web v3")
	_, err = s.Release("nope", 1)
	wantErr(t, err, ErrAppNotFound, `"nope"`)
	_, err = s.ActiveRelease("web")
	wantErr(t, err, ErrNoActiveRelease, "web")
}

// activeCount counts an app's releases with status active.
func activeCount(t *testing.T, s *Store, app string) (n, version int) {
	t.Helper()
	rs, err := s.Releases(app, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Status == StatusActive {
			n, version = n+1, r.Version
		}
	}
	return n, version
}

// TestStore_ActivateLifecycle walks the status transitions: activation
// supersedes the previous release and installs its config; exactly one
// release is active after each step; a failed release cannot be
// activated; failing the active release leaves none active; a superseded
// release can be activated again (reverting a switch).
func TestStore_ActivateLifecycle(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "web")
	if err := s.PutConfig("web", map[string]string{"BEFORE": "deploy"}); err != nil {
		t.Fatal(err)
	}
	r1 := mustRelease(t, s, "web", NewRelease{Build: testDigest(1), Config: map[string]string{"V": "1"}})
	r2 := mustRelease(t, s, "web", NewRelease{Build: testDigest(2), Config: map[string]string{"V": "2"}})

	prev, err := s.Activate("web", r1.Version)
	if err != nil || !reflect.DeepEqual(prev, Release{}) {
		t.Fatalf("first Activate = %+v, %v; want zero prev", prev, err)
	}
	if cfg, _ := s.Config("web"); !maps.Equal(cfg, r1.Config) {
		t.Errorf("config after v1 = %v", cfg)
	}
	prev, err = s.Activate("web", r2.Version)
	if err != nil || prev.Version != 1 || prev.Status != StatusSuperseded {
		t.Fatalf("Activate v2 = prev %+v, %v; want v1 superseded", prev, err)
	}
	if n, v := activeCount(t, s, "web"); n != 1 || v != 2 {
		t.Errorf("active releases = %d (v%d), want exactly v2", n, v)
	}
	if a, _ := s.App("web"); a.ActiveRelease != 2 {
		t.Errorf("App.ActiveRelease = %d, want 2", a.ActiveRelease)
	}
	if cfg, _ := s.Config("web"); !maps.Equal(cfg, r2.Config) {
		t.Errorf("config after v2 = %v", cfg)
	}
	// Activating the active release is a no-op.
	if prev, err := s.Activate("web", 2); err != nil || prev.Version != 0 {
		t.Errorf("re-Activate v2 = %+v, %v", prev, err)
	}

	// v3's release phase fails after it went live: nothing is active until
	// the caller re-activates v2, which is allowed from superseded.
	r3 := mustRelease(t, s, "web", NewRelease{Build: testDigest(3)})
	if _, err := s.Activate("web", r3.Version); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("x", MaxOutputBytes) + "the end"
	if err := s.MarkFailed("web", 3, "release phase exited 1", long); err != nil {
		t.Fatal(err)
	}
	_, err = s.ActiveRelease("web")
	wantErr(t, err, ErrNoActiveRelease)
	if n, _ := activeCount(t, s, "web"); n != 0 {
		t.Errorf("%d releases active after the active one failed", n)
	}
	got, _ := s.Release("web", 3)
	if got.Status != StatusFailed || got.Reason != "release phase exited 1" ||
		!strings.HasSuffix(got.Output, "the end") || !strings.HasPrefix(got.Output, "[... 7 bytes of output dropped ...]") {
		t.Errorf("failed release = status %s reason %q output %d bytes starting %q", got.Status, got.Reason, len(got.Output), got.Output[:40])
	}
	if prev, err := s.Activate("web", 2); err != nil || prev.Version != 0 {
		t.Fatalf("re-activate v2 = %+v, %v", prev, err)
	}
	if n, v := activeCount(t, s, "web"); n != 1 || v != 2 {
		t.Errorf("active releases = %d (v%d), want exactly v2", n, v)
	}
	_, err = s.Activate("web", 3)
	wantErr(t, err, ErrBadTransition, "v3 is failed")
	err = s.MarkFailed("web", 1, "x", "")
	wantErr(t, err, ErrBadTransition, "v1 is superseded")

	// A pending release fails without touching the active one.
	r4 := mustRelease(t, s, "web", NewRelease{Build: testDigest(4)})
	if err := s.MarkFailed("web", r4.Version, "build broken", ""); err != nil {
		t.Fatal(err)
	}
	if a, err := s.ActiveRelease("web"); err != nil || a.Version != 2 {
		t.Errorf("active after failing pending v4 = %+v, %v", a, err)
	}
}

// TestStore_Rollback shows the rollback semantics the agent builds on the
// store (Heroku's): rolling back to vN makes a new release with vN's
// build and config, which supersedes the current one; no version is reused.
func TestStore_Rollback(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "web")
	v1 := mustRelease(t, s, "web", NewRelease{Build: testDigest(1), Config: map[string]string{"MODE": "old"}, Description: "Deploy 1"})
	mustActivate(t, s, "web", v1.Version)
	v2 := mustRelease(t, s, "web", NewRelease{Build: testDigest(2), Config: map[string]string{"MODE": "new", "EXTRA": "1"}, Description: "Deploy 2"})
	mustActivate(t, s, "web", v2.Version)

	target, err := s.Release("web", 1)
	if err != nil {
		t.Fatal(err)
	}
	rb := mustRelease(t, s, "web", NewRelease{Build: target.Build, Config: target.Config, Description: fmt.Sprintf("Rollback to v%d", target.Version)})
	prev, err := s.Activate("web", rb.Version)
	if err != nil {
		t.Fatal(err)
	}
	if rb.Version != 3 || prev.Version != 2 {
		t.Errorf("rollback release v%d superseding v%d, want v3 superseding v2", rb.Version, prev.Version)
	}
	active, err := s.ActiveRelease("web")
	if err != nil {
		t.Fatal(err)
	}
	if active.Version != 3 || active.Build != v1.Build || !maps.Equal(active.Config, v1.Config) || active.Description != "Rollback to v1" {
		t.Errorf("active after rollback = %+v", active)
	}
	if cfg, _ := s.Config("web"); !maps.Equal(cfg, map[string]string{"MODE": "old"}) {
		t.Errorf("config after rollback = %v", cfg)
	}
	rs, _ := s.Releases("web", 0)
	var got []string
	for _, r := range rs {
		got = append(got, fmt.Sprintf("v%d:%s", r.Version, r.Status))
	}
	if want := "v3:active v2:superseded v1:superseded"; strings.Join(got, " ") != want {
		t.Errorf("releases = %v, want %s", got, want)
	}
}

// TestStore_ConcurrentCreateRelease ensures many goroutines creating
// releases of one app at once get versions 1..N with no gap and no
// duplicate, while a second app's counter is independent.
func TestStore_ConcurrentCreateRelease(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "one")
	mustApp(t, s, "two")
	const workers, each = 16, 8
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		seen = map[string][]int{}
		errs []error
	)
	for w := range workers {
		for _, app := range []string{"one", "two"} {
			wg.Go(func() {
				for i := range each {
					r, err := s.CreateRelease(app, NewRelease{Build: testDigest(w*each + i), Description: fmt.Sprint(w, "/", i)})
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else {
						seen[app] = append(seen[app], r.Version)
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"one", "two"} {
		vs := seen[app]
		sort.Ints(vs)
		for i, v := range vs {
			if v != i+1 {
				t.Fatalf("%s: versions %v: want 1..%d without gap or duplicate", app, vs, workers*each)
			}
		}
		if len(vs) != workers*each {
			t.Fatalf("%s: %d versions, want %d", app, len(vs), workers*each)
		}
		// What was returned is what was stored.
		rs, err := s.Releases(app, 0)
		if err != nil || len(rs) != workers*each {
			t.Fatalf("%s: Releases = %d, %v", app, len(rs), err)
		}
		descs := map[string]bool{}
		for i, r := range rs {
			if r.Version != workers*each-i {
				t.Fatalf("%s: Releases[%d] is v%d: not newest first", app, i, r.Version)
			}
			descs[r.Description] = true
		}
		if len(descs) != workers*each {
			t.Errorf("%s: %d distinct releases stored, want %d", app, len(descs), workers*each)
		}
	}
}

// TestStore_ConcurrentActivate ensures that goroutines activating
// different releases of one app at once leave exactly one active release,
// the one the app record points at.
func TestStore_ConcurrentActivate(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "web")
	const n = 20
	for i := range n {
		mustRelease(t, s, "web", NewRelease{Build: testDigest(i)})
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for v := 1; v <= n; v++ {
		wg.Go(func() { _, errs[v-1] = s.Activate("web", v) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	cnt, v := activeCount(t, s, "web")
	a, _ := s.App("web")
	if cnt != 1 || a.ActiveRelease != v {
		t.Errorf("%d active releases (v%d), app points at v%d; want exactly one, the same", cnt, v, a.ActiveRelease)
	}
}

// TestStore_ReleasesListing ensures Releases lists newest first and honours
// the limit.
func TestStore_ReleasesListing(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "web")
	if rs, err := s.Releases("web", 0); err != nil || len(rs) != 0 {
		t.Errorf("Releases of a new app = %v, %v", rs, err)
	}
	for i := range 7 {
		mustRelease(t, s, "web", NewRelease{Build: testDigest(i)})
	}
	for _, tc := range []struct{ limit, want int }{{0, 7}, {3, 3}, {7, 7}, {100, 7}, {1, 1}} {
		rs, err := s.Releases("web", tc.limit)
		if err != nil || len(rs) != tc.want {
			t.Fatalf("Releases(limit %d) = %d, %v; want %d", tc.limit, len(rs), err, tc.want)
		}
		for i, r := range rs {
			if r.Version != 7-i {
				t.Errorf("Releases(limit %d)[%d] = v%d, want v%d", tc.limit, i, r.Version, 7-i)
			}
		}
	}
}

// TestStore_PendingReleases ensures the pending releases of every app are
// found (what start-up marks failed after a crash) and only those.
func TestStore_PendingReleases(t *testing.T) {
	s := openTest(t)
	for _, app := range []string{"a", "b", "c"} {
		mustApp(t, s, app)
	}
	ra := mustRelease(t, s, "a", NewRelease{Build: testDigest(1)})
	mustActivate(t, s, "a", ra.Version)
	mustRelease(t, s, "a", NewRelease{Build: testDigest(2)}) // pending
	rb := mustRelease(t, s, "b", NewRelease{Build: testDigest(3)})
	mustFail(t, s, "b", rb.Version, "x", "")
	mustRelease(t, s, "c", NewRelease{Build: testDigest(4)}) // pending
	ps, err := s.PendingReleases()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range ps {
		got = append(got, fmt.Sprintf("%s/v%d", p.App, p.Version))
	}
	if strings.Join(got, " ") != "a/v2 c/v1" {
		t.Errorf("PendingReleases = %v, want [a/v2 c/v1]", got)
	}
}

// TestStore_ReferencedBuilds ensures garbage collection keeps the builds
// of the newest N releases of each app, of active releases however old,
// and of pending ones.
func TestStore_ReferencedBuilds(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "a")
	mustApp(t, s, "b")
	// a: v1 (build 1, active) v2..v5 (builds 2..5, failed), v6 (build 6, pending)
	r := mustRelease(t, s, "a", NewRelease{Build: testDigest(1)})
	mustActivate(t, s, "a", r.Version)
	for i := 2; i <= 5; i++ {
		r := mustRelease(t, s, "a", NewRelease{Build: testDigest(i)})
		mustFail(t, s, "a", r.Version, "x", "")
	}
	mustRelease(t, s, "a", NewRelease{Build: testDigest(6)})
	// b: v1, v2 share build 7 with nothing else, v3 build 8.
	for _, d := range []int{7, 7, 8} {
		r := mustRelease(t, s, "b", NewRelease{Build: testDigest(d)})
		mustActivate(t, s, "b", r.Version)
	}
	for _, tc := range []struct {
		keep int
		want []int
	}{
		{0, []int{1, 6, 8}},
		{2, []int{1, 5, 6, 7, 8}},
		{5, []int{1, 2, 3, 4, 5, 6, 7, 8}},
	} {
		got, err := s.ReferencedBuilds(tc.keep)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{}
		for _, d := range tc.want {
			want[testDigest(d)] = true
		}
		if !maps.Equal(got, want) {
			t.Errorf("ReferencedBuilds(%d) = %d digests, want builds %v", tc.keep, len(got), tc.want)
		}
	}
}

// Ensures FailAndActivate undoes a switch in one transaction: the failed
// release is failed, the previous one active again with its config, and a
// refused target changes nothing at all (the failed mark is not kept
// either).
func TestStore_FailAndActivate(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "web")
	r1 := mustRelease(t, s, "web", NewRelease{Build: testDigest(1), Config: map[string]string{"V": "1"}})
	r2 := mustRelease(t, s, "web", NewRelease{Build: testDigest(2), Config: map[string]string{"V": "2"}})
	r3 := mustRelease(t, s, "web", NewRelease{Build: testDigest(3), Config: map[string]string{"V": "3"}})
	for _, v := range []int{r1.Version, r2.Version} {
		if _, err := s.Activate("web", v); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.MarkFailed("web", r3.Version, "broken", ""); err != nil {
		t.Fatal(err)
	}

	// A failed release cannot become active: nothing changes, v2 stays
	// active and is not marked failed.
	before := dump(t, s)
	if err := s.FailAndActivate("web", r2.Version, "unhealthy", "out", r3.Version); !errors.Is(err, ErrBadTransition) {
		t.Fatalf("FailAndActivate to a failed release = %v, want ErrBadTransition", err)
	}
	if after := dump(t, s); after != before {
		t.Fatalf("a refused FailAndActivate changed the store:\nbefore %s\nafter  %s", before, after)
	}

	if err := s.FailAndActivate("web", r2.Version, "unhealthy", "last lines", r1.Version); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Release("web", r2.Version)
	if got.Status != StatusFailed || got.Reason != "unhealthy" || got.Output != "last lines" {
		t.Errorf("v2 = %+v, want failed with reason and output", got)
	}
	if n, v := activeCount(t, s, "web"); n != 1 || v != r1.Version {
		t.Errorf("active releases = %d (v%d), want exactly v1", n, v)
	}
	if cfg, _ := s.Config("web"); !maps.Equal(cfg, r1.Config) {
		t.Errorf("config = %v, want v1's", cfg)
	}

	// to 0: a first deploy that failed leaves no active release.
	mustApp(t, s, "fresh")
	f1 := mustRelease(t, s, "fresh", NewRelease{Build: testDigest(4)})
	if _, err := s.Activate("fresh", f1.Version); err != nil {
		t.Fatal(err)
	}
	if err := s.FailAndActivate("fresh", f1.Version, "crashed", "", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ActiveRelease("fresh"); !errors.Is(err, ErrNoActiveRelease) {
		t.Errorf("ActiveRelease(fresh) = %v, want ErrNoActiveRelease", err)
	}
}

// Ensures a successful release phase's output is kept (SetOutput) on a
// pending or active release and refused on a failed one, and that output
// over MaxOutputBytes keeps its tail behind a notice counting every byte
// cut, those cut before it reached the store too.
func TestStore_SetOutputAndCut(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "web")
	r1 := mustRelease(t, s, "web", NewRelease{Build: testDigest(1)})
	if err := s.SetOutput("web", r1.Version, "migrated 3 tables\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Activate("web", r1.Version); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Release("web", r1.Version); got.Output != "migrated 3 tables\n" || got.Status != StatusActive {
		t.Errorf("active release: status %s output %q", got.Status, got.Output)
	}
	r2 := mustRelease(t, s, "web", NewRelease{Build: testDigest(2)})
	if err := s.MarkFailed("web", r2.Version, "release phase exited 1", "boom"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.SetOutput("web", r2.Version, "other"), ErrBadTransition)

	for _, c := range []struct {
		in         string
		dropped    int
		keptSuffix string
		unchanged  bool
	}{
		{"short", 0, "", true},
		{strings.Repeat("x", MaxOutputBytes), 0, "", true},
		{strings.Repeat("x", MaxOutputBytes) + "the end", 7, "the end", false},
		// Cut before (by RunCommand): 5000 bytes, then the notice's own
		// 40 bytes and 100 more are cut here.
		{"[... 5000 bytes of output dropped ...]\n" + strings.Repeat("y", 100+MaxOutputBytes), 5100, "yyy", false},
	} {
		got := CutOutput(c.in)
		if c.unchanged {
			if got != c.in {
				t.Errorf("CutOutput of %d bytes changed it", len(c.in))
			}
			continue
		}
		notice := fmt.Sprintf("[... %d bytes of output dropped ...]\n", c.dropped)
		if !strings.HasPrefix(got, notice) || len(got) != len(notice)+MaxOutputBytes || !strings.HasSuffix(got, c.keptSuffix) {
			t.Errorf("CutOutput of %d bytes = %d bytes starting %.50q, want notice %q", len(c.in), len(got), got, notice)
		}
	}
}
