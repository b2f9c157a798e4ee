package state

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"
)

// TestStore_Builds ensures build records round-trip, list by digest, and
// delete.
func TestStore_Builds(t *testing.T) {
	s := openTest(t)
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	b1 := BuildRecord{Digest: testDigest(1), Size: 1 << 20, Files: 12, ImportedAt: at, Types: []string{"web", "release"}}
	b2 := BuildRecord{Digest: testDigest(2)}
	for _, b := range []BuildRecord{b1, b2} {
		if err := s.PutBuild(b); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Build(b1.Digest)
	if err != nil || !reflect.DeepEqual(got, b1) {
		t.Errorf("Build = %+v, %v; want %+v", got, err, b1)
	}
	got2, err := s.Build(b2.Digest)
	if err != nil || got2.ImportedAt.IsZero() {
		t.Errorf("Build without time = %+v, %v; want ImportedAt set", got2, err)
	}
	all, err := s.Builds()
	if err != nil || len(all) != 2 || all[0].Digest > all[1].Digest {
		t.Errorf("Builds = %+v, %v", all, err)
	}
	if err := s.DeleteBuild(b1.Digest); err != nil {
		t.Fatal(err)
	}
	_, err = s.Build(b1.Digest)
	wantErr(t, err, ErrBuildNotFound, b1.Digest)
	err = s.DeleteBuild(b1.Digest)
	wantErr(t, err, ErrBuildNotFound, b1.Digest)
}

// TestStore_ProcsConcurrent ensures many concurrent PutProc calls (which
// share commits through bbolt's Batch) all land, and DeleteProc removes
// one (and is idempotent).
func TestStore_ProcsConcurrent(t *testing.T) {
	s := openTest(t)
	const n = 50
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = s.PutProc(ProcRecord{App: "web", Instance: fmt.Sprintf("web.%d", i+1), Name: fmt.Sprintf("web/web.%02d", i+1),
				PID: 1000 + i, PGID: 1000 + i, StartTime: uint64(i), Release: 3})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	ps, err := s.Procs()
	if err != nil || len(ps) != n {
		t.Fatalf("Procs = %d, %v; want %d", len(ps), err, n)
	}
	for i, p := range ps {
		if p.Name != fmt.Sprintf("web/web.%02d", i+1) || p.PID != 1000+i || p.StartTime != uint64(i) {
			t.Errorf("Procs[%d] = %+v", i, p)
		}
	}
	if err := s.DeleteProc("web/web.01"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteProc("web/web.01"); err != nil {
		t.Errorf("second DeleteProc: %v", err)
	}
	// Replacing a record keeps one per name.
	if err := s.PutProc(ProcRecord{App: "web", Instance: "web.2", Name: "web/web.02", PID: 7, PGID: 7}); err != nil {
		t.Fatal(err)
	}
	ps, _ = s.Procs()
	if len(ps) != n-1 || ps[0].Name != "web/web.02" || ps[0].PID != 7 {
		t.Errorf("after delete and replace: %d procs, first %+v", len(ps), ps[0])
	}
}

// TestStore_Events ensures events get contiguous sequence numbers, are
// read from a sequence number with a limit and an app filter, and the log
// keeps only the newest MaxEvents.
func TestStore_Events(t *testing.T) {
	s := openAt(t, t.TempDir()+"/berth.db", Config{MaxEvents: 5})
	var all []Event
	for i := range 12 {
		app := []string{"a", "b", ""}[i%3]
		e, err := s.AppendEvent(app, "deploy", fmt.Sprint("event ", i+1))
		if err != nil {
			t.Fatal(err)
		}
		if e.Seq != uint64(i+1) || e.App != app || e.Time.IsZero() {
			t.Fatalf("AppendEvent #%d = %+v", i+1, e)
		}
		all = append(all, e)
	}
	got, err := s.Events("", 0, 0)
	if err != nil || !reflect.DeepEqual(got, all[7:]) {
		t.Fatalf("Events(all) = %+v, %v; want the newest 5 %+v", got, err, all[7:])
	}
	if got, _ := s.Events("", 9, 0); !reflect.DeepEqual(got, all[9:]) {
		t.Errorf("Events(since 9) = %+v", got)
	}
	if got, _ := s.Events("", 0, 2); !reflect.DeepEqual(got, all[7:9]) {
		t.Errorf("Events(limit 2) = %+v", got)
	}
	if got, _ := s.Events("b", 0, 0); !reflect.DeepEqual(got, []Event{all[7], all[10]}) {
		t.Errorf("Events(b) = %+v, want seqs 8, 11", got)
	}
	if got, _ := s.Events("", 12, 0); len(got) != 0 {
		t.Errorf("Events(since last) = %+v", got)
	}
	if got, _ := s.Events("", ^uint64(0), 0); len(got) != 0 {
		t.Errorf("Events(since max) = %+v", got)
	}
	if seq, err := s.LastEventSeq(); err != nil || seq != 12 {
		t.Errorf("LastEventSeq = %d, %v", seq, err)
	}
}
