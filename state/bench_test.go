package state

import (
	"fmt"
	"testing"
)

// benchConfig is a config of typical size: a dozen vars, one of them a
// long URL.
func benchConfig(i int) map[string]string {
	cfg := map[string]string{
		"DATABASE_URL": "postgres://app:secret@db.internal:5432/app?sslmode=require",
		"RELEASE_NO":   fmt.Sprint(i),
	}
	for j := range 10 {
		cfg[fmt.Sprintf("SETTING_%d", j)] = fmt.Sprintf("value-%d-%d", j, i)
	}
	return cfg
}

// BenchmarkCreateRelease measures recording one release (one bbolt
// transaction with its fsync) on the test's temp dir.
func BenchmarkCreateRelease(b *testing.B) {
	s := openTest(b)
	mustApp(b, s, "bench")
	nr := NewRelease{Build: testDigest(1), Config: benchConfig(1), Formation: map[string]int{"web": 2, "worker": 1}, Description: "Deploy 3f2a9c1"}
	for b.Loop() {
		if _, err := s.CreateRelease("bench", nr); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "releases/s")
}

// BenchmarkCreateReleaseParallel measures concurrent writers on one app:
// bbolt serialises them, so this shows the cost of the shared lock.
func BenchmarkCreateReleaseParallel(b *testing.B) {
	s := openTest(b)
	mustApp(b, s, "bench")
	nr := NewRelease{Build: testDigest(1), Config: benchConfig(1), Description: "Deploy 3f2a9c1"}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.CreateRelease("bench", nr); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "releases/s")
}

// BenchmarkListReleases10000 measures listing all 10,000 releases of one
// app (newest first, each decoded with its config). The releases are
// created through CreateRelease with fsync off, to set up quickly.
func BenchmarkListReleases10000(b *testing.B) {
	const n = 10000
	s := openTest(b)
	mustApp(b, s, "bench")
	s.db.NoSync = true
	for i := range n {
		mustRelease(b, s, "bench", NewRelease{Build: testDigest(i), Config: benchConfig(i), Description: fmt.Sprintf("Deploy %d", i)})
	}
	s.db.NoSync = false
	for b.Loop() {
		rs, err := s.Releases("bench", 0)
		if err != nil || len(rs) != n {
			b.Fatalf("Releases = %d, %v", len(rs), err)
		}
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "releases/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/release")
}
