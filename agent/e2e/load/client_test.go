//go:build e2e_load

package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// sample is one request of the load.
type sample struct {
	start time.Duration // since the run began
	dur   time.Duration
	err   string // "" when the answer was a 200 with the app's greeting
}

// loadConfig bounds one run of the client.
type loadConfig struct {
	url      string
	expect   string          // prefix of a good body
	duration time.Duration   // how long to send at most
	stop     <-chan struct{} // closed to stop earlier; nil: run for duration
	rate     float64         // requests per second in total; 0: unpaced
	workers  int
	max      int // requests at most
}

// loadResult is what the client saw.
type loadResult struct {
	began   time.Time
	samples []sample
	skipped int64         // paced slots dropped because every worker was busy
	length  time.Duration // from the first request to the end of the last
}

// runLoad sends GET requests with cfg.workers concurrent clients, each on a
// new connection (a proxy without pooling), until cfg.stop is closed, the
// duration passes or max requests were sent. Requests in flight at the end
// run to completion.
func runLoad(cfg loadConfig) loadResult {
	res := loadResult{began: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.duration)
	defer cancel()
	if cfg.stop != nil {
		stopped := make(chan struct{})
		defer func() {
			cancel()
			<-stopped
		}()
		go func() {
			defer close(stopped)
			select {
			case <-cfg.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
	}

	var tokens chan struct{}
	var wg sync.WaitGroup
	var skipped atomic.Int64
	if cfg.rate > 0 {
		tokens = make(chan struct{}, cfg.workers)
		wg.Add(1)
		go func() { // pacer
			defer wg.Done()
			tick := time.NewTicker(time.Duration(float64(time.Second) / cfg.rate))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					select {
					case tokens <- struct{}{}:
					default:
						skipped.Add(1)
					}
				}
			}
		}()
	}

	var sent atomic.Int64
	perWorker := make([][]sample, cfg.workers)
	for w := range cfg.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := newClient()
			for {
				if tokens != nil {
					select {
					case <-ctx.Done():
						return
					case <-tokens:
					}
				} else if ctx.Err() != nil {
					return
				}
				if sent.Add(1) > int64(cfg.max) {
					return
				}
				perWorker[w] = append(perWorker[w], request(client, cfg, res.began))
			}
		}()
	}
	wg.Wait()
	for _, s := range perWorker {
		res.samples = append(res.samples, s...)
	}
	slices.SortFunc(res.samples, func(a, b sample) int { return int(a.start - b.start) })
	res.skipped = skipped.Load()
	res.length = time.Since(res.began)
	return res
}

// newClient returns a client that opens a new loopback connection for
// every request and never goes through a proxy.
func newClient() *http.Client {
	transport := &http.Transport{
		Proxy:             nil,
		DisableKeepAlives: true,
		DialContext:       (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	return &http.Client{Transport: transport, Timeout: 15 * time.Second}
}

// request sends one GET and classifies the outcome.
func request(client *http.Client, cfg loadConfig, began time.Time) sample {
	start := time.Now()
	s := sample{start: start.Sub(began)}
	resp, err := client.Get(cfg.url)
	if err != nil {
		s.dur = time.Since(start)
		s.err = classify(err)
		return s
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	s.dur = time.Since(start)
	switch {
	case err != nil:
		s.err = "body: " + classify(err)
	case resp.StatusCode != http.StatusOK:
		s.err = fmt.Sprintf("status %d", resp.StatusCode)
	case !strings.HasPrefix(string(body), cfg.expect):
		s.err = "unexpected body"
	}
	return s
}

// classify names an error by its kind, so a summary can count them.
func classify(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	msg := err.Error()
	if len(msg) > 80 {
		msg = msg[:80]
	}
	return msg
}

// window is a time span of a run, relative to its start.
type window struct{ from, to time.Duration }

// stats summarises the samples of one run.
type stats struct {
	sent, failed             int
	p50, p99, max            time.Duration
	switchSent, switchFailed int
	switchP99, switchMax     time.Duration
	errors                   map[string]int
}

// summarize computes latency percentiles over the successful requests:
// overall, and for those whose start falls in one of the windows.
func summarize(samples []sample, windows []window) stats {
	st := stats{errors: map[string]int{}}
	var all, during []time.Duration
	for _, s := range samples {
		st.sent++
		in := false
		for _, w := range windows {
			if s.start >= w.from && s.start <= w.to {
				in = true
				break
			}
		}
		if in {
			st.switchSent++
		}
		if s.err != "" {
			st.failed++
			st.errors[s.err]++
			if in {
				st.switchFailed++
			}
			continue
		}
		all = append(all, s.dur)
		if in {
			during = append(during, s.dur)
		}
	}
	st.p50, st.p99, st.max = percentile(all, 50), percentile(all, 99), percentile(all, 100)
	st.switchP99, st.switchMax = percentile(during, 99), percentile(during, 100)
	return st
}

// percentile returns the p-th percentile (nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(float64(len(s))*p/100)) - 1
	rank = max(0, min(rank, len(s)-1))
	return s[rank]
}
