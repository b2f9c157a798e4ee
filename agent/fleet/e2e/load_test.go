//go:build e2e_fleet

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// load sends GETs to each target, one after another per target, from
// the hub, until stopped, and counts what failed.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	res    map[string]*loadResult
}

type loadResult struct {
	requests, failed int
	firstErr         string
	longest          time.Duration // longest request
}

func (r loadResult) String() string {
	s := fmt.Sprintf("%d requests, %d failed, longest %s", r.requests, r.failed, r.longest.Round(100*time.Microsecond))
	if r.firstErr != "" {
		s += ", first error: " + r.firstErr
	}
	return s
}

// startLoad starts one client per target URL, its connections made in ns.
func startLoad(ns netns, targets []string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, res: map[string]*loadResult{}}
	for _, url := range targets {
		l.res[url] = &loadResult{}
		l.wg.Add(1)
		go l.run(ctx, ns, url)
	}
	return l
}

func (l *load) run(ctx context.Context, ns netns, url string) {
	defer l.wg.Done()
	tr := &http.Transport{DialContext: ns.dialer(), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: 3 * time.Second, Transport: tr}
	for ctx.Err() == nil {
		began := time.Now()
		err := getOK(client, url)
		took := time.Since(began)
		if ctx.Err() != nil {
			return // a request cut by the stop is not counted
		}
		l.mu.Lock()
		r := l.res[url]
		r.requests++
		r.longest = max(r.longest, took)
		if err != nil {
			r.failed++
			if r.firstErr == "" {
				r.firstErr = fmt.Sprintf("%s at %s", err, began.Format("15:04:05.000"))
			}
		}
		l.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
}

func getOK(client *http.Client, url string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// stop ends the load and returns each target's result.
func (l *load) stop() map[string]loadResult {
	l.cancel()
	l.wg.Wait()
	out := map[string]loadResult{}
	for url, r := range l.res {
		out[url] = *r
	}
	return out
}
