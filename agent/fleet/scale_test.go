// The scale benchmark of issue 15: N simulated agents (default 200) in
// one process against one real, embedded etcd converge on a new release;
// it reports the time each node takes to report the release healthy
// (p50, p99), the rollout's total time and what etcd served meanwhile
// (requests by method, watch streams and watchers, events sent to
// watchers, bytes), and, at idle, lease keep-alives and bytes per second.
// SCALE.md holds a run's figures and their extrapolation to 10,000
// nodes; `make bench-fleet` runs it.
//
// It lives in package fleet_test and uses fleet's exported API only, so
// it does not depend on the package's internals.
package fleet_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"

	"github.com/berth-dev/berth/agent/fleet"
)

// Knobs of the benchmark, from the environment so `go test -bench` needs
// no custom flags.
const (
	envNodes      = "BERTH_SCALE_NODES"       // agents; default 200
	envApplyDelay = "BERTH_SCALE_APPLY_DELAY" // the simulated switch; default 5ms
	envIdle       = "BERTH_SCALE_IDLE"        // idle measurement window; default 10s
	envWave       = "BERTH_SCALE_WAVE"        // the second figure's wave size; default 50
	envTimeout    = "BERTH_SCALE_TIMEOUT"     // the longest a rollout may take; default 15m
	envLog        = "BERTH_SCALE_LOG"         // the agents' log level (hclog); default none
)

// benchApp is the one app the benchmark deploys.
const benchApp = "bench"

// BenchmarkFleetConverge200 starts one embedded etcd and N fleet agents
// with simulated nodes, deploys a first release to all of them, then
// measures: idle (lease keep-alives, requests and bytes per second), a
// rollout in one wave of every node, and a rollout in waves of 50.
func BenchmarkFleetConverge200(b *testing.B) {
	n := envInt(b, envNodes, 200)
	waveSize := envInt(b, envWave, 50)
	h := startHarness(b, n, envDuration(b, envApplyDelay, 5*time.Millisecond), 64)
	// A first deploy, so that every node runs a fleet release and has
	// written its status: the state a fleet is in before a new release.
	if _, err := h.rollout(context.Background(), fleet.RolloutOptions{}); err != nil {
		b.Fatalf("first deploy: %v", err)
	}
	b.Logf("fleet of %d simulated agents, GOMAXPROCS %d; builds pre-seeded in every node", n, runtime.GOMAXPROCS(0))

	b.Run("idle", func(b *testing.B) {
		window := envDuration(b, envIdle, 10*time.Second)
		for range b.N {
			before := h.scrape(b)
			t := time.NewTimer(window) // the measurement window, not a wait for an event
			<-t.C
			after := h.scrape(b)
			h.reportIdle(b, before, after, window)
			h.logRecords(b)
		}
	})
	for _, wave := range []int{0, waveSize} {
		name := "wave=all"
		if wave > 0 {
			name = fmt.Sprintf("wave=%d", wave)
		}
		b.Run(name, func(b *testing.B) {
			var results []rolloutResult
			for range b.N {
				res, err := h.rollout(context.Background(), fleet.RolloutOptions{WaveSize: wave})
				if err != nil {
					b.Fatal(err)
				}
				results = append(results, res)
			}
			h.reportRollouts(b, results)
		})
	}
}

// TestScale_HarnessConverges ensures the benchmark's harness works (and
// is race-free): three agents against a real etcd converge on two
// releases in turn, one in a single wave, one in waves of one node.
func TestScale_HarnessConverges(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // registered first: runs after the agents and etcd stopped
	h := startHarness(t, 3, time.Millisecond, 3)
	for _, o := range []fleet.RolloutOptions{{}, {WaveSize: 1}} {
		res, err := h.rollout(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.reported) != 3 || len(res.applied) != 3 {
			t.Fatalf("rollout of v%d: %d nodes reported it up and %d applied it, want 3", res.version, len(res.reported), len(res.applied))
		}
		if got := res.delta.sum("grpc_server_msg_received_total", "grpc_method", "Txn"); got == 0 {
			t.Errorf("rollout of v%d: no Txn counted by etcd's metrics", res.version)
		}
	}
	for _, sn := range h.nodes {
		if st, _ := sn.AppStatus(context.Background(), benchApp); st.Version != 2 || st.Healthy != 1 || st.Instances != 1 {
			t.Errorf("node %s runs v%d with %d/%d up, want v2 with 1/1", sn.name, st.Version, st.Healthy, st.Instances)
		}
	}
}

// simNode is the Node of a simulated agent, in memory: Apply records the
// release as active after a delay (the switch), AppStatus reports the
// active release with its one instance up (none once Stop stopped it),
// and builds are digests in a map (ImportBuild verifies the SHA-256).
type simNode struct {
	name    string
	delay   time.Duration
	applied func(node string, version int) // called after each Apply

	mu      sync.Mutex // guards active, stopped and builds
	active  map[string]int
	stopped map[string]bool
	builds  map[string]bool
}

func newSimNode(name string, delay time.Duration, builds []string, applied func(string, int)) *simNode {
	sn := &simNode{name: name, delay: delay, applied: applied, active: map[string]int{}, stopped: map[string]bool{}, builds: map[string]bool{}}
	for _, d := range builds {
		sn.builds[d] = true
	}
	return sn
}

func (sn *simNode) Apply(ctx context.Context, r fleet.Release) error {
	if !sn.HasBuild(r.Build) {
		return fmt.Errorf("apply v%d: build %s not imported", r.Version, r.Build[:12])
	}
	t := time.NewTimer(sn.delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	sn.mu.Lock()
	sn.active[r.App] = r.Version
	delete(sn.stopped, r.App)
	sn.mu.Unlock()
	sn.applied(sn.name, r.Version)
	return nil
}

func (sn *simNode) AppStatus(_ context.Context, app string) (fleet.LocalStatus, error) {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	v, ok := sn.active[app]
	if !ok {
		return fleet.LocalStatus{}, nil
	}
	if sn.stopped[app] {
		return fleet.LocalStatus{Version: v, Stopped: true}, nil
	}
	return fleet.LocalStatus{Version: v, Healthy: 1, Instances: 1}, nil
}

func (sn *simNode) Stop(_ context.Context, app string) error {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	if sn.active[app] > 0 {
		sn.stopped[app] = true
	}
	return nil
}

func (sn *simNode) HasBuild(digest string) bool {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	return sn.builds[digest]
}

func (sn *simNode) ImportBuild(_ context.Context, body io.Reader, digest string) error {
	h := sha256.New()
	if _, err := io.Copy(h, body); err != nil {
		return fmt.Errorf("import build %s: %w", digest[:12], err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != digest {
		return fmt.Errorf("import build %s: the tarball's SHA-256 is %s", digest[:12], got[:12])
	}
	sn.mu.Lock()
	sn.builds[digest] = true
	sn.mu.Unlock()
	return nil
}

// harness is one embedded etcd and n running agents.
type harness struct {
	n          int
	metricsURL string
	cli        *clientv3.Client // the harness's own watch (one stream, two watchers)
	fc         *fleet.Client
	nodes      []*simNode
	builds     []string // pre-seeded digests, one per rollout
	timeout    time.Duration

	mu        sync.Mutex // guards next and appliedAt
	next      int        // index in builds of the next rollout's build
	appliedAt map[int]map[string]time.Time
}

// startHarness starts etcd, then n agents, and waits until every agent
// registered. It stops them all, agents first, when tb ends.
func startHarness(tb testing.TB, n int, delay time.Duration, rollouts int) *harness {
	tb.Helper()
	clientURL, metricsURL := startEtcd(tb)
	h := &harness{n: n, metricsURL: metricsURL, appliedAt: map[int]map[string]time.Time{},
		timeout: envDuration(tb, envTimeout, 15*time.Minute)}
	for i := range rollouts {
		sum := sha256.Sum256([]byte("berth scale benchmark build " + strconv.Itoa(i)))
		h.builds = append(h.builds, hex.EncodeToString(sum[:]))
	}
	var err error
	if h.cli, err = clientv3.New(clientv3.Config{Endpoints: []string{clientURL}, DialTimeout: 5 * time.Second}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.cli.Close() })
	if h.fc, err = fleet.NewClient(fleet.ClientConfig{Endpoints: []string{clientURL}}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.fc.Close() })

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tb.Cleanup(func() { cancel(); wg.Wait() }) // runs before etcd stops
	for i := range n {
		name := fmt.Sprintf("node-%04d", i)
		sn := newSimNode(name, delay, h.builds, h.applied)
		h.nodes = append(h.nodes, sn)
		var log hclog.Logger // nil: none
		if lvl := os.Getenv(envLog); lvl != "" {
			log = hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.LevelFromString(lvl), Output: os.Stderr})
		}
		f, err := fleet.New(fleet.Config{Endpoints: []string{clientURL}, Node: name, Dir: tb.TempDir(), Version: "bench"}, sn, log)
		if err != nil {
			tb.Fatal(err)
		}
		wg.Go(func() {
			if err := f.Run(ctx); err != nil {
				tb.Errorf("agent %s: %v", name, err)
			}
		})
	}
	h.waitRegistered(tb)
	return h
}

// waitRegistered waits until every agent's record is in etcd, watching
// the nodes' keys.
func (h *harness) waitRegistered(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pfx := fleet.DefaultPrefix + "nodes/"
	resp, err := h.cli.Get(ctx, pfx, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		tb.Fatal(err)
	}
	seen := map[string]bool{}
	for _, kv := range resp.Kvs {
		seen[string(kv.Key)] = true
	}
	wch := h.cli.Watch(ctx, pfx, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	for len(seen) < h.n {
		wr, ok := <-wch
		if !ok || wr.Err() != nil {
			tb.Fatalf("waiting for %d agents to register (%d did): %v", h.n, len(seen), errors.Join(ctx.Err(), wr.Err()))
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypePut {
				seen[string(ev.Kv.Key)] = true
			}
		}
	}
}

// applied records when a simulated node finished switching to version.
func (h *harness) applied(node string, version int) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.appliedAt[version] == nil {
		h.appliedAt[version] = map[string]time.Time{}
	}
	if _, ok := h.appliedAt[version][node]; !ok {
		h.appliedAt[version][node] = now
	}
}

// rolloutResult is what one rollout measured.
type rolloutResult struct {
	version  int
	waves    int
	reported []time.Duration // per node, from the deploy call to its status up in etcd
	applied  []time.Duration // per node, from the deploy call to the end of its Apply
	total    time.Duration   // from the deploy call to the rollout recorded as succeeded
	settle   time.Duration   // from then until etcd was quiet
	delta    metrics         // etcd's counters over the rollout
	// lockPuts and lockDeletes count the writes of the rollout locks'
	// keys, lockNodes the leases (nodes) that wrote one.
	lockPuts, lockDeletes, lockNodes int
}

// countLocks counts the writes under the rollout locks' prefix from a
// revision on, until ctx ends; the function it returns waits for that
// and returns the counts.
func (h *harness) countLocks(ctx context.Context, from clientv3.OpOption) func() (puts, deletes, nodes int) {
	ch := h.cli.Watch(ctx, fleet.DefaultPrefix+"locks/", clientv3.WithPrefix(), from)
	done := make(chan struct{})
	var puts, deletes int
	leases := map[string]bool{}
	go func() { // owned: the returned function waits for it
		defer close(done)
		for wr := range ch {
			for _, ev := range wr.Events {
				switch ev.Type {
				case clientv3.EventTypePut:
					puts++
					leases[string(ev.Kv.Key)] = true
				case clientv3.EventTypeDelete:
					deletes++
				}
			}
		}
	}()
	return func() (int, int, int) {
		<-done
		return puts, deletes, len(leases)
	}
}

// rollout deploys the next pre-seeded build to the fleet and waits,
// watching the app's statuses and its rollout record, until every node
// reports it up and the rollout succeeded.
func (h *harness) rollout(ctx context.Context, o fleet.RolloutOptions) (rolloutResult, error) {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	h.mu.Lock()
	build := h.builds[h.next%len(h.builds)] // a build again after them all: a new version all the same
	h.next++
	h.mu.Unlock()

	rolloutKey := fleet.DefaultPrefix + "apps/" + benchApp + "/rollout"
	statusPfx := fleet.DefaultPrefix + "status/" + benchApp + "/"
	resp, err := h.cli.Get(ctx, rolloutKey)
	if err != nil {
		return rolloutResult{}, err
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	from := clientv3.WithRev(resp.Header.Revision + 1)
	statusCh := h.cli.Watch(wctx, statusPfx, clientv3.WithPrefix(), from)
	rolloutCh := h.cli.Watch(wctx, rolloutKey, from)
	locks := h.countLocks(wctx, from)

	before, err := scrapeMetrics(ctx, h.metricsURL)
	if err != nil {
		return rolloutResult{}, err
	}
	start := time.Now()
	ro, err := h.fc.Deploy(ctx, benchApp, build, nil, "", o)
	if err != nil {
		return rolloutResult{}, fmt.Errorf("deploy: %w", err)
	}
	res := rolloutResult{version: ro.To.Version, waves: len(ro.Waves)}
	up := map[string]time.Duration{}
	succeeded := false
	var last fleet.Rollout // the last rollout record seen
	for !succeeded || len(up) < h.n {
		var wr clientv3.WatchResponse
		var ok bool
		select {
		case wr, ok = <-statusCh:
		case wr, ok = <-rolloutCh:
		}
		if !ok || wr.Err() != nil {
			return res, fmt.Errorf("rollout of v%d: %d of %d nodes up, succeeded %t (%s): %w", res.version, len(up), h.n, succeeded,
				h.diagnose(before, last), errors.Join(ctx.Err(), wr.Err()))
		}
		now := time.Since(start)
		for _, ev := range wr.Events {
			if ev.Type != clientv3.EventTypePut {
				continue
			}
			if string(ev.Kv.Key) == rolloutKey {
				var r fleet.Rollout
				if json.Unmarshal(ev.Kv.Value, &r) == nil && r.To.Version == res.version {
					last = r
					switch r.State {
					case fleet.RolloutSucceeded:
						succeeded, res.total = true, now
					case fleet.RolloutFailed:
						return res, fmt.Errorf("rollout of v%d failed: %s", res.version, r.Reason)
					}
				}
				continue
			}
			var st fleet.Status
			if json.Unmarshal(ev.Kv.Value, &st) == nil && st.Up(res.version) {
				if _, seen := up[st.Node]; !seen {
					up[st.Node] = now
				}
			}
		}
	}
	// The rollout's load goes on after it succeeded: watchers that fell
	// behind still receive its events, and agents whose view lags still
	// act on it. Count it all, up to the point where etcd is quiet.
	settled := time.Now()
	after, err := h.settle(ctx)
	if err != nil {
		return res, err
	}
	res.settle = time.Since(settled)
	res.delta = after.minus(before)
	wcancel()
	res.lockPuts, res.lockDeletes, res.lockNodes = locks()
	for _, d := range up {
		res.reported = append(res.reported, d)
	}
	h.mu.Lock()
	for _, at := range h.appliedAt[res.version] {
		res.applied = append(res.applied, at.Sub(start))
	}
	h.mu.Unlock()
	return res, nil
}

// diagnose says what went on in a rollout that did not end: the
// rollout record last seen and etcd's lease and lock counters since it
// started.
func (h *harness) diagnose(before metrics, last fleet.Rollout) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	now, err := scrapeMetrics(ctx, h.metricsURL)
	if err != nil {
		return err.Error()
	}
	d := now.minus(before)
	return fmt.Sprintf("last rollout record: state %q, driver %q, wave %d of %d, updated %s; since the deploy: leases granted %.0f, revoked %.0f, DeleteRange %.0f, Txn %.0f",
		last.State, last.Driver, last.Wave+1, len(last.Waves), last.Updated.Format(time.RFC3339Nano),
		d.sum("etcd_debugging_lease_granted_total", "", ""), d.sum("etcd_debugging_lease_revoked_total", "", ""),
		d.sum("grpc_server_msg_received_total", "grpc_method", "DeleteRange"), d.sum("grpc_server_msg_received_total", "grpc_method", "Txn"))
}

// settle waits until etcd is quiet: no watch event sent, no pending
// event and no request but lease keep-alives over one poll interval,
// and no slow watcher. It returns the last scrape.
func (h *harness) settle(ctx context.Context) (metrics, error) {
	const interval = 500 * time.Millisecond
	prev, err := scrapeMetrics(ctx, h.metricsURL)
	if err != nil {
		return nil, err
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for etcd to be quiet: %w", ctx.Err())
		case <-t.C:
		}
		cur, err := scrapeMetrics(ctx, h.metricsURL)
		if err != nil {
			return nil, err
		}
		d := cur.minus(prev)
		busy := d.sum("etcd_debugging_mvcc_events_total", "", "") + cur.sum("etcd_debugging_mvcc_pending_events_total", "", "") +
			cur.sum("etcd_debugging_mvcc_slow_watcher_total", "", "")
		for _, m := range methods {
			if m != "LeaseKeepAlive" {
				busy += d.sum("grpc_server_msg_received_total", "grpc_method", m)
			}
		}
		if busy == 0 {
			return cur, nil
		}
		prev = cur
	}
}

func (h *harness) scrape(tb testing.TB) metrics {
	tb.Helper()
	m, err := scrapeMetrics(context.Background(), h.metricsURL)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// The gRPC methods whose requests the figures count.
var methods = []string{"Range", "Put", "Txn", "DeleteRange", "LeaseGrant", "LeaseKeepAlive", "LeaseRevoke", "Watch"}

// reportRollouts reports the rollouts' figures (per node: every
// rollout's nodes in one sample) and logs them as a table.
func (h *harness) reportRollouts(b *testing.B, results []rolloutResult) {
	var reported, applied []time.Duration
	var total, settle time.Duration
	var delta metrics
	var lockPuts, lockDeletes, lockNodes int
	for _, r := range results {
		lockPuts, lockDeletes, lockNodes = lockPuts+r.lockPuts, lockDeletes+r.lockDeletes, max(lockNodes, r.lockNodes)
		reported = append(reported, r.reported...)
		applied = append(applied, r.applied...)
		total += r.total
		settle += r.settle
		delta = delta.plus(r.delta)
	}
	k := float64(len(results))
	n := float64(h.n)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(0, "ns/op") // the op is a rollout; its figures follow
	b.ReportMetric(ms(percentile(reported, 0.50)), "p50-ms/node")
	b.ReportMetric(ms(percentile(reported, 0.99)), "p99-ms/node")
	b.ReportMetric(ms(total)/k, "rollout-ms")
	b.ReportMetric(ms(settle)/k, "settle-ms")
	reqs := 0.0
	for _, m := range methods {
		c := delta.sum("grpc_server_msg_received_total", "grpc_method", m) / k
		reqs += c
		if c > 0 {
			b.ReportMetric(c, "req-"+m)
		}
	}
	b.ReportMetric(reqs/n, "req/node")
	events := delta.sum("etcd_debugging_mvcc_events_total", "", "") / k
	b.ReportMetric(events, "watch-events")
	sent := delta.sum("etcd_network_client_grpc_sent_bytes_total", "", "") / k
	recv := delta.sum("etcd_network_client_grpc_received_bytes_total", "", "") / k
	b.ReportMetric(sent/n, "sent-B/node")
	b.ReportMetric(recv/n, "recv-B/node")
	b.ReportMetric(float64(lockPuts+lockDeletes)/k, "lock-writes")

	var t strings.Builder
	fmt.Fprintf(&t, "\n%d nodes, %d rollout(s), %d wave(s) each (etcd's counters per rollout, until etcd is quiet; the harness adds 1 watch stream and 3 watchers)\n", h.n, len(results), results[0].waves)
	fmt.Fprintf(&t, "| figure | value |\n|---|---|\n")
	row := func(name, format string, args ...any) {
		fmt.Fprintf(&t, "| %s | "+format+" |\n", append([]any{name}, args...)...)
	}
	row("status up in etcd, p50 / p99 / max per node", "%.0f / %.0f / %.0f ms", ms(percentile(reported, .5)), ms(percentile(reported, .99)), ms(percentile(reported, 1)))
	row("Apply done, p50 / p99 per node", "%.0f / %.0f ms", ms(percentile(applied, .5)), ms(percentile(applied, .99)))
	row("rollout total (to succeeded)", "%.0f ms", ms(total)/k)
	row("then until etcd is quiet", "%.0f ms", ms(settle)/k)
	for _, m := range methods {
		if c := delta.sum("grpc_server_msg_received_total", "grpc_method", m) / k; c > 0 {
			row("requests "+m, "%.0f (%.1f per node)", c, c/n)
		}
	}
	row("requests, all", "%.0f (%.1f per node)", reqs, reqs/n)
	row("mvcc put / delete / txn / range", "%.0f / %.0f / %.0f / %.0f", delta.sum("etcd_mvcc_put_total", "", "")/k, delta.sum("etcd_mvcc_delete_total", "", "")/k,
		delta.sum("etcd_mvcc_txn_total", "", "")/k, delta.sum("etcd_mvcc_range_total", "", "")/k)
	row("rollout lock writes (put / delete; nodes that tried)", "%.0f / %.0f; %d", float64(lockPuts)/k, float64(lockDeletes)/k, lockNodes)
	row("watch events sent", "%.0f (%.1f per node)", events, events/n)
	row("bytes sent by etcd", "%.0f (%.0f per node)", sent, sent/n)
	row("bytes received by etcd", "%.0f (%.0f per node)", recv, recv/n)
	b.Log(t.String())
}

// reportIdle reports what an idle fleet costs etcd per second.
func (h *harness) reportIdle(b *testing.B, before, after metrics, window time.Duration) {
	d := after.minus(before)
	s := window.Seconds()
	n := float64(h.n)
	keepalives := d.sum("grpc_server_msg_received_total", "grpc_method", "LeaseKeepAlive") / s
	renewed := d.sum("etcd_debugging_lease_renewed_total", "", "") / s
	reqs := 0.0
	for _, m := range methods {
		reqs += d.sum("grpc_server_msg_received_total", "grpc_method", m)
	}
	reqs /= s
	sent := d.sum("etcd_network_client_grpc_sent_bytes_total", "", "") / s
	recv := d.sum("etcd_network_client_grpc_received_bytes_total", "", "") / s
	streams := after.sum("etcd_debugging_mvcc_watch_stream_total", "", "")
	watchers := after.sum("etcd_debugging_mvcc_watcher_total", "", "")
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(keepalives, "keepalives/s")
	b.ReportMetric(reqs, "req/s")
	b.ReportMetric(streams, "watch-streams")
	b.ReportMetric(watchers, "watchers")
	b.ReportMetric(sent/n, "sent-B/s/node")
	b.ReportMetric(recv/n, "recv-B/s/node")

	var t strings.Builder
	fmt.Fprintf(&t, "\n%d nodes at idle, over %s (the harness adds 1 watch stream; its 3 watchers are open only during a rollout)\n", h.n, window)
	fmt.Fprintf(&t, "| figure | value |\n|---|---|\n")
	row := func(name, format string, args ...any) {
		fmt.Fprintf(&t, "| %s | "+format+" |\n", append([]any{name}, args...)...)
	}
	row("lease keep-alives", "%.1f/s (%.3f per node; leases renewed %.1f/s)", keepalives, keepalives/n, renewed)
	for _, m := range methods {
		if c := d.sum("grpc_server_msg_received_total", "grpc_method", m) / s; c > 0 {
			row("requests "+m, "%.1f/s", c)
		}
	}
	row("requests, all", "%.1f/s", reqs)
	row("watch events sent", "%.1f/s", d.sum("etcd_debugging_mvcc_events_total", "", "")/s)
	row("watch streams / watchers", "%.0f / %.0f", streams, watchers)
	row("bytes sent by etcd", "%.0f/s (%.1f per node)", sent, sent/n)
	row("bytes received by etcd", "%.0f/s (%.1f per node)", recv, recv/n)
	row("keys / db size", "%.0f / %.0f bytes", after.sum("etcd_debugging_mvcc_keys_total", "", ""), after.sum("etcd_mvcc_db_total_size_in_bytes", "", ""))
	b.Log(t.String())
}

// logRecords logs the count and the mean size (key and value) of the
// records under the prefix, by kind: what a list of the prefix reads and
// what each event of a kind weighs.
func (h *harness) logRecords(b *testing.B) {
	resp, err := h.cli.Get(context.Background(), fleet.DefaultPrefix, clientv3.WithPrefix())
	if err != nil {
		b.Fatal(err)
	}
	type agg struct{ n, bytes int }
	kinds := map[string]*agg{}
	total := 0
	for _, kv := range resp.Kvs {
		rest := strings.TrimPrefix(string(kv.Key), fleet.DefaultPrefix)
		kind, _, _ := strings.Cut(rest, "/")
		if kind == "apps" {
			kind = "apps/" + rest[strings.LastIndex(rest, "/")+1:]
			if strings.Contains(rest, "/releases/") {
				kind = "apps/releases/N"
			}
		}
		if kinds[kind] == nil {
			kinds[kind] = &agg{}
		}
		kinds[kind].n++
		kinds[kind].bytes += len(kv.Key) + len(kv.Value)
		total += len(kv.Key) + len(kv.Value)
	}
	var t strings.Builder
	fmt.Fprintf(&t, "\nrecords under %s with %d nodes: %d keys, %d bytes (a list of the prefix)\n| kind | keys | mean bytes (key + value) |\n|---|---|---|\n", fleet.DefaultPrefix, h.n, len(resp.Kvs), total)
	for _, k := range slices.Sorted(maps.Keys(kinds)) {
		fmt.Fprintf(&t, "| %s | %d | %d |\n", k, kinds[k].n, kinds[k].bytes/kinds[k].n)
	}
	b.Log(t.String())
}

// percentile returns the q-quantile of ds (nearest rank), 0 for none.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// metrics is one scrape of etcd's /metrics: the value of each series,
// by metric name and then by its labels ("k=v,k=v").
type metrics map[string]map[string]series

type series struct {
	labels map[string]string
	value  float64
}

// scrapeMetrics reads etcd's /metrics (counters, gauges and untyped).
func scrapeMetrics(ctx context.Context, base string) (metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Close = true // no idle connection left behind (goleak)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape etcd's metrics: %w", err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape etcd's metrics: %w", err)
	}
	out := metrics{}
	for name, fam := range fams {
		for _, m := range fam.GetMetric() {
			var v float64
			switch {
			case m.Counter != nil:
				v = m.Counter.GetValue()
			case m.Gauge != nil:
				v = m.Gauge.GetValue()
			case m.Untyped != nil:
				v = m.Untyped.GetValue()
			default:
				continue
			}
			labels := map[string]string{}
			var id []string
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
				id = append(id, lp.GetName()+"="+lp.GetValue())
			}
			if out[name] == nil {
				out[name] = map[string]series{}
			}
			out[name][strings.Join(id, ",")] = series{labels: labels, value: v}
		}
	}
	return out, nil
}

// minus returns m - o, series by series (gauges too: callers read the
// gauges of a scrape, not of a difference).
func (m metrics) minus(o metrics) metrics {
	out := metrics{}
	for name, ss := range m {
		out[name] = map[string]series{}
		for id, s := range ss {
			out[name][id] = series{labels: s.labels, value: s.value - o[name][id].value}
		}
	}
	return out
}

func (m metrics) plus(o metrics) metrics {
	out := metrics{}
	for _, src := range []metrics{m, o} {
		for name, ss := range src {
			if out[name] == nil {
				out[name] = map[string]series{}
			}
			for id, s := range ss {
				out[name][id] = series{labels: s.labels, value: out[name][id].value + s.value}
			}
		}
	}
	return out
}

// sum adds up the series of name whose label is value (every series
// when label is "").
func (m metrics) sum(name, label, value string) float64 {
	total := 0.0
	for _, s := range m[name] {
		if label == "" || s.labels[label] == value {
			total += s.value
		}
	}
	return total
}

// startEtcd starts a single-member etcd in a temp dir on loopback ports
// and returns its client URL and the URL of its separate /metrics
// listener. It stops when tb ends.
func startEtcd(tb testing.TB) (clientURL, metricsURL string) {
	tb.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "bench"
	cfg.Dir = tb.TempDir()
	cfg.Logger, cfg.LogLevel = "zap", "fatal" // its shutdown logs "server closed" as errors
	cfg.Metrics = "basic"
	peer, client, mtr := freeURL(tb), freeURL(tb), freeURL(tb)
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenMetricsUrls = []url.URL{mtr}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		tb.Fatalf("start etcd: %v", err)
	}
	tb.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		tb.Fatalf("etcd: %v", err)
	case <-time.After(time.Minute):
		tb.Fatal("etcd not ready within a minute")
	}
	return client.String(), mtr.String()
}

// freeURL returns an http URL on a loopback port that was free a moment
// ago (etcd needs its ports in its config before it listens).
func freeURL(tb testing.TB) url.URL {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return url.URL{Scheme: "http", Host: ln.Addr().String()}
}

func envInt(tb testing.TB, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		tb.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return v
}

func envDuration(tb testing.TB, name string, def time.Duration) time.Duration {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		tb.Fatalf("%s=%q: want a duration", name, s)
	}
	return v
}
