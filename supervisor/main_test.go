package supervisor

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"
)

// TestMain runs the test binary as a helper app when BERTH_HELPER is set
// (as Go's own os/exec tests do), and checks for leaked goroutines.
func TestMain(m *testing.M) {
	if os.Getenv("BERTH_HELPER") != "" && len(os.Args) > 1 {
		helper(os.Args[1], os.Args[2:])
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// helper is the app under test. Modes:
//
//	exit CODE DELAY     sleep DELAY, exit CODE
//	env                 print the environment, block
//	ignoreterm          ignore SIGTERM, print ready, block
//	spew N SIZE         print N lines of SIZE bytes (newline included), exit 0
//	spewwait N          print N short lines, wait for SIGUSR1, print "after", block
//	long MAXLINE        print "short", a line of 2.5*MAXLINE x, then "tail" without newline, exit
//	spew2 N             print "stdout I" and "stderr I" for I in 0..N-1 to each stream at once, exit
//	listen              check socket activation, print the verdict, block
//	tick                print "tick N" every 2ms, N from 0, forever
//	spawn FILE MODE...  start the helper MODE in a process group of its own, with
//	                    this environment and output, write its pid to FILE, exit
//	stamp SOCK DELAY    send "start <ns>" to the unix datagram socket SOCK, stay DELAY,
//	                    send "exit <ns>", exit 1 (DELAY 0: wait for SIGTERM, exit 0)
func helper(mode string, args []string) {
	switch mode {
	case "exit":
		code, _ := strconv.Atoi(args[0])
		d, _ := time.ParseDuration(args[1])
		time.Sleep(d)
		os.Exit(code)
	case "env":
		for _, kv := range os.Environ() {
			fmt.Println(kv)
		}
		block()
	case "spew2":
		n, _ := strconv.Atoi(args[0])
		var wg sync.WaitGroup
		for _, f := range []*os.File{os.Stdout, os.Stderr} {
			wg.Go(func() {
				w := bufio.NewWriterSize(f, 64<<10)
				name := map[*os.File]string{os.Stdout: "stdout", os.Stderr: "stderr"}[f]
				for i := 0; i < n; i++ {
					fmt.Fprintf(w, "%s %d %s\n", name, i, strings.Repeat("z", i%150))
				}
				w.Flush()
			})
		}
		wg.Wait()
		os.Exit(0)
	case "ignoreterm":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		block()
	case "spew":
		n, _ := strconv.Atoi(args[0])
		size, _ := strconv.Atoi(args[1])
		w := bufio.NewWriterSize(os.Stdout, 64<<10)
		line := []byte(strings.Repeat("x", size-1) + "\n")
		for i := 0; i < n; i++ {
			s := strconv.Itoa(i)
			copy(line, s)
			line[len(s)] = ' '
			w.Write(line)
		}
		w.Flush()
		os.Exit(0)
	case "spewwait":
		n, _ := strconv.Atoi(args[0])
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		w := bufio.NewWriter(os.Stdout)
		for i := 0; i < n; i++ {
			fmt.Fprintf(w, "line %d\n", i)
		}
		w.Flush()
		<-usr1
		fmt.Println("after")
		block()
	case "tick":
		for i := 0; ; i++ {
			if _, err := fmt.Printf("tick %d\n", i); err != nil {
				os.Exit(1)
			}
			time.Sleep(2 * time.Millisecond)
		}
	case "spawn":
		pid, err := syscall.ForkExec(os.Args[0], append([]string{os.Args[0]}, args[1:]...), &syscall.ProcAttr{
			Env: os.Environ(), Files: []uintptr{0, 1, 2}, Sys: &syscall.SysProcAttr{Setpgid: true}})
		if err != nil {
			os.Exit(3)
		}
		if err := os.WriteFile(args[0]+".tmp", []byte(strconv.Itoa(pid)), 0o644); err != nil {
			os.Exit(3)
		}
		if err := os.Rename(args[0]+".tmp", args[0]); err != nil {
			os.Exit(3)
		}
		os.Exit(0)
	case "long":
		n, _ := strconv.Atoi(args[0])
		fmt.Print("short\n" + strings.Repeat("x", n*5/2) + "\ntail")
		os.Exit(0)
	case "listen":
		ok := os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) && os.Getenv("LISTEN_FDS") == "1"
		l, err := net.FileListener(os.NewFile(3, "listener"))
		if err == nil {
			l.Close()
		}
		fmt.Printf("listen pid-ok=%v fd-ok=%v\n", ok, err == nil)
		block()
	case "stamp":
		c, err := net.Dial("unixgram", args[0])
		if err != nil {
			os.Exit(3)
		}
		fmt.Fprintf(c, "start %d %d", os.Getpid(), time.Now().UnixNano())
		d, _ := time.ParseDuration(args[1])
		if d == 0 {
			term := make(chan os.Signal, 1)
			signal.Notify(term, syscall.SIGTERM)
			<-term
			os.Exit(0)
		}
		time.Sleep(d)
		fmt.Fprintf(c, "exit %d %d", os.Getpid(), time.Now().UnixNano())
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
		os.Exit(2)
	}
}

func block() {
	select {}
}

// helperCmd returns a command that runs the test binary in a helper mode.
func helperCmd(mode string, args ...string) string {
	return strings.Join(append([]string{os.Args[0], mode}, args...), " ")
}

// helperEnv is the environment helpers need: the mode goes in argv.
func helperEnv(extra ...string) []string {
	return append([]string{"BERTH_HELPER=1", "GORACE=atexit_sleep_ms=0"}, extra...)
}

// startSup runs a Supervisor until the test ends.
func startSup(t *testing.T, cfg Config) *Supervisor {
	t.Helper()
	s, _ := startSupStop(t, cfg)
	return s
}

// startSupStop runs a Supervisor until stop is called or the test ends.
func startSupStop(t *testing.T, cfg Config) (*Supervisor, func()) {
	t.Helper()
	log := hclog.New(&hclog.LoggerOptions{Name: "supervisor", Level: hclog.Debug, Output: io.Discard})
	if testing.Verbose() {
		log = hclog.New(&hclog.LoggerOptions{Name: "supervisor", Level: hclog.Debug, Output: testWriter{t}})
	}
	s := New(cfg, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	<-s.reaping
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
			if l := s.List(); len(l) != 0 {
				t.Errorf("instances left after Run: %v", l)
			}
		})
	}
	t.Cleanup(stop)
	return s, stop
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// nextEvent returns the next event of name that satisfies ok.
func nextEvent(t *testing.T, ch <-chan Event, name string, ok func(Event) bool) Event {
	t.Helper()
	timeout := time.NewTimer(15 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case ev := <-ch:
			if ev.Name == name && ok(ev) {
				return ev
			}
		case <-timeout.C:
			t.Fatalf("%s: no matching event within 15s", name)
		}
	}
}

func inState(st State) func(Event) bool { return func(ev Event) bool { return ev.State == st } }

// eventually polls cond every few milliseconds for up to 15 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tailTexts returns the texts of the instance's lines in memory.
func tailTexts(s *Supervisor, name string) []string {
	lines, _ := s.Tail(name, 0)
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.Text
	}
	return out
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// zombieChildren lists our children that are zombies.
func zombieChildren() []int {
	me := os.Getpid()
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(me) {
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out
}
