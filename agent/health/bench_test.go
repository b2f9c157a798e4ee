package health

import (
	"context"
	"net"
	"testing"
)

// BenchmarkProbe measures one probe of each kind against a loopback
// server: the cost the agent pays per instance every Interval.
func BenchmarkProbe(b *testing.B) {
	s := newServerB(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() { // accept and close, so the backlog never fills
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for _, bc := range []struct {
		name   string
		check  Check
		target Target
	}{
		{"http", Check{HTTP: "/up"}, Target{Port: s.port(b)}},
		{"tcp", Check{TCP: true}, Target{Port: ln.Addr().(*net.TCPAddr).Port}},
		{"exec", Check{Exec: "true"}, Target{RunExec: runExec}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if r := Probe(context.Background(), bc.check, bc.target); !r.OK {
					b.Fatalf("probe failed: %s", r.Output)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/probe")
		})
	}
}
