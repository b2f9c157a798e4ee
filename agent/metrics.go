package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	rtmetrics "runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/health"
	"github.com/berth-dev/berth/agent/internal/procfs"
	"github.com/berth-dev/berth/agent/internal/promtext"
	"github.com/berth-dev/berth/supervisor"
)

// Metrics in the Prometheus text format: GET /metrics on the control
// socket (the socket's peer checks apply), and on a TCP address of the
// operator's (Config.MetricsListen) that serves nothing else. Almost all
// of it is read at each scrape from the one owner of each fact (the
// supervisor's list, the store, the cgroups); only what happened and is
// kept nowhere else is counted here: switches, rollbacks and OOM kills,
// since the agent started.
//
// Labels carry names only (app, instance, release number, process type,
// switch kind and outcome): never a config value.

// switchBuckets are the bounds of berth_switch_duration_seconds: a
// switch takes at least the probation window (10 s by default).
var switchBuckets = []float64{0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600}

// metrics are the counts kept by the agent itself. The zero value is
// ready to use.
type metrics struct {
	mu        sync.Mutex                   // guards the fields below
	switches  map[switchKey]*promtext.Hist // by app, kind, outcome
	rollbacks map[[2]string]uint64         // by app, trigger (automatic, operator)
	oomKills  map[[2]string]uint64         // by app, process type
	addr      string                       // the TCP listener's address, once it listens
}

type switchKey struct{ app, kind, outcome string }

// Outcomes of a switch, as the outcome label says them.
const (
	outcomeOK          = "ok"          // the release is active and its instances up
	outcomeRolledBack  = "rolled_back" // it failed after activation; the previous release is back
	outcomeFailed      = "failed"      // it was refused or failed before activation
	outcomeInterrupted = "interrupted" // the agent shut down during it
)

// observeSwitch records a switch of kind (deploy, config, rollback) that
// began at start and ended with *err.
func (a *Agent) observeSwitch(app, kind string, start time.Time, err *error) {
	outcome := outcomeOK
	var serr *SwitchError
	switch {
	case *err == nil:
	case errors.Is(*err, ErrShuttingDown):
		outcome = outcomeInterrupted
	case errors.As(*err, &serr):
		outcome = outcomeRolledBack
	default:
		outcome = outcomeFailed
	}
	m := &a.met
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.switches == nil {
		m.switches = map[switchKey]*promtext.Hist{}
		m.rollbacks = map[[2]string]uint64{}
	}
	k := switchKey{app, kind, outcome}
	h := m.switches[k]
	if h == nil {
		h = promtext.NewHist(switchBuckets)
		m.switches[k] = h
	}
	h.Observe(time.Since(start).Seconds())
	switch {
	case outcome == outcomeRolledBack:
		m.rollbacks[[2]string{app, "automatic"}]++
	case outcome == outcomeOK && kind == "rollback":
		m.rollbacks[[2]string{app, "operator"}]++
	}
}

// countRollback counts an automatic rollback that happened after the
// switch returned (a failure in probation, probation.go), which
// observeSwitch no longer sees.
func (a *Agent) countRollback(app string) {
	m := &a.met
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rollbacks == nil {
		m.rollbacks = map[[2]string]uint64{}
	}
	m.rollbacks[[2]string{app, "automatic"}]++
}

// countOOMKill counts an instance killed by the OOM killer.
func (a *Agent) countOOMKill(in *instance) {
	m := &a.met
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.oomKills == nil {
		m.oomKills = map[[2]string]uint64{}
	}
	m.oomKills[[2]string{in.App, in.Type}]++
}

// WriteMetrics writes every metric in the Prometheus text format.
func (a *Agent) WriteMetrics(ctx context.Context, w io.Writer) error {
	return do0(a, ctx, opts{}, func(context.Context) error {
		return a.writeMetrics(w)
	})
}

func (a *Agent) writeMetrics(out io.Writer) error {
	apps, err := a.store.Apps()
	if err != nil {
		return err
	}
	now := time.Now()
	w := promtext.New(out)
	cfg := a.config()

	w.Family("berth_build_info", promtext.Gauge, "The agent's version (always 1).")
	w.Sample("berth_build_info", 1, "version", cfg.Version)
	w.Family("berth_agent_start_time_seconds", promtext.Gauge, "When the agent started, in seconds since the epoch.")
	w.Sample("berth_agent_start_time_seconds", unixSeconds(a.startedAt))
	w.Family("berth_limits_enforced", promtext.Gauge, "1 when the agent has a delegated cgroup to apply the limits of berth.json in (each instance in a cgroup of its own), 0 when it enforces none; ps says which limits a cgroup without their controller cannot enforce.")
	w.Sample("berth_limits_enforced", boolValue(a.sup.Enforces()))

	w.Family("berth_app_active_release", promtext.Gauge, "The version number of the app's active release (0: none).")
	for _, app := range apps {
		w.Sample("berth_app_active_release", float64(app.ActiveRelease), "app", app.Name)
	}

	sts := a.sup.List()
	type row struct {
		st supervisor.Status
		in *instance
		l  []string // app, instance, release labels
	}
	rows := make([]row, 0, len(sts))
	for _, st := range sts {
		if in := instanceOf(st.Meta); in != nil {
			rows = append(rows, row{st, in, []string{"app", in.App, "instance", in.Instance, "release", strconv.Itoa(in.Release)}})
		}
	}
	w.Family("berth_instance_state", promtext.Gauge, "1 for the instance's state, 0 for the others.")
	for _, r := range rows {
		for s := supervisor.StateStarting; s <= supervisor.StateCrashed; s++ {
			w.Sample("berth_instance_state", boolValue(r.st.State == s), append(r.l, "state", s.String())...)
		}
	}
	w.Family("berth_instance_restarts_total", promtext.Counter, "Automatic restarts of the instance (after exits, failed starts and failed health checks) since it was started.")
	for _, r := range rows {
		w.Sample("berth_instance_restarts_total", float64(r.st.Restarts), r.l...)
	}
	w.Family("berth_instance_last_exit_code", promtext.Gauge, "How the instance's last process ended: its exit code, or 128 plus the signal that killed it (137: SIGKILL, the OOM killer's). Absent until one has exited.")
	for _, r := range rows {
		if e := r.st.LastExit; e != nil {
			w.Sample("berth_instance_last_exit_code", float64(exitCode(*e)), r.l...)
		}
	}
	w.Family("berth_instance_health", promtext.Gauge, "1 for the instance's health (starting, healthy, unhealthy), 0 for the others; only for types with a health check.")
	for _, r := range rows {
		if r.in.prober == nil {
			continue
		}
		h, _ := r.in.prober.status(r.st.PID)
		for _, s := range []health.Status{health.Starting, health.Healthy, health.Unhealthy} {
			w.Sample("berth_instance_health", boolValue(h == s), append(r.l, "health", s.String())...)
		}
	}
	w.Family("berth_instance_uptime_seconds", promtext.Gauge, "How long the instance's current process has run; absent while none runs.")
	for _, r := range rows {
		if r.st.PID > 0 && !r.st.StartedAt.IsZero() {
			w.Sample("berth_instance_uptime_seconds", now.Sub(r.st.StartedAt).Seconds(), r.l...)
		}
	}
	w.Family("berth_instance_log_file_bytes", promtext.Gauge, "Size of the instance's live log file (rotated files not included).")
	for _, r := range rows {
		if fi, err := os.Stat(r.in.LogPath); err == nil {
			w.Sample("berth_instance_log_file_bytes", float64(fi.Size()), r.l...)
		}
	}
	usage := make([]supervisor.Usage, len(rows))
	have := make([]bool, len(rows))
	for i, r := range rows {
		usage[i], have[i] = a.sup.Usage(r.st.Name)
	}
	w.Family("berth_instance_memory_bytes", promtext.Gauge, "Memory charged to the instance's cgroup (memory.current); where cgroups are available.")
	for i, r := range rows {
		if have[i] {
			w.Sample("berth_instance_memory_bytes", float64(usage[i].MemoryBytes), r.l...)
		}
	}
	w.Family("berth_instance_memory_limit_bytes", promtext.Gauge, "The instance's memory_max from berth.json, where it is enforced.")
	for i, r := range rows {
		if have[i] && usage[i].Limits.MemoryMax > 0 {
			w.Sample("berth_instance_memory_limit_bytes", float64(usage[i].Limits.MemoryMax), r.l...)
		}
	}
	w.Family("berth_instance_cpu_seconds_total", promtext.Counter, "CPU time used by the instance's cgroup since its current process started (cpu.stat usage_usec); where cgroups are available.")
	for i, r := range rows {
		if have[i] {
			w.Sample("berth_instance_cpu_seconds_total", usage[i].CPU.Seconds(), r.l...)
		}
	}

	oneoffs := map[string]int{}
	for _, st := range a.sup.OneOffs() {
		if o, ok := st.Meta.(*oneOff); ok {
			oneoffs[o.App]++
		}
	}
	w.Family("berth_oneoff_running", promtext.Gauge, "One-off commands (berth run) running now.")
	for _, app := range apps {
		w.Sample("berth_oneoff_running", float64(oneoffs[app.Name]), "app", app.Name)
	}

	a.met.mu.Lock()
	switches := make(map[switchKey]promtext.HistogramData, len(a.met.switches))
	for k, h := range a.met.switches {
		switches[k] = h.Snapshot()
	}
	rollbacks := maps.Clone(a.met.rollbacks)
	ooms := maps.Clone(a.met.oomKills)
	a.met.mu.Unlock()

	w.Family("berth_switch_duration_seconds", promtext.Histogram, "Switches of an app to a release (deploy, config, rollback) by outcome (ok, rolled_back, failed, interrupted): the time from the request to the end, since the agent started.")
	keys := make([]switchKey, 0, len(switches))
	for k := range switches {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(x, y switchKey) int {
		return strings.Compare(x.app+"\x00"+x.kind+"\x00"+x.outcome, y.app+"\x00"+y.kind+"\x00"+y.outcome)
	})
	for _, k := range keys {
		w.Histogram("berth_switch_duration_seconds", switches[k], "app", k.app, "kind", k.kind, "outcome", k.outcome)
	}
	w.Family("berth_rollbacks_total", promtext.Counter, "Rollbacks since the agent started: automatic (a switch that failed after activation) or by an operator (berth rollback).")
	for _, k := range sortedPairs(rollbacks) {
		w.Sample("berth_rollbacks_total", float64(rollbacks[k]), "app", k[0], "trigger", k[1])
	}
	w.Family("berth_oom_kills_total", promtext.Counter, "Instances killed by the OOM killer (over their memory_max) since the agent started, by app and process type.")
	for _, k := range sortedPairs(ooms) {
		w.Sample("berth_oom_kills_total", float64(ooms[k]), "app", k[0], "type", k[1])
	}
	w.Family("berth_log_lines_dropped_total", promtext.Counter, "Log lines that slow followers (berth logs -f) missed; the log files never lose lines.")
	w.Sample("berth_log_lines_dropped_total", float64(a.sup.DroppedLines()))
	w.Family("berth_supervisor_events_dropped_total", promtext.Counter, "Supervisor events lost by full subscribers (the agent re-reads the state then).")
	w.Sample("berth_supervisor_events_dropped_total", float64(a.sup.DroppedEvents()))
	writeSelfMetrics(w)
	return w.Flush()
}

// selfSamples are the runtime/metrics the agent reports of itself, under
// the names Prometheus's Go collector gives them, so the usual dashboards
// find them.
var selfSamples = []struct{ name, metric, typ, help string }{
	{"go_goroutines", "/sched/goroutines:goroutines", promtext.Gauge, "Goroutines of the agent."},
	{"go_memstats_heap_inuse_bytes", "/memory/classes/heap/objects:bytes", promtext.Gauge, "Bytes of the agent's live and not yet swept heap objects."},
	{"go_memstats_stack_inuse_bytes", "/memory/classes/heap/stacks:bytes", promtext.Gauge, "Bytes of goroutine stacks."},
	{"go_memstats_sys_bytes", "/memory/classes/total:bytes", promtext.Gauge, "Bytes the Go runtime has mapped from the OS, released or not."},
	{"go_memstats_heap_released_bytes", "/memory/classes/heap/released:bytes", promtext.Gauge, "Bytes of heap returned to the OS."},
	{"go_gc_cycles_total", "/gc/cycles/total:gc-cycles", promtext.Counter, "Completed GC cycles."},
}

// writeSelfMetrics writes the agent's own Go runtime figures and, from
// /proc, its resident memory: what an operator looks at first when
// asking where the agent's memory goes (README, "Memory").
func writeSelfMetrics(w *promtext.Writer) {
	ms := make([]rtmetrics.Sample, len(selfSamples))
	for i, s := range selfSamples {
		ms[i].Name = s.metric
	}
	rtmetrics.Read(ms)
	for i, s := range selfSamples {
		var v float64
		switch ms[i].Value.Kind() {
		case rtmetrics.KindUint64:
			v = float64(ms[i].Value.Uint64())
		case rtmetrics.KindFloat64:
			v = ms[i].Value.Float64()
		default:
			continue // unknown to this Go version
		}
		w.Family(s.name, s.typ, s.help)
		w.Sample(s.name, v)
	}
	if rss, anon, err := procfs.SelfRSS(); err == nil {
		w.Family("process_resident_memory_bytes", promtext.Gauge, "The agent's resident memory (VmRSS): its anonymous memory plus the pages of files it maps, its own binary included.")
		w.Sample("process_resident_memory_bytes", float64(rss))
		w.Family("berth_agent_resident_anon_bytes", promtext.Gauge, "The anonymous part of the agent's resident memory (RssAnon): heap, stacks and runtime structures.")
		w.Sample("berth_agent_resident_anon_bytes", float64(anon))
	}
}

// exitCode is an exit as a shell gives it: the code, or 128 plus the
// signal.
func exitCode(e supervisor.Exit) int {
	if e.Signal != 0 {
		return 128 + int(e.Signal)
	}
	return e.Code
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func sortedPairs(m map[[2]string]uint64) [][2]string {
	keys := make([][2]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(x, y [2]string) int { return strings.Compare(x[0]+"\x00"+x[1], y[0]+"\x00"+y[1]) })
	return keys
}

// MetricsAddr returns the address the TCP metrics listener listens on,
// "" when there is none (yet).
func (a *Agent) MetricsAddr() string {
	a.met.mu.Lock()
	defer a.met.mu.Unlock()
	return a.met.addr
}

// listenMetrics serves GET /metrics, and nothing else, on a TCP address
// (Config.MetricsListen): a scraper needs no access to the control
// socket. It returns the function that stops it.
func (a *Agent) listenMetrics(addr string) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(rw http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		if err := a.WriteMetrics(r.Context(), &buf); err != nil {
			status := api.StatusOf(api.KindOf(err))
			http.Error(rw, err.Error(), status)
			return
		}
		rw.Header().Set("Content-Type", promtext.ContentType)
		rw.Write(buf.Bytes()) //nolint:errcheck // the scraper went away
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	done := make(chan struct{})
	go func() { // owned: the returned function waits for done
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("metrics listener stopped", "addr", addr, "error", err)
		}
	}()
	a.log.Info("serving metrics", "addr", ln.Addr().String())
	a.met.mu.Lock()
	a.met.addr = ln.Addr().String()
	a.met.mu.Unlock()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		<-done
	}, nil
}
