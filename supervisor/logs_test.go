package supervisor

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// noRestart keeps an exited process down, so its output can be checked.
var noRestart = Backoff{Initial: time.Hour, Max: time.Hour, Settle: time.Hour}

// Ensures log files rotate by size at line boundaries, keep MaxFiles
// files, and ReadLogFile reads the lines back in order across them.
func TestLogs_Rotation(t *testing.T) {
	s := startSup(t, Config{})
	path := filepath.Join(t.TempDir(), "logs", "web.1.log")
	const n, size = 500, 50
	spec := Spec{Name: "spew", Command: helperCmd("spew", fmt.Sprint(n), fmt.Sprint(size)), Env: helperEnv(),
		Backoff: noRestart, Log: LogConfig{Path: path, MaxSize: 4096, MaxFiles: 3, MaxLine: 1000}}
	events, cancel := s.Subscribe(100)
	defer cancel()
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	nextEvent(t, events, spec.Name, inState(StateBackoff))
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + ".1", path + ".2"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 4096 || fi.Size() == 0 || (p != path && fi.Size() < 4096-int64(size)-lineOverhead) {
			t.Errorf("%s: size %d, want in (0, 4096] and rotated files full", p, fi.Size())
		}
	}
	if _, err := os.Stat(path + ".3"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.3 exists: only 3 files may be kept", path)
	}
	lines, err := ReadLogFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	// 2 full files of whole lines and the live one; the newest lines
	// are all there, in order.
	perFile := 4096 / (size + int(lineOverhead) - 1)
	if len(lines) < 2*perFile+1 || len(lines) > 3*perFile {
		t.Fatalf("read %d lines", len(lines))
	}
	first := n - len(lines)
	for i, l := range lines {
		want := fmt.Sprint(first+i) + " "
		if !strings.HasPrefix(l.Text, want) || len(l.Text) != size-1 || l.Stream != "stdout" || l.Time.IsZero() {
			t.Fatalf("line %d = %+v, want text starting %q of %d bytes", i, l, want, size-1)
		}
	}
	last, err := ReadLogFile(path, 7)
	if err != nil || len(last) != 7 || last[6].Text != lines[len(lines)-1].Text {
		t.Fatalf("last 7: %d lines, %v", len(last), err)
	}
	// A tail spanning files reads backwards across them.
	span, err := ReadLogFile(path, perFile+5)
	if err != nil || len(span) != perFile+5 {
		t.Fatalf("tail across files: %d lines, %v", len(span), err)
	}
	for i, l := range span {
		if want := lines[len(lines)-len(span)+i]; l != want {
			t.Fatalf("tail across files, line %d = %+v, want %+v", i, l, want)
		}
	}
	if _, err := ReadLogFile(filepath.Join(t.TempDir(), "none.log"), 1); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ReadLogFile of a missing file = %v, want ErrNotExist", err)
	}
}

// Ensures a line longer than MaxLine is split into marked pieces that
// join back to the whole line, and a trailing partial line is stored at
// exit, in memory and in the file.
func TestLogs_PartialAndLongLines(t *testing.T) {
	s := startSup(t, Config{})
	path := filepath.Join(t.TempDir(), "long.log")
	spec := Spec{Name: "long", Command: helperCmd("long", "1000"), Env: helperEnv(),
		Backoff: noRestart, Log: LogConfig{Path: path, MaxLine: 1000}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "all lines", func() bool { l, _ := s.Tail("long", 0); return len(l) == 5 })
	mem, _ := s.Tail("long", 0)
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	file, err := ReadLogFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	for what, lines := range map[string][]LogLine{"memory": mem, "file": file} {
		if len(lines) != 5 {
			t.Fatalf("%s: %d lines, want 5", what, len(lines))
		}
		want := []struct {
			text  string
			split bool
		}{{"short", false}, {strings.Repeat("x", 1000), true}, {strings.Repeat("x", 1000), true}, {strings.Repeat("x", 500), false}, {"tail", false}}
		for i, w := range want {
			if lines[i].Text != w.text || lines[i].Split != w.split {
				t.Errorf("%s line %d: %d bytes split=%v, want %d bytes split=%v", what, i, len(lines[i].Text), lines[i].Split, len(w.text), w.split)
			}
		}
	}
}

// Ensures a follower that never reads does not slow the app or the file:
// every line is stored, and the follower is told how many it missed.
func TestLogs_SlowFollowerDoesNotBlock(t *testing.T) {
	s := startSup(t, Config{})
	path := filepath.Join(t.TempDir(), "f.log")
	lines, cancel := s.FollowLogs(func(name string) bool { return name == "chatty" }, 1)
	defer cancel()
	other, cancelOther := s.FollowLogs(func(name string) bool { return name == "someone else" }, 1)
	defer cancelOther()
	const n = 20000
	spec := Spec{Name: "chatty", Command: helperCmd("spewwait", fmt.Sprint(n)), Env: helperEnv(), Log: LogConfig{Path: path}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	// The app writes all its lines and the file gets them while nobody reads.
	eventually(t, "all lines in the file", func() bool {
		b, _ := os.ReadFile(path)
		return strings.Count(string(b), "\n") == n
	})
	eventually(t, "all lines offered to the follower", func() bool { return s.DroppedLines() == n-1 })
	first := <-lines
	if first.Text != "line 0" || first.Missed != 0 {
		t.Fatalf("first followed line %+v", first)
	}
	st, _ := s.Status("chatty")
	syscall.Kill(st.PID, syscall.SIGUSR1)
	next := <-lines
	if next.Text != "after" || next.Missed != n-1 || s.DroppedLines() != n-1 {
		t.Fatalf("next followed line %+v (dropped %d), want \"after\" with Missed %d", next, s.DroppedLines(), n-1)
	}
	select {
	case l := <-other:
		t.Fatalf("a follower of another instance got %+v", l)
	default:
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures Config.Sink sees every line with the instance's fields.
func TestLogs_Sink(t *testing.T) {
	got := make(chan string, 10)
	s := startSup(t, Config{Sink: func(l LogLine, f map[string]string) { got <- f["app"] + " " + l.Stream + " " + l.Text }})
	spec := Spec{Name: "sink", Command: "echo out; echo err >&2; exec sleep 1000", Env: []string{"PATH=/usr/bin:/bin"},
		Log: LogConfig{Fields: map[string]string{"app": "hello"}}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{<-got: true, <-got: true}
	if !seen["hello stdout out"] || !seen["hello stderr err"] {
		t.Fatalf("sink got %v", seen)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures stored lines parse back, and foreign lines are kept whole.
func TestLogs_ParseStored(t *testing.T) {
	cases := []struct {
		in     string
		ok     bool
		stream string
		split  bool
		text   string
	}{
		{"2026-11-26T13:43:46.123456Z stdout hello world", true, "stdout", false, "hello world"},
		{"2026-11-26T13:43:46.123456Z stderr+ piece", true, "stderr", true, "piece"},
		{"2026-11-26T13:43:46.123456Z stdout ", true, "stdout", false, ""},
		{"2026-11-26T13:43:46.123456Z other text", false, "", false, "2026-11-26T13:43:46.123456Z other text"},
		{"not a stored line", false, "", false, "not a stored line"},
		{"2026-13-26T13:43:46.123456Z stdout bad month", false, "", false, "2026-13-26T13:43:46.123456Z stdout bad month"},
	}
	for _, c := range cases {
		l, ok := parseStored([]byte(c.in))
		if ok != c.ok || l.Stream != c.stream || l.Split != c.split || l.Text != c.text {
			t.Errorf("parseStored(%q) = %+v, %v", c.in, l, ok)
		}
	}
}

// Ensures Tail keeps exactly the last Memory lines across many reads
// (chunks) and returns the last n of them, oldest first.
func TestLogs_TailKeepsLastLines(t *testing.T) {
	s := startSup(t, Config{})
	spec := Spec{Name: "tail", Env: []string{"PATH=/usr/bin:/bin"}, Log: LogConfig{Memory: 50},
		Command: `i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); done; exec sleep 1000`}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "line 299", func() bool {
		l := tailTexts(s, "tail")
		return len(l) > 0 && l[len(l)-1] == "line 299"
	})
	all, _ := s.Tail("tail", 0)
	if len(all) != 50 || all[0].Text != "line 250" {
		t.Fatalf("Tail(0): %d lines, first %+v; want the last 50", len(all), all[0])
	}
	three, _ := s.Tail("tail", 3)
	if len(three) != 3 || three[0].Text != "line 297" || three[2].Text != "line 299" || three[0].Name != "tail" || three[0].Stream != "stdout" {
		t.Fatalf("Tail(3) = %+v", three)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures a log file that cannot be opened loses the file output only:
// the app runs and its lines stay in memory.
func TestLogs_UnwritablePath(t *testing.T) {
	s := startSup(t, Config{})
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	spec := Spec{Name: "nolog", Env: []string{"PATH=/usr/bin:/bin"}, Log: LogConfig{Path: filepath.Join(notDir, "x.log")},
		Command: `echo one; echo two; exec sleep 1000`}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "lines in memory", func() bool { return len(tailTexts(s, "nolog")) == 2 })
	if st, _ := s.Status("nolog"); st.State != StateRunning {
		t.Fatalf("state %v, want running", st.State)
	}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
}

// Ensures reading the tail of a big file backwards in blocks cuts at line
// boundaries: the lines returned are exactly the last ones.
func TestLogs_ReadLogFileTailOfBigFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.log")
	var sb strings.Builder
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&sb, "2026-11-26T13:43:46.123456Z stderr line %d %s\n", i, strings.Repeat("y", i%97))
	}
	if err := os.WriteFile(path, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, 3, 700, 2000, 10000, 20000} {
		lines, err := ReadLogFile(path, n)
		if err != nil {
			t.Fatal(err)
		}
		want := min(n, 10000)
		if len(lines) != want {
			t.Fatalf("n=%d: %d lines", n, len(lines))
		}
		for i, l := range lines {
			k := 10000 - want + i
			if l.Text != fmt.Sprintf("line %d %s", k, strings.Repeat("y", k%97)) || l.Stream != "stderr" {
				t.Fatalf("n=%d: line %d = %q", n, i, l.Text)
			}
		}
	}
}

// Ensures output cut into reads at arbitrary places is stored line by
// line exactly: empty lines kept, lines of up to MaxLine whole, longer
// ones in MaxLine pieces marked Split but the last, the unfinished last
// line stored at the end, and nothing lost or reordered.
func TestLogs_SplitsLinesAcrossReads(t *testing.T) {
	const maxLine = 64
	rng := rand.New(rand.NewPCG(4, 2026))
	for round := 0; round < 50; round++ {
		// Lines of lengths around 0, maxLine and 2*maxLine and beyond.
		var input []byte
		var want []LogLine
		nlines := 1 + rng.IntN(200)
		for i := 0; i < nlines; i++ {
			n := []int{0, 1, maxLine - 1, maxLine, maxLine + 1, 2 * maxLine, 2*maxLine + 1, rng.IntN(5 * maxLine)}[rng.IntN(8)]
			line := make([]byte, n)
			for j := range line {
				line[j] = 'a' + byte(rng.IntN(26))
			}
			last := i == nlines-1 && rng.IntN(2) == 0 // unfinished: no newline
			input = append(input, line...)
			if !last {
				input = append(input, '\n')
			} else if n == 0 {
				break // nothing to store
			}
			for len(line) > maxLine {
				want = append(want, LogLine{Text: string(line[:maxLine]), Split: true})
				line = line[maxLine:]
			}
			want = append(want, LogLine{Text: string(line)})
		}
		s := New(Config{}, nil)
		ls := newLogSink(s, "app/web.1", LogConfig{Memory: 1 << 20})
		p := &pipeReader{stream: "stderr", ls: ls, maxLine: maxLine}
		for data := input; len(data) > 0; {
			k := min(len(data), 1+rng.IntN(3*maxLine))
			p.consume(data[:k], time.Now())
			data = data[k:]
		}
		p.flush(time.Now())
		got := ls.tail(0)
		if len(got) != len(want) {
			t.Fatalf("round %d: %d lines stored, want %d", round, len(got), len(want))
		}
		for i := range want {
			if g := got[i]; g.Text != want[i].Text || g.Split != want[i].Split || g.Stream != "stderr" || g.Name != "app/web.1" {
				t.Fatalf("round %d: line %d = %+v, want text %q split %v", round, i, g, want[i].Text, want[i].Split)
			}
		}
	}
}

// Ensures big writes, whose blocks are allocated before they are
// written, leave every log file with the size of its lines and no
// blocks allocated beyond them, and lose no line.
func TestLogs_BigWritesAllocateNoSpareBlocks(t *testing.T) {
	s := startSup(t, Config{})
	path := filepath.Join(t.TempDir(), "big.log")
	const n, size = 60_000, 100 // about 8 MB stored, in reads far above preallocMin
	spec := Spec{Name: "spew", Command: helperCmd("spew", fmt.Sprint(n), fmt.Sprint(size)), Env: helperEnv(),
		Backoff: noRestart, Log: LogConfig{Path: path, MaxSize: 2 << 20, MaxFiles: 3}}
	events, cancel := s.Subscribe(100)
	defer cancel()
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	nextEvent(t, events, spec.Name, inState(StateBackoff))
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + ".1"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		// Blocks in use: the data rounded up to 4 KiB, and one block of
		// slack for an extent tree.
		used := fi.Sys().(*syscall.Stat_t).Blocks * 512
		if limit := (fi.Size()+4095)/4096*4096 + 4096; fi.Size() == 0 || used > limit {
			t.Errorf("%s: size %d, %d bytes of blocks allocated (at most %d)", p, fi.Size(), used, limit)
		}
	}
	lines, err := ReadLogFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	first := n - len(lines)
	if first <= 0 {
		t.Fatalf("read %d lines; some should have been rotated out", len(lines))
	}
	for i, l := range lines {
		if want := fmt.Sprint(first+i) + " "; !strings.HasPrefix(l.Text, want) || len(l.Text) != size-1 {
			t.Fatalf("line %d = %.20q (%d bytes), want prefix %q", i, l.Text, len(l.Text), want)
		}
	}
}
