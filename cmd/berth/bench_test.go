package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
)

// switchesPerOp is how many release switches each benchmark iteration
// measures, so that `-benchtime 1x` still yields a median.
const switchesPerOp = 7

// BenchmarkConfigSet20 measures `berth config set` on an app with 20
// web instances: the CLI's own time (it returns once the new processes
// run) and the time until the agent reports all 20 running on the new
// release, from the command's start and from its return. It reports the
// medians. The agent runs with --settle 300ms --probation 300ms (see
// spawnAgent): the CLI's time includes those waits, the time to "all
// running" does not depend on them. BERTH_BENCH_AGENT_FLAGS adds agent
// flags, for what-if runs (e.g. --keep-image-mapped).
func BenchmarkConfigSet20(b *testing.B) {
	benchSwitch(b, func(e *e2e, i int) []string {
		return []string{"config", "set", "-a", e2eApp, "--json", fmt.Sprintf("FOO=%d", i)}
	})
}

// BenchmarkDeployExisting20 is BenchmarkConfigSet20 for a deploy of a
// build the agent has imported already (the same tarball again).
func BenchmarkDeployExisting20(b *testing.B) {
	benchSwitch(b, func(e *e2e, _ int) []string {
		return []string{"deploy", "-a", e2eApp, "--json", e.dir + "/app.tar.gz"}
	})
}

func benchSwitch(b *testing.B, args func(e *e2e, i int) []string) {
	const instances = 20
	e := newE2E(b)
	writeFile(b, e.dir, "app.tar.gz", appTarball(b, map[string]string{"Procfile": "web: " + webCmd + "\n"}))
	e.startAgent(strings.Fields(os.Getenv("BERTH_BENCH_AGENT_FLAGS"))...)
	e.ok("deploy", "-a", e2eApp, e.dir+"/app.tar.gz")
	e.ok("scale", "-a", e2eApp, fmt.Sprintf("web=%d", instances))
	e.running(e2eApp, instances, 1)
	c := api.NewClient(e.sock)
	defer c.Close()

	var cli, total, lag, up []time.Duration
	prev := 1
	b.ResetTimer()
	for i := range b.N * switchesPerOp {
		// Watch the agent while the command runs, for the moment all 20
		// instances first run on a newer release (before the settle and
		// probation waits end).
		watchCtx, stopWatch := context.WithCancel(context.Background())
		upAt := make(chan time.Time, 1)
		go func() {
			defer close(upAt)
			for watchCtx.Err() == nil {
				if allNewer(c, prev, instances) {
					upAt <- time.Now()
					return
				}
				time.Sleep(2 * time.Millisecond) // bounded poll of the agent's state
			}
		}()
		start := time.Now()
		out := e.ok(args(e, i)...)
		returned := time.Now()
		stopWatch()
		var rel api.Release
		if err := json.Unmarshal([]byte(out), &rel); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		prev = rel.Version
		if t, ok := <-upAt; ok {
			up = append(up, t.Sub(start))
		}
		for !allRunning(b, c, rel.Version, instances) {
			if time.Since(returned) > time.Minute {
				b.Fatalf("v%d: the %d instances did not all run within a minute", rel.Version, instances)
			}
			time.Sleep(2 * time.Millisecond) // bounded poll of the agent's state
		}
		done := time.Now()
		cli = append(cli, returned.Sub(start))
		total = append(total, done.Sub(start))
		lag = append(lag, done.Sub(returned))
	}
	b.StopTimer()
	ms := func(d []time.Duration) float64 { return float64(p50(d)) / float64(time.Millisecond) }
	b.ReportMetric(ms(cli), "ms-cli-p50")
	b.ReportMetric(ms(total), "ms-all-running-p50")
	b.ReportMetric(ms(lag), "ms-after-return-p50")
	if len(up) > 0 {
		b.ReportMetric(ms(up), "ms-new-up-p50")
		b.Logf("the 20 new instances were all running %s (p50) after the command started", p50(up).Round(time.Millisecond))
	}
	b.Logf("%d switches of %d instances: command p50 %s, all running p50 %s after the start and %s after the command returned",
		len(cli), instances, p50(cli).Round(time.Millisecond), p50(total).Round(time.Millisecond), p50(lag).Round(time.Millisecond))
	e.stopAgent()
}

// allRunning reports whether exactly n instances run, all on release v.
func allRunning(b *testing.B, c *api.Client, v, n int) bool {
	procs, err := c.Processes(context.Background(), e2eApp)
	if err != nil {
		b.Fatal(err)
	}
	count := 0
	for _, p := range procs {
		if p.State != "running" || p.Release != v {
			return false
		}
		count++
	}
	return count == n
}

// allNewer reports whether exactly n instances run, all on a release
// newer than prev.
func allNewer(c *api.Client, prev, n int) bool {
	procs, err := c.Processes(context.Background(), e2eApp)
	if err != nil || len(procs) != n {
		return false
	}
	for _, p := range procs {
		if p.State != "running" || p.Release <= prev {
			return false
		}
	}
	return true
}

// p50 returns the median.
func p50(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkAgentIdle100 runs the whole agent (`berth agent`, the binary
// operators run: API server, store, inbox, watchdog, supervisor) with 100
// idle instances and reports its PSS (and the part of it that is the
// agent's own executable) and the CPU it uses over a few seconds of
// idle, then its PSS with 1,000 and the cost of each extra instance. The
// supervisor's own BenchmarkIdle measures a bare supervising process;
// this one catches what the rest of the agent adds (timers that fire
// while nothing happens, garbage kept after a change, pages of the
// binary left mapped), as the peer harness (../shared/bench) does. A
// second agent with --keep-image-mapped runs the same steps after it, so
// the run also gives what the executable trim (agent/trim.go) saves.
// BERTH_BENCH_IDLE sets the idle time (default 5s).
func BenchmarkAgentIdle100(b *testing.B) {
	idle := 5 * time.Second
	if v := os.Getenv("BERTH_BENCH_IDLE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("BERTH_BENCH_IDLE: %v", err)
		}
		idle = d
	}
	b.ResetTimer()
	for range b.N {
		trimmed := agentIdle(b, idle)
		kept := agentIdle(b, idle, "--keep-image-mapped")
		b.ReportMetric(float64(trimmed.pss100)/1024, "pss100-MB")
		b.ReportMetric(float64(trimmed.file100)/1024, "pss100-file-MB")
		b.ReportMetric(float64(trimmed.pss1000)/1024, "pss1000-MB")
		b.ReportMetric(trimmed.perInstance(), "KB/instance")
		b.ReportMetric(float64(trimmed.cpu)/float64(time.Millisecond), "idle-cpu-ms")
		b.ReportMetric(float64(kept.pss100)/1024, "kept-pss100-MB")
		b.ReportMetric(float64(kept.file100)/1024, "kept-pss100-file-MB")
		for _, r := range []struct {
			name string
			m    idleFigures
		}{{"whole agent", trimmed}, {"with --keep-image-mapped", kept}} {
			b.Logf("%s PSS: 100 idle instances %.1f MB (%.1f MB of it file pages, mostly the executable), 1000 %.1f MB (%.1f KB per extra instance); CPU over %v idle with 100: %.2f ms",
				r.name, float64(r.m.pss100)/1024, float64(r.m.file100)/1024, float64(r.m.pss1000)/1024, r.m.perInstance(), idle, float64(r.m.cpu)/float64(time.Millisecond))
		}
	}
	b.StopTimer()
}

// idleFigures are what agentIdle measures; sizes in KB.
type idleFigures struct {
	pss100, file100, pss1000 int
	cpu                      time.Duration
}

func (f idleFigures) perInstance() float64 { return float64(f.pss1000-f.pss100) / 900 }

// agentIdle starts an agent with the extra flags, runs 100 then 1,000
// idle instances under it, and measures it.
func agentIdle(b *testing.B, idle time.Duration, extra ...string) idleFigures {
	// 50 types of 2 instances, then of 20: 100 and 1,000 instances.
	const types = 50
	var procfile strings.Builder
	for i := range types {
		fmt.Fprintf(&procfile, "t%02d: exec sleep 3600\n", i)
	}
	e := newE2E(b)
	writeFile(b, e.dir, "app.tar.gz", appTarball(b, map[string]string{"Procfile": procfile.String()}))
	e.startAgent(append([]string{"--log-level", "info"}, extra...)...)
	e.ok("deploy", "-a", e2eApp, e.dir+"/app.tar.gz")
	c := api.NewClient(e.sock)
	defer c.Close()
	pid := e.agent.cmd.Process.Pid
	scale := func(each int) {
		args := []string{"scale", "-a", e2eApp}
		for i := range types {
			args = append(args, fmt.Sprintf("t%02d=%d", i, each))
		}
		e.ok(args...)
		n := types * each
		deadline := time.Now().Add(2 * time.Minute)
		for !allUp(b, c, n) {
			if time.Now().After(deadline) {
				b.Fatalf("the %d instances did not all run within 2 minutes", n)
			}
			time.Sleep(50 * time.Millisecond) // bounded poll of the agent's state
		}
		time.Sleep(2 * time.Second) // as the harness: let start-up settle before measuring
	}
	var f idleFigures
	scale(2)
	f.pss100, f.file100 = procPSS(b, pid)
	cpu0 := procCPU(b, pid)
	time.Sleep(idle)
	f.cpu = procCPU(b, pid) - cpu0
	scale(20)
	f.pss1000, _ = procPSS(b, pid)
	scale(0)
	e.stopAgent()
	return f
}

// allUp reports whether exactly n instances run, of any release.
func allUp(b *testing.B, c *api.Client, n int) bool {
	procs, err := c.Processes(context.Background(), e2eApp)
	if err != nil {
		b.Fatal(err)
	}
	count := 0
	for _, p := range procs {
		if p.State == "running" {
			count++
		}
	}
	return count == n && len(procs) == n
}

// procPSS returns the proportional set size of pid and its file-backed
// part, in KB.
func procPSS(b *testing.B, pid int) (pss, file int) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		b.Fatal(err)
	}
	found := 0
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || (f[0] != "Pss:" && f[0] != "Pss_File:") {
			continue
		}
		kb, err := strconv.Atoi(f[1])
		if err != nil {
			b.Fatal(err)
		}
		if f[0] == "Pss:" {
			pss = kb
		} else {
			file = kb
		}
		found++
	}
	if found != 2 {
		b.Fatal("no Pss or Pss_File in smaps_rollup")
	}
	return pss, file
}

// procCPU sums the CPU time of every thread of pid (schedstat, in ns).
func procCPU(b *testing.B, pid int) time.Duration {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue // the thread has exited
		}
		ns, err := strconv.ParseInt(strings.Fields(string(data))[0], 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		total += time.Duration(ns)
	}
	return total
}

// restartWorker is the program of BenchmarkRestartAll20, as the peer
// harness's worker: it reports "start PID SECONDS.MICROS" to the fifo
// $1, then becomes a sleep that dies at once on SIGTERM.
const restartWorker = `#!/bin/bash
echo "start $$ $EPOCHREALTIME" > "$1"
exec sleep 3600
`

// BenchmarkRestartAll20 measures what the peer harness's restart-all
// row measures, which the supervisor's own BenchmarkRestartAll20 does
// not: the whole path an operator runs, from the start of a `berth
// restart -a APP` process (the CLI's own start-up included) through
// the agent to 20 new processes, one per type, each run as the
// harness's adapter writes them (`env BENCH_TOKEN=... worker.sh`).
// The time ends when the last new process reports. The floor is what
// the harness's baseline does: bash TERMs the 20 programs, waits for
// them and starts 20 new ones. It also reports the CLI's start-up alone
// (`berth version` against the agent). Berth and the floor alternate
// for 7 rounds and the medians are compared.
func BenchmarkRestartAll20(b *testing.B) {
	const n, rounds = 20, 7
	e := newE2E(b)
	fifo := filepath.Join(e.dir, "ready")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.Chmod(fifo, 0o666); err != nil { // apps run as their own uid
		b.Fatal(err)
	}
	ready, err := os.OpenFile(fifo, os.O_RDWR, 0) // read-write: no EOF between writers
	if err != nil {
		b.Fatal(err)
	}
	defer ready.Close()
	lines := bufio.NewReader(ready)
	// wait reads n start lines and returns the latest start.
	wait := func() time.Time {
		var last time.Time
		for range n {
			ready.SetReadDeadline(time.Now().Add(time.Minute))
			line, err := lines.ReadString('\n')
			if err != nil {
				b.Fatalf("ready fifo: %v", err)
			}
			var pid int
			var sec, usec int64
			if _, err := fmt.Sscanf(strings.Replace(line, ".", " ", 1), "start %d %d %d", &pid, &sec, &usec); err != nil {
				b.Fatalf("bad ready line %q: %v", line, err)
			}
			if at := time.Unix(sec, usec*1000); at.After(last) {
				last = at
			}
		}
		return last
	}
	var procfile strings.Builder
	for i := range n {
		fmt.Fprintf(&procfile, "w%02d: env BENCH_TOKEN=tok-w%02d ./worker.sh %s\n", i, i, fifo)
	}
	writeFile(b, e.dir, "app.tar.gz", appTarball(b, map[string]string{"Procfile": procfile.String(), "worker.sh": restartWorker}))
	writeFile(b, e.dir, "worker.sh", []byte(restartWorker))
	if err := os.Chmod(filepath.Join(e.dir, "worker.sh"), 0o755); err != nil {
		b.Fatal(err)
	}
	e.startAgent("--log-level", "info")
	e.ok("deploy", "-a", e2eApp, e.dir+"/app.tar.gz")
	wait()

	floorScript := `pids=(); for i in $(seq -w 0 19); do env BENCH_TOKEN=tok-w$i ` + e.dir + `/worker.sh ` + fifo + ` & pids+=($!); done; read x; ` +
		`kill -TERM ${pids[@]}; wait ${pids[@]}; for i in $(seq -w 0 19); do env BENCH_TOKEN=tok-w$i ` + e.dir + `/worker.sh ` + fifo + ` & done; read x; kill -TERM $(jobs -p); wait`
	var berths, floors, cliStarts []time.Duration
	b.ResetTimer()
	for range b.N * rounds {
		time.Sleep(1500 * time.Millisecond) // as the harness: settled before each round

		t0 := time.Now()
		cli := exec.Command(e.bin, "restart", "-a", e2eApp)
		cli.Env = []string{"BERTH_SOCKET=" + e.sock, "PATH=" + os.Getenv("PATH")}
		if err := cli.Start(); err != nil {
			b.Fatal(err)
		}
		berths = append(berths, wait().Sub(t0))
		if err := cli.Wait(); err != nil {
			b.Fatalf("berth restart: %v\nagent log:\n%s", err, e.agentLog())
		}

		t0 = time.Now()
		e.ok("version")
		cliStarts = append(cliStarts, time.Since(t0))

		floor := exec.Command("bash", "-c", floorScript)
		floor.Env = []string{"PATH=/usr/bin:/bin"}
		stdin, err := floor.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := floor.Start(); err != nil {
			b.Fatal(err)
		}
		wait()
		time.Sleep(500 * time.Millisecond)
		t0 = time.Now()
		io.WriteString(stdin, "go\n")
		floors = append(floors, wait().Sub(t0))
		io.WriteString(stdin, "done\n")
		if err := floor.Wait(); err != nil {
			b.Fatalf("floor: %v", err)
		}
	}
	b.StopTimer()
	ms := func(d []time.Duration) float64 { return float64(p50(d)) / float64(time.Millisecond) }
	b.ReportMetric(ms(berths), "restart20-ms")
	b.ReportMetric(ms(floors), "floor-restart20-ms")
	b.ReportMetric(ms(berths)/ms(floors), "ratio")
	b.ReportMetric(ms(cliStarts), "ms-cli-version")
	b.Logf("restart all 20 (env-prefixed bash programs, one type each) from the start of `berth restart` until the last new one reports, median of %d: berth %.1f ms vs bash's TERM-all, wait, start-all %.1f ms: ratio %.2f; `berth version` against the agent %.1f ms",
		len(berths), ms(berths), ms(floors), ms(berths)/ms(floors), ms(cliStarts))
	e.stopAgent()
}
