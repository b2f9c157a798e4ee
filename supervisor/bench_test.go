package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Benchmarks measure whole-process figures and print them beside a floor
// measured in the same run (see the table). Run with
// `make bench` (-benchtime 1x): each does its work once.

// quiesce writes back dirty pages (of earlier benchmarks, or of other
// packages' under make bench) so the kernel's writeback does not take
// CPU from one side of a comparison and not the other.
func quiesce() { syscall.Sync() }

func summary(format string, args ...any) {
	fmt.Printf("berth-bench: "+format+"\n", args...)
}

// stampSock receives the datagrams of helpers in "stamp" mode.
type stampSock struct {
	conn *net.UnixConn
	path string
}

type stamp struct {
	kind string
	pid  int
	at   time.Time
}

func newStampSock(b *testing.B) *stampSock {
	dir, err := os.MkdirTemp("", "bs")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	b.Cleanup(func() { c.Close() })
	return &stampSock{conn: c, path: path}
}

func (s *stampSock) next(b *testing.B) stamp {
	s.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 128)
	n, err := s.conn.Read(buf)
	if err != nil {
		b.Fatal(err)
	}
	var st stamp
	var ns int64
	if _, err := fmt.Sscanf(string(buf[:n]), "%s %d %d", &st.kind, &st.pid, &ns); err != nil {
		b.Fatalf("bad stamp %q", buf[:n])
	}
	st.at = time.Unix(0, ns)
	return st
}

// restartLatencies pairs each exit with the next start.
func (s *stampSock) restartLatencies(b *testing.B, n int) []time.Duration {
	var out []time.Duration
	var lastExit time.Time
	for len(out) < n {
		st := s.next(b)
		switch st.kind {
		case "exit":
			lastExit = st.at
		case "start":
			if !lastExit.IsZero() {
				out = append(out, st.at.Sub(lastExit))
			}
		}
	}
	slices.Sort(out)
	return out
}

func pct(d []time.Duration, p int) time.Duration { return d[min(len(d)-1, len(d)*p/100)] }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// runBash runs a bash script in its own group, for floors; kill stops it.
func runBash(b *testing.B, script string, env []string) (cmd *exec.Cmd, stdin io.WriteCloser, kill func()) {
	cmd = exec.Command("/bin/bash", "-c", script)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return cmd, stdin, func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}
}

// runSup runs a Supervisor for the benchmark; the returned func stops it.
func runSup(b *testing.B) (*Supervisor, func()) {
	s := New(Config{Subreaper: true}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-s.reaping
	return s, func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	}
}

// BenchmarkCrashToRestart measures, for a settled process that exits,
// the time from its exit to the exec of its replacement, p50 and p99,
// beside a bare `while true; do prog; done` bash loop.
func BenchmarkCrashToRestart(b *testing.B) {
	const samples = 200
	quiesce()
	sock := newStampSock(b)
	prog := helperCmd("stamp", sock.path, "20ms")
	env := helperEnv()

	// The floor first: no Supervisor may reap while bash runs in its own group.
	_, _, kill := runBash(b, "while true; do "+prog+"; done", env)
	floor := sock.restartLatencies(b, samples)
	kill()

	s, stop := runSup(b)
	defer stop()
	sock2 := newStampSock(b)
	err := s.Start(Spec{Name: "crasher", Command: helperCmd("stamp", sock2.path, "20ms"), Env: env,
		Backoff: Backoff{Settle: 10 * time.Millisecond}})
	if err != nil {
		b.Fatal(err)
	}
	berth := sock2.restartLatencies(b, samples)
	if _, err := s.Stop(context.Background(), "crasher"); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(ms(pct(berth, 50)), "p50-ms")
	b.ReportMetric(ms(pct(berth, 99)), "p99-ms")
	b.ReportMetric(ms(pct(floor, 50)), "floor-p50-ms")
	b.ReportMetric(ms(pct(floor, 99)), "floor-p99-ms")
	summary("crash-to-restart (settled, exit -> next exec, %d samples): berth p50 %.2f ms p99 %.2f ms; bash loop floor p50 %.2f ms p99 %.2f ms; p50 over floor %+.2f ms",
		samples, ms(pct(berth, 50)), ms(pct(berth, 99)), ms(pct(floor, 50)), ms(pct(floor, 99)), ms(pct(berth, 50)-pct(floor, 50)))
}

// BenchmarkCrashLoopCPU runs /bin/true, which exits at once, under the
// default Backoff for BERTH_BENCH_CRASHLOOP (default 10s) and reports
// this process's CPU time per second of the loop (getrusage: the
// supervisor's forks, reaps, timers and events, not the children's own
// time) and the number of restarts. A crash loop must cost the host
// almost nothing: the backoff caps it at one restart per Backoff.Max.
func BenchmarkCrashLoopCPU(b *testing.B) {
	loop := 10 * time.Second
	if v := os.Getenv("BERTH_BENCH_CRASHLOOP"); v != "" {
		var err error
		if loop, err = time.ParseDuration(v); err != nil {
			b.Fatal(err)
		}
	}
	quiesce()
	s, stop := runSup(b)
	defer stop()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("crashloop-%d", i)
		cpu0, t0 := selfCPU(), time.Now()
		if err := s.Start(Spec{Name: name, Command: "/bin/true"}); err != nil {
			b.Fatal(err)
		}
		time.Sleep(loop)
		st, err := s.Status(name)
		if err != nil {
			b.Fatal(err)
		}
		cpu, took := selfCPU()-cpu0, time.Since(t0)
		if _, err := s.Stop(context.Background(), name); err != nil {
			b.Fatal(err)
		}
		perSec := ms(cpu) / took.Seconds()
		b.ReportMetric(perSec, "cpu-ms/s")
		b.ReportMetric(float64(st.Restarts), "restarts")
		summary("crash loop of /bin/true for %v (default backoff): %d restarts, state %v; supervisor CPU %.2f ms in all, %.3f ms per second",
			took.Round(time.Millisecond), st.Restarts, st.State, ms(cpu), perSec)
	}
}

// BenchmarkStartStop100 measures starting 100 instances concurrently
// (until each has exec'd) and stopping them with StopMany (they exit
// promptly on SIGTERM), beside bash starting 100 in the background and
// kill + wait. The instances are started and stopped twice: without
// Markers, and with them as the agent sets them, so that each stop's
// search for escaped processes walks from the supervisor's process (its
// other instances' processes included) instead of from the instance's
// own process.
func BenchmarkStartStop100(b *testing.B) {
	const n = 100
	quiesce()
	env := []string{"PATH=/usr/bin:/bin"}
	fl := exec.Command("/bin/bash", "-c", `s=$(date +%s%N); for i in $(seq 100); do sleep 1000 & done; m=$(date +%s%N); kill $(jobs -p); wait; e=$(date +%s%N); echo $((m-s)) $((e-m))`)
	fl.Env = env
	res, err := fl.Output()
	if err != nil {
		b.Fatal(err)
	}
	var floorStart, floorStop int64
	fmt.Sscan(string(res), &floorStart, &floorStop)

	s, stop := runSup(b)
	defer stop()
	startStop := func(markers bool) (started, stopped time.Duration) {
		names := make([]string, n)
		t0 := time.Now()
		var wg sync.WaitGroup
		for i := range names {
			names[i] = fmt.Sprintf("app/web.%d", i)
			spec := Spec{Name: names[i], Command: "sleep 1000", Env: env}
			if markers {
				spec.Env = append(slices.Clone(env), "BENCH_INSTANCE="+names[i])
				spec.Markers = []string{"BENCH_INSTANCE"}
			}
			wg.Go(func() {
				if err := s.Start(spec); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		started = time.Since(t0)
		quiesce()
		t1 := time.Now()
		if err := s.StopMany(context.Background(), names); err != nil {
			b.Fatal(err)
		}
		return started, time.Since(t1)
	}
	started, stopped := startStop(false)
	_, stoppedMarked := startStop(true)
	b.ReportMetric(ms(started), "start100-ms")
	b.ReportMetric(ms(stopped), "stop100-ms")
	b.ReportMetric(ms(stoppedMarked), "stop100-markers-ms")
	b.ReportMetric(float64(floorStart)/1e6, "floor-start100-ms")
	b.ReportMetric(float64(floorStop)/1e6, "floor-stop100-ms")
	summary("start 100 instances: berth %.1f ms (each exec'd, with pipes) vs bash `sleep &` x100 %.1f ms; stop 100 (SIGTERM, group gone): berth %.1f ms, %.1f ms with markers (as the agent) vs bash kill+wait %.1f ms",
		ms(started), float64(floorStart)/1e6, ms(stopped), ms(stoppedMarked), float64(floorStop)/1e6)
}

// restartProg is the program BenchmarkRestartAll20 restarts: a settled
// bash service with real start-up and shutdown work. Its start-up (about
// 8 ms of CPU on the benchmark machine) runs three commands in command
// substitutions (uname, hostname, id) and fills an associative array of
// 1,500 settings, the way service scripts read their configuration;
// then it writes a pid file, reports itself ready on the FIFO $STAMP and
// idles in `sleep 1 & wait`. On TERM it shuts down gracefully: it stops
// its sleep, gives in-flight work 10 ms to finish (sleep 0.01), removes
// its pid file and exits 0, about 12 ms in all.
const restartProg = `pidfile=$(mktemp)
trap 'kill $s 2>/dev/null; sleep 0.01; rm -f "$pidfile"; exit 0' TERM
kernel=$(uname -r); host=$(hostname); uid=$(id -u)
declare -A conf
for ((i = 0; i < 1500; i++)); do conf[key$i]=$((i * 7 % 13)); done
echo $$ >"$pidfile"
printf 'start %d %s\n' $$ "$EPOCHREALTIME" >"$STAMP"
while :; do sleep 1 & s=$!; wait $s; done
`

// readyFifo receives the "start PID SECONDS.MICROS" lines of restartProg.
type readyFifo struct {
	f *os.File
	r *bufio.Reader
}

func newReadyFifo(b *testing.B, path string) *readyFifo {
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		b.Fatal(err)
	}
	// Read-write, so opening never blocks and there is no EOF between writers.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return &readyFifo{f: f, r: bufio.NewReader(f)}
}

// wait reads n ready lines and returns the time of the latest.
func (rf *readyFifo) wait(b *testing.B, n int) time.Time {
	var last time.Time
	for i := 0; i < n; i++ {
		rf.f.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := rf.r.ReadString('\n')
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

// restartAll runs n instances of spec under a new Supervisor and, once
// ready reports them all started, restarts them all concurrently (one
// Restart call each); it returns the time until ready reports the n new
// processes (the time of the latest).
func restartAll(b *testing.B, n int, spec Spec, ready func() time.Time) time.Duration {
	s, stop := runSup(b)
	defer stop()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("app/worker.%d", i)
		spec.Name = names[i]
		if err := s.Start(spec); err != nil {
			b.Fatal(err)
		}
	}
	ready()
	quiesce()
	t0 := time.Now()
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Go(func() {
			if err := s.Restart(name); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
	took := ready().Sub(t0)
	if err := s.StopMany(context.Background(), names); err != nil {
		b.Fatal(err)
	}
	return took
}

// BenchmarkRestartAll20 measures restarting all 20 instances of a
// settled bash program (restartProg: TERM, wait for exit, start, until
// all 20 new processes report ready), as the table does, beside
// the floor: a bare bash loop doing TERM, wait and start one instance
// after the other for the same program. Berth restarts the 20
// concurrently (one Restart call each). The two alternate for 7 rounds
// and the medians are compared.
func BenchmarkRestartAll20(b *testing.B) {
	const n, rounds = 20, 7
	dir := b.TempDir()
	script := filepath.Join(dir, "prog.sh")
	if err := os.WriteFile(script, []byte(restartProg), 0o644); err != nil {
		b.Fatal(err)
	}
	fifo := filepath.Join(dir, "ready")
	ready := newReadyFifo(b, fifo)
	env := []string{"PATH=/usr/bin:/bin", "STAMP=" + fifo, "TMPDIR=" + dir}
	prog := "/bin/bash " + script
	var floors, berths []time.Duration
	for r := 0; r < rounds; r++ {
		// The floor runs while no Supervisor reaps (its bash is our child).
		_, stdin, kill := runBash(b, `pids=(); for i in $(seq 20); do `+prog+` & pids+=($!); done; read x; `+
			`for i in ${!pids[@]}; do kill -TERM ${pids[$i]}; wait ${pids[$i]}; `+prog+` & done; wait`, env)
		ready.wait(b, n)
		quiesce()
		t0 := time.Now()
		io.WriteString(stdin, "go\n")
		floors = append(floors, ready.wait(b, n).Sub(t0))
		kill()

		berths = append(berths, restartAll(b, n, Spec{Command: prog, Env: env}, func() time.Time { return ready.wait(b, n) }))
	}
	slices.Sort(floors)
	slices.Sort(berths)
	berth, floor := berths[rounds/2], floors[rounds/2]
	b.ReportMetric(ms(berth), "restart20-ms")
	b.ReportMetric(ms(floor), "floor-restart20-ms")
	b.ReportMetric(ms(berth)/ms(floor), "ratio")
	summary("restart all 20 instances of a settled bash program (~8 ms start-up, ~12 ms graceful exit on TERM; TERM, wait, start, until all 20 report ready; median of %d alternating rounds): berth %.1f ms vs bare bash loop one by one %.1f ms: ratio %.2f (goal < 0.5)",
		rounds, ms(berth), ms(floor), ms(berth)/ms(floor))
}

// BenchmarkRestartAll20Quick is BenchmarkRestartAll20 with a program
// that starts and stops in about 2 ms (the Go test binary waiting for
// SIGTERM): it shows the supervisor's own overhead per restart, where
// concurrency has little start-up or shutdown time to overlap. Besides
// the one-by-one floor it runs bash doing each step to all 20 at once
// (the best a script can do). The three alternate for 5 rounds and the
// medians are compared.
func BenchmarkRestartAll20Quick(b *testing.B) {
	const n, rounds = 20, 5
	env := helperEnv()
	sock := newStampSock(b)
	prog := helperCmd("stamp", sock.path, "0")
	waitStarts := func() time.Time {
		var last time.Time
		for i := 0; i < n; i++ {
			if st := sock.next(b); st.kind == "start" && st.at.After(last) {
				last = st.at
			} else if st.kind != "start" {
				i--
			}
		}
		return last
	}
	// The floors run while no Supervisor reaps (their bash is our child).
	floor := func(restart string) time.Duration {
		_, stdin, kill := runBash(b, `pids=(); for i in $(seq 20); do `+prog+` & pids+=($!); done; read x; `+restart+`; wait`, env)
		defer kill()
		waitStarts()
		quiesce()
		t0 := time.Now()
		io.WriteString(stdin, "go\n")
		return waitStarts().Sub(t0)
	}
	var seqs, pars, berths []time.Duration
	for r := 0; r < rounds; r++ {
		seqs = append(seqs, floor(`for i in ${!pids[@]}; do kill -TERM ${pids[$i]}; wait ${pids[$i]}; `+prog+` & done`))
		pars = append(pars, floor(`kill -TERM ${pids[@]}; wait; for i in $(seq 20); do `+prog+` & done`))

		berths = append(berths, restartAll(b, n, Spec{Command: prog, Env: env}, waitStarts))
	}
	for _, d := range [][]time.Duration{seqs, pars, berths} {
		slices.Sort(d)
	}
	berth, floorSeq, floorPar := berths[rounds/2], seqs[rounds/2], pars[rounds/2]
	b.ReportMetric(ms(berth), "restart20-ms")
	b.ReportMetric(ms(floorSeq), "floor-restart20-ms")
	b.ReportMetric(ms(floorPar), "floor-parallel-restart20-ms")
	summary("restart all 20 quick programs (TERM, wait, start, until all 20 new processes run; median of %d alternating rounds): berth %.1f ms vs bash floor one by one %.1f ms (ratio %.2f), bash all at once %.1f ms (ratio %.2f)",
		rounds, ms(berth), ms(floorSeq), ms(berth)/ms(floorSeq), ms(floorPar), ms(berth)/ms(floorPar))
}

// BenchmarkLogCapture measures an instance writing 200 MB of 100-byte
// lines through the supervisor into rotated log files, beside the same
// program writing straight to a file. The two alternate for 7 rounds
// and the medians are compared, so a burst of load on the shared machine
// does not decide the ratio.
func BenchmarkLogCapture(b *testing.B) {
	const lines, size, rounds = 2_000_000, 100, 7
	const mb = float64(lines*size) / 1e6
	dir := b.TempDir()
	spew := []string{"spew", strconv.Itoa(lines), strconv.Itoa(size)}
	var floors, berths, cpus, floorCPUs, copies, prefixCopies []time.Duration
	for r := 0; r < rounds; r++ {
		f, err := os.Create(filepath.Join(dir, "floor.out"))
		if err != nil {
			b.Fatal(err)
		}
		floorCmd := exec.Command(os.Args[0], spew...)
		floorCmd.Env = helperEnv()
		floorCmd.Stdout = f
		quiesce() // each side starts with no dirty pages of the other to write back
		t0 := time.Now()
		if err := floorCmd.Run(); err != nil {
			b.Fatal(err)
		}
		floors = append(floors, time.Since(t0))
		floorCPUs = append(floorCPUs, floorCmd.ProcessState.UserTime()+floorCmd.ProcessState.SystemTime())
		f.Close()
		os.Remove(f.Name())

		s, stop := runSup(b)
		events, cancel := s.Subscribe(16)
		path := filepath.Join(dir, fmt.Sprintf("spew%d.log", r))
		quiesce()
		cpu0 := selfCPU()
		t1 := time.Now()
		err = s.Start(Spec{Name: "spew", Command: helperCmd(spew[0], spew[1:]...), Env: helperEnv(),
			Backoff: noRestart, Log: LogConfig{Path: path}})
		if err != nil {
			b.Fatal(err)
		}
		for ev := range events {
			if ev.State == StateBackoff {
				break
			}
		}
		if _, err := s.Stop(context.Background(), "spew"); err != nil { // returns once the output is stored
			b.Fatal(err)
		}
		berths = append(berths, time.Since(t1))
		cpus = append(cpus, selfCPU()-cpu0)
		cancel()
		stop()
		got, err := ReadLogFile(path, 1)
		if err != nil || len(got) != 1 || !strings.HasPrefix(got[0].Text, strconv.Itoa(lines-1)+" ") {
			b.Fatalf("last stored line %v, %v", got, err)
		}
		// What the file holds per line beyond the line itself: the
		// record's prefix (time, release, stream).
		first, err := os.ReadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		prefix := bytes.IndexByte(first, '\n') + 1 - size
		// Remove the round's files, so later rounds do not write them back.
		files, _ := filepath.Glob(path + "*")
		for _, f := range files {
			os.Remove(f)
		}

		copies = append(copies, copyFloor(b, spew, filepath.Join(dir, "copy.out"), size, 0))
		prefixCopies = append(prefixCopies, copyFloor(b, spew, filepath.Join(dir, "copy.out"), size, prefix))
	}
	for _, d := range [][]time.Duration{floors, berths, cpus, floorCPUs, copies, prefixCopies} {
		slices.Sort(d)
	}
	berth, floor, cpu, floorCPU := berths[rounds/2], floors[rounds/2], cpus[rounds/2], floorCPUs[rounds/2]
	rate, floorRate := mb/berth.Seconds(), mb/floor.Seconds()
	copyRate, prefixCopyRate := mb/copies[rounds/2].Seconds(), mb/prefixCopies[rounds/2].Seconds()
	b.ReportMetric(rate, "MB/s")
	b.ReportMetric(floorRate, "floor-MB/s")
	b.ReportMetric(rate/floorRate, "ratio")
	b.ReportMetric(ms(cpu), "supervisor-cpu-ms")
	b.ReportMetric(copyRate/floorRate, "bare-copy-ratio")
	b.ReportMetric(prefixCopyRate/floorRate, "prefixed-copy-ratio")
	summary("log capture of 200 MB in 100-byte lines (median of %d alternating rounds): berth %.0f MB/s (files rotated 10 MiB x 5) vs straight to a file %.0f MB/s: ratio %.2f; supervisor CPU %.0f ms (the floor program's own CPU: %.0f ms)",
		rounds, rate, floorRate, rate/floorRate, ms(cpu), ms(floorCPU))
	summary("the least a capture in another process can do here (copyFloor: read the pipe in 1 MiB chunks, write them to one file): %.0f MB/s, ratio %.2f to the floor; writing as many bytes as berth's records (each line's prefix too): %.0f MB/s, ratio %.2f; berth reaches %.2f of that",
		copyRate, copyRate/floorRate, prefixCopyRate, prefixCopyRate/floorRate, rate/prefixCopyRate)
}

// copyFloor runs the spew helper with its output on a pipe as large as
// the supervisor's, which this process copies to a fresh file at path
// in 1 MiB reads, with pad bytes more per line of size bytes, and
// returns the time from the start until the last byte is written. It is
// the least any capture in a process other than the writer does (one
// copy out of the pipe, one into the file, nothing parsed or
// formatted): pad 0 is a bare copy, pad the length of a stored record's
// prefix writes as many bytes as the supervisor's format.
func copyFloor(b *testing.B, spew []string, path string, size, pad int) time.Duration {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(path)
	defer f.Close()
	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	if _, err := unix.FcntlInt(r.Fd(), unix.F_SETPIPE_SZ, pipeSize); err != nil {
		unix.FcntlInt(r.Fd(), unix.F_SETPIPE_SZ, pipeSizeUser)
	}
	cmd := exec.Command(os.Args[0], spew...)
	cmd.Env = helperEnv()
	cmd.Stdout = w
	buf := make([]byte, 1<<20)
	out := make([]byte, 0, len(buf)+len(buf)/size*pad)
	padding := bytes.Repeat([]byte{'p'}, len(buf)/size*pad)
	quiesce()
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	w.Close()
	for {
		n, err := r.Read(buf)
		if n > 0 {
			out = append(append(out[:0], buf[:n]...), padding[:n/size*pad]...)
			if _, werr := f.Write(out); werr != nil {
				b.Fatal(werr)
			}
		}
		if err != nil {
			break
		}
	}
	took := time.Since(t0)
	if err := cmd.Wait(); err != nil {
		b.Fatal(err)
	}
	return took
}

// BenchmarkIdle measures a separate supervising process (internal/benchsup):
// its PSS with 100 and 1,000 idle instances and its CPU time over 30 s
// idle with 100.
func BenchmarkIdle(b *testing.B) {
	dir := b.TempDir()
	bin := filepath.Join(dir, "benchsup")
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	build := exec.Command(goBin, "build", "-o", bin, "./internal/benchsup")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		b.Fatal(err)
	}
	idle := 30 * time.Second
	if v := os.Getenv("BERTH_BENCH_IDLE"); v != "" {
		idle, _ = time.ParseDuration(v)
	}
	logs := filepath.Join(dir, "logs")
	os.Mkdir(logs, 0o755)
	cmd := exec.Command(bin, "-n", "100", "-logdir", logs)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	r := bufio.NewScanner(stdout)
	ready := func() {
		if !r.Scan() || r.Text() != "ready" {
			b.Fatalf("benchsup: %q", r.Text())
		}
	}
	pid := cmd.Process.Pid
	ready()
	time.Sleep(2 * time.Second) // let start-up settle before measuring idle figures
	pss100 := pss(b, pid)
	cpu0 := cpuTime(b, pid)
	time.Sleep(idle)
	cpu := cpuTime(b, pid) - cpu0
	pss100idle := pss(b, pid)
	io.WriteString(stdin, "grow 1000\n")
	ready()
	time.Sleep(2 * time.Second)
	pss1000 := pss(b, pid)
	per := (pss1000 - pss100) / 900
	b.ReportMetric(float64(pss100)/1024, "pss100-MB")
	b.ReportMetric(float64(pss1000)/1024, "pss1000-MB")
	b.ReportMetric(float64(per), "KB/instance")
	b.ReportMetric(ms(cpu), "idle-cpu-ms")
	summary("supervising process (internal/benchsup) PSS: 100 idle instances %.1f MB (%.1f MB after %v idle), 1000 %.1f MB: %d KB per extra instance; CPU over %v idle with 100: %.2f ms",
		float64(pss100)/1024, float64(pss100idle)/1024, idle, float64(pss1000)/1024, per, idle, ms(cpu))
}

// selfCPU returns the CPU time of this process so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pss returns the proportional set size of pid in KB.
func pss(b *testing.B, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Pss:" {
			kb, _ := strconv.Atoi(f[1])
			return kb
		}
	}
	b.Fatal("no Pss in smaps_rollup")
	return 0
}

// cpuTime sums the CPU time of every thread of pid (schedstat, in ns).
func cpuTime(b *testing.B, pid int) time.Duration {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for _, t := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			continue
		}
		ns, _ := strconv.ParseInt(strings.Fields(string(data))[0], 10, 64)
		total += time.Duration(ns)
	}
	return total
}

// BenchmarkFormatLines measures the supervisor's own per-line work on
// captured output, without pipes or files: 1 MiB reads of 100-byte
// lines split into records (each with its time, tag and stream) and
// kept in the in-memory tail (1,000 lines). "read" is the path of a pipe
// reader.
func BenchmarkFormatLines(b *testing.B) {
	const size = 100
	chunk := make([]byte, 0, readBufSize)
	line := []byte(strings.Repeat("x", size-1) + "\n")
	for len(chunk)+size <= readBufSize {
		chunk = append(chunk, line...)
	}
	chunk = append(chunk, line[:readBufSize-len(chunk)]...) // a partial line carried over
	b.Run("read", func(b *testing.B) {
		s := New(Config{}, nil)
		ls := newLogSink(s, "app/web.1", LogConfig{Memory: 1000, Tag: "v3"})
		p := &pipeReader{stream: "stdout", ls: ls, maxLine: 16 << 10}
		b.SetBytes(int64(len(chunk)))
		for b.Loop() {
			p.consume(chunk, time.Now())
		}
	})
}
