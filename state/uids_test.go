package state

import (
	"fmt"
	"maps"
	"path/filepath"
	"sync"
	"testing"
)

// TestStore_AppUID ensures each app gets the lowest free uid of the range
// once, keeps it whatever range later calls pass, across a reopen, and
// that DeleteApp frees it for the next app.
func TestStore_AppUID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "berth.db")
	s := openAt(t, path, Config{})
	for _, app := range []string{"a", "b", "c"} {
		mustApp(t, s, app)
	}
	r := UIDRange{Min: 61184, Max: 65519}
	taken := func(uid int) bool { return uid == 61185 } // a host user
	steps := []struct {
		app  string
		r    UIDRange
		want int
	}{
		{"a", r, 61184},
		{"b", r, 61186}, // 61185 belongs to a user of the host
		{"a", UIDRange{Min: 70000, Max: 70010}, 61184}, // stored: range ignored
		{"c", UIDRange{Min: 61184, Max: 61190}, 61187},
	}
	for _, st := range steps {
		if got, err := s.AppUID(st.app, st.r, taken); err != nil || got != st.want {
			t.Fatalf("AppUID(%s, %v) = %d, %v; want %d", st.app, st.r, got, err, st.want)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path, Config{})
	want := map[string]int{"a": 61184, "b": 61186, "c": 61187}
	if got, err := s.AppUIDs(); err != nil || !maps.Equal(got, want) {
		t.Fatalf("AppUIDs after reopen = %v, %v; want %v", got, err, want)
	}
	if err := s.DeleteApp("a"); err != nil {
		t.Fatal(err)
	}
	mustApp(t, s, "d")
	if got, err := s.AppUID("d", r, taken); err != nil || got != 61184 {
		t.Errorf("AppUID(d) after deleting a = %d, %v; want the freed 61184", got, err)
	}
	// An app created again under a deleted name is a new app: a new uid.
	mustApp(t, s, "a")
	if got, err := s.AppUID("a", r, taken); err != nil || got != 61188 {
		t.Errorf("AppUID(a) recreated = %d, %v; want 61188", got, err)
	}
	_, err := s.AppUID("nope", r, nil)
	wantErr(t, err, ErrAppNotFound)
	_, err = s.AppUID("b", UIDRange{Min: 0, Max: 10}, nil)
	wantErr(t, err, ErrInvalid, "uid range")
}

// TestStore_AppUIDExhausted ensures a full range is a clear error naming
// the range, and that nothing is recorded for the app.
func TestStore_AppUIDExhausted(t *testing.T) {
	s := openTest(t)
	r := UIDRange{Min: 100, Max: 102}
	for i, want := range []int{100, 102} {
		app := fmt.Sprintf("a%d", i)
		mustApp(t, s, app)
		if got, err := s.AppUID(app, r, func(uid int) bool { return uid == 101 }); err != nil || got != want {
			t.Fatalf("AppUID(%s) = %d, %v; want %d", app, got, err, want)
		}
	}
	mustApp(t, s, "late")
	_, err := s.AppUID("late", r, func(uid int) bool { return uid == 101 })
	wantErr(t, err, ErrUIDsExhausted, "100-102")
	if got, _ := s.AppUIDs(); len(got) != 2 {
		t.Errorf("AppUIDs = %v, want the two allocated", got)
	}
}

// TestStore_AppUIDConcurrent ensures concurrent first calls for one app
// agree on one uid and distinct apps never share one.
func TestStore_AppUIDConcurrent(t *testing.T) {
	s := openTest(t)
	const apps, callers = 10, 4
	for i := range apps {
		mustApp(t, s, fmt.Sprintf("app%d", i))
	}
	r := UIDRange{Min: 61184, Max: 65519}
	got := make([][callers]int, apps)
	var wg sync.WaitGroup
	for i := range apps {
		for c := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				uid, err := s.AppUID(fmt.Sprintf("app%d", i), r, nil)
				if err != nil {
					t.Error(err)
				}
				got[i][c] = uid
			}()
		}
	}
	wg.Wait()
	seen := map[int]int{}
	for i := range apps {
		for c := range callers {
			if got[i][c] != got[i][0] {
				t.Errorf("app%d got uids %v", i, got[i])
			}
		}
		if j, dup := seen[got[i][0]]; dup {
			t.Errorf("app%d and app%d share uid %d", i, j, got[i][0])
		}
		seen[got[i][0]] = i
	}
}
