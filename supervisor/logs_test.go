package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// noRestart keeps an exited process down, so its output can be checked.
var noRestart = Backoff{Initial: time.Hour, Max: time.Hour, Settle: time.Hour, MinRun: time.Hour}

// Ensures log files rotate by size at line boundaries, keep MaxFiles
// files, and ReadLogFile reads the lines back in order across them.
func TestLogs_Rotation(t *testing.T) {
	s := startSup(t, Config{})
	path := filepath.Join(t.TempDir(), "logs", "web.1.log")
	const n, size = 500, 50
	spec := Spec{Name: "spew", Command: helperCmd("spew", fmt.Sprint(n), fmt.Sprint(size)), Env: helperEnv(),
		Backoff: noRestart, Log: LogConfig{Path: path, MaxSize: 4096, MaxFiles: 3, MaxLine: 1000}}
	runToExit(t, s, spec)
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
	for _, p := range []string{path, path + ".1", path + ".2"} {
		// Each file holds whole records only, so it reads on its own.
		b, _ := os.ReadFile(p)
		var tag string
		for i, line := range strings.SplitAfter(string(b), "\n") {
			if line == "" {
				continue
			}
			if _, ok := parseRecord([]byte(strings.TrimSuffix(line, "\n")), &tag); !ok || !strings.HasSuffix(line, "\n") {
				t.Fatalf("%s: line %d is not a whole record: %q", p, i, line)
			}
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
	perFile := 4096 / (size + len("2026-11-26T13:43:46.123456Z - out "))
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

// Ensures heavy output on stdout and stderr at once (one stream's reader
// writing the file while the other's queues) keeps every line, each
// under its own stream, in order within its stream, in the files (across
// rotations) and in memory.
func TestLogs_BothStreamsAtOnce(t *testing.T) {
	s := startSup(t, Config{})
	path := filepath.Join(t.TempDir(), "both.log")
	const n = 100_000 // about 2 x 11 MB: some rotations of 4 MiB
	spec := Spec{Name: "both", Command: helperCmd("spew2", fmt.Sprint(n)), Env: helperEnv(), Backoff: noRestart,
		Log: LogConfig{Path: path, MaxSize: 4 << 20, MaxFiles: 10, Memory: 2 * n}}
	runToExit(t, s, spec)
	mem, _ := s.Tail(spec.Name, 0)
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	file, err := ReadLogFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	for what, lines := range map[string][]LogLine{"file": file, "memory": mem} {
		next := map[string]int{}
		for _, l := range lines {
			var stream string
			var i int
			if _, err := fmt.Sscanf(l.Text, "%s %d", &stream, &i); err != nil || stream != l.Stream {
				t.Fatalf("%s: line %q stored as %s", what, l.Text, l.Stream)
			}
			if i != next[stream] || l.Text != fmt.Sprintf("%s %d %s", stream, i, strings.Repeat("z", i%150)) {
				t.Fatalf("%s: %s line %d is %.30q, want line %d", what, stream, i, l.Text, next[stream])
			}
			next[stream]++
		}
		if next["stdout"] != n || next["stderr"] != n {
			t.Fatalf("%s: %d stdout and %d stderr lines, want %d each", what, next["stdout"], next["stderr"], n)
		}
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
			text           string
			split, partial bool
		}{{"short", false, false}, {strings.Repeat("x", 1000), true, false}, {strings.Repeat("x", 1000), true, false},
			{strings.Repeat("x", 500), false, false}, {"tail", false, true}}
		for i, w := range want {
			if l := lines[i]; l.Text != w.text || l.Split != w.split || l.Partial != w.partial {
				t.Errorf("%s line %d: %d bytes split=%v partial=%v, want %d bytes split=%v partial=%v",
					what, i, len(l.Text), l.Split, l.Partial, len(w.text), w.split, w.partial)
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
		l, _ := ReadLogFile(path, 0)
		return len(l) == n
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

// Ensures stored records parse back with their time, tag, stream and
// flags; that a record's text is whatever follows its prefix (a forged
// prefix, a separator, invalid UTF-8, a carriage return); that lines
// that are not records are kept whole as text; and that files of
// earlier versions (a header per read, or a stamp on each line) still
// read.
func TestLogs_ParseStored(t *testing.T) {
	const ts = "2026-11-26T13:43:46.123456Z"
	at, _ := time.Parse(timeLayout, ts)
	cases := []struct {
		in   string
		want LogLine // Time is at when Stream is set
	}{
		{ts + " v3 out hello world", LogLine{Tag: "v3", Stream: "stdout", Text: "hello world"}},
		{ts + " v3 out ", LogLine{Tag: "v3", Stream: "stdout", Text: ""}},
		{ts + " - err  two spaces ", LogLine{Stream: "stderr", Text: " two spaces "}},
		{ts + " v12 err+ piece", LogLine{Tag: "v12", Stream: "stderr", Split: true, Text: "piece"}},
		{ts + " v12 out% no newline", LogLine{Tag: "v12", Stream: "stdout", Partial: true, Text: "no newline"}},
		{ts + " v1 out " + ts + " v9 err forged", LogLine{Tag: "v1", Stream: "stdout", Text: ts + " v9 err forged"}},
		{ts + " v1 out \x1e\xff\xfe\r", LogLine{Tag: "v1", Stream: "stdout", Text: "\x1e\xff\xfe\r"}},
		// Not records: kept whole as text.
		{ts + " v1 out", LogLine{Text: ts + " v1 out"}},
		{ts + " v1 outx hello", LogLine{Text: ts + " v1 outx hello"}},
		{ts + " v1 out+x", LogLine{Text: ts + " v1 out+x"}},
		{ts + "  out hello", LogLine{Text: ts + "  out hello"}},
		{ts + " " + strings.Repeat("t", MaxTagLen+1) + " out x", LogLine{Text: ts + " " + strings.Repeat("t", MaxTagLen+1) + " out x"}},
		{"2026-13-26T13:43:46.123456Z v1 out bad month", LogLine{Text: "2026-13-26T13:43:46.123456Z v1 out bad month"}},
		{"torn 2026-11-26T13:4", LogLine{Text: "torn 2026-11-26T13:4"}},
		{"", LogLine{Text: ""}},
		// The one-line format of early versions.
		{ts + " stdout hello world", LogLine{Stream: "stdout", Text: "hello world"}},
		{ts + " stderr+ out piece", LogLine{Stream: "stderr", Split: true, Text: "out piece"}},
	}
	for _, c := range cases {
		p := lineParser{name: "x"}
		got, ok := p.line([]byte(c.in))
		w := c.want
		w.Name = "x"
		if w.Stream != "" {
			w.Time = at
		}
		if !ok || got != w {
			t.Errorf("line(%q) = %+v, %v; want %+v", c.in, got, ok, w)
		}
	}

	// The header format of the last version: a header gives the time and
	// stream of the lines after it; records after it read as records.
	stored := "\x1e" + ts + " stdout\nhello world\n\n" +
		"\x1e\x1eapp line starting with the separator\n" +
		"\x1e" + ts + " stderr+\npiece\n" +
		"\x1e" + ts + " stderr\nlast\n" +
		"\x1enot a header\n" +
		ts + " v4 out a record after an upgrade\n"
	want := []LogLine{
		{Stream: "stdout", Text: "hello world"},
		{Stream: "stdout", Text: ""},
		{Stream: "stdout", Text: "\x1eapp line starting with the separator"},
		{Stream: "stderr", Split: true, Text: "piece"},
		{Stream: "stderr", Text: "last"},
		{Stream: "stderr", Text: "\x1enot a header"},
		{Stream: "stdout", Tag: "v4", Text: "a record after an upgrade"},
	}
	var got []LogLine
	p := lineParser{name: "x"}
	p.parse([]byte(stored), func(l LogLine) { got = append(got, l) })
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		w.Name, w.Time = "x", at
		if got[i] != w {
			t.Errorf("line %d = %+v, want %+v", i, got[i], w)
		}
	}
}

// Ensures a record cut by a crash (a kill -9 of the agent while it
// wrote) neither breaks reading nor the records appended after it: a
// reader leaves out the cut last line while the file ends with it, and
// the next writer ends it with a newline before its own records, which
// read back whole.
func TestLogs_AppendAfterTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "torn.log")
	old := "2026-11-26T13:43:46.123456Z v1 err old line\n2026-11-26T13:43:46.123457Z v1 err cut in the mid"
	if err := os.WriteFile(path, []byte(old), 0o640); err != nil {
		t.Fatal(err)
	}
	if lines, err := ReadLogFile(path, 0); err != nil || len(lines) != 1 || lines[0].Text != "old line" {
		t.Fatalf("read with a cut last record: %+v, %v", lines, err)
	}
	s := startSup(t, Config{})
	spec := Spec{Name: "torn", Env: []string{"PATH=/usr/bin:/bin"}, Backoff: noRestart, Log: LogConfig{Path: path, Tag: "v2"},
		Command: `echo new line; exec sleep 1000`}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new line in memory", func() bool { return len(tailTexts(s, "torn")) == 1 })
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	lines, err := ReadLogFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ text, stream, tag string }{{"old line", "stderr", "v1"}, {"cut in the mid", "stderr", "v1"}, {"new line", "stdout", "v2"}}
	if len(lines) != len(want) {
		t.Fatalf("read %+v", lines)
	}
	for i, w := range want {
		if lines[i].Text != w.text || lines[i].Stream != w.stream || lines[i].Tag != w.tag {
			t.Errorf("line %d = %+v, want %q on %s of %s", i, lines[i], w.text, w.stream, w.tag)
		}
	}
	if last, err := ReadLogFile(path, 1); err != nil || len(last) != 1 || last[0].Text != "new line" || last[0].Stream != "stdout" {
		t.Errorf("last line %+v, %v", last, err)
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
// boundaries: the lines returned are exactly the last ones, with their
// stream and tag, for a file of records and one of the one-line format
// of early versions; and that Since and Tag pick the lines they say,
// reading back only as far as needed.
func TestLogs_ReadLogFileTailOfBigFile(t *testing.T) {
	const total = 10000
	base, _ := time.Parse(timeLayout, "2026-11-26T13:43:46.123456Z")
	at := func(i int) time.Time { return base.Add(time.Duration(i) * time.Millisecond) }
	text := func(i int) string { return fmt.Sprintf("line %d %s", i, strings.Repeat("y", i%97)) }
	stream := func(i int) string { return []string{"stdout", "stderr"}[i/3000%2] }
	tag := func(i int) string { return fmt.Sprintf("v%d", 1+i/4000) }
	var cur, legacy strings.Builder
	for i := 0; i < total; i++ {
		fmt.Fprintf(&cur, "%s %s %s %s\n", at(i).Format(timeLayout), tag(i), stream(i)[3:], text(i))
		fmt.Fprintf(&legacy, "%s %s %s\n", at(i).Format(timeLayout), stream(i), text(i))
	}
	for name, content := range map[string]string{"current": cur.String(), "legacy": legacy.String()} {
		path := filepath.Join(t.TempDir(), "big.log")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{1, 3, 700, 2000, 3001, total, 2 * total} {
			lines, err := ReadLogFile(path, n)
			if err != nil {
				t.Fatal(err)
			}
			want := min(n, total)
			if len(lines) != want {
				t.Fatalf("%s, n=%d: %d lines", name, n, len(lines))
			}
			for i, l := range lines {
				k := total - want + i
				if l.Text != text(k) || l.Stream != stream(k) || !l.Time.Equal(at(k)) || (name == "current" && l.Tag != tag(k)) {
					t.Fatalf("%s, n=%d: line %d = %+v, want %q on %s", name, n, i, l, text(k), stream(k))
				}
			}
		}
	}
	path := filepath.Join(t.TempDir(), "q.log")
	if err := os.WriteFile(path, []byte(cur.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		q          LogQuery
		first, cnt int
	}{
		{LogQuery{Since: at(9990)}, 9990, 10},
		{LogQuery{Since: at(5000), N: 3}, 9997, 3},
		{LogQuery{Since: at(0)}, 0, total},
		{LogQuery{Tag: "v2"}, 4000, 4000},
		{LogQuery{Tag: "v2", N: 5}, 7995, 5},
		{LogQuery{Tag: "v1", Since: at(3990)}, 3990, 10},
		{LogQuery{Tag: "v9"}, 0, 0},
		{LogQuery{Since: at(total)}, 0, 0},
	} {
		lines, err := ReadLogs(path, c.q)
		if err != nil || len(lines) != c.cnt {
			t.Fatalf("%+v: %d lines, %v; want %d", c.q, len(lines), err, c.cnt)
		}
		for i, l := range lines {
			if l.Text != text(c.first+i) {
				t.Fatalf("%+v: line %d = %q, want %q", c.q, i, l.Text, text(c.first+i))
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
				if rng.IntN(20) == 0 {
					line[j] = recordSep // a header of the earlier format where it starts a line
				}
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
			want = append(want, LogLine{Text: string(line), Partial: last})
		}
		t.Run(fmt.Sprint("round ", round), func(t *testing.T) { checkCapture(t, rng, input, want, maxLine) })
	}
}

// checkCapture feeds input to a pipe reader in pieces of random sizes
// and checks that exactly the lines want (their Text, Split and
// Partial) are stored, in memory and in the file. It returns the file's
// path.
func checkCapture(t *testing.T, rng *rand.Rand, input []byte, want []LogLine, maxLine int) string {
	t.Helper()
	s := New(Config{}, nil)
	path := filepath.Join(t.TempDir(), "capture.log")
	ls := newLogSink(s, "app/web.1", LogConfig{Memory: 1 << 20, Path: path, MaxSize: 1 << 30, MaxFiles: 2, Tag: "v7"})
	p := &pipeReader{stream: "stderr", ls: ls, maxLine: maxLine}
	for data := input; len(data) > 0; {
		k := min(len(data), 1+rng.IntN(4*maxLine))
		p.consume(data[:k], time.Now())
		data = data[k:]
	}
	p.flush(time.Now())
	ls.close()
	file, err := ReadLogFile(path, 0)
	if err != nil && len(want) > 0 {
		t.Fatal(err)
	}
	for what, got := range map[string][]LogLine{"memory": ls.tail(0), "file": file} {
		if len(got) != len(want) {
			t.Fatalf("%s: %d lines stored, want %d: %+v", what, len(got), len(want), got)
		}
		for i := range want {
			if g := got[i]; g.Text != want[i].Text || g.Split != want[i].Split || g.Partial != want[i].Partial ||
				g.Stream != "stderr" || g.Tag != "v7" || g.Time.IsZero() {
				t.Fatalf("%s: line %d = %+v, want text %q split %v partial %v", what, i, g, want[i].Text, want[i].Split, want[i].Partial)
			}
		}
	}
	return path
}

// Ensures big writes, whose blocks are allocated before they are
// written, leave every log file with the size of its lines and no
// blocks allocated beyond them, and lose no line.
func TestLogs_BigWritesAllocateNoSpareBlocks(t *testing.T) {
	s := startSup(t, Config{})
	path := filepath.Join(t.TempDir(), "big.log")
	const n, size = 80_000, 100 // about 8 MB stored, in reads far above preallocMin
	spec := Spec{Name: "spew", Command: helperCmd("spew", fmt.Sprint(n), fmt.Sprint(size)), Env: helperEnv(),
		Backoff: noRestart, Log: LogConfig{Path: path, MaxSize: 2 << 20, MaxFiles: 3}}
	runToExit(t, s, spec)
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

// Ensures a full disk under the log files (a real 64 KiB tmpfs, so the
// ENOSPC comes from the kernel) loses file output only: the app is not
// held up and exits, every line stays in memory, the file reads back as
// whole records (one cut by the full disk is left out), the loss is
// logged once, and once space is free again the next output is stored
// on a line of its own.
func TestLogs_FullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatalf("mounting the small tmpfs this test fills needs root; euid %d", os.Geteuid())
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0755"); err != nil {
		t.Fatalf("mount a small tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 16<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var logsMu sync.Mutex
	s := New(Config{}, hclog.New(&hclog.LoggerOptions{Output: lockedWriter{&logsMu, &logs}, Level: hclog.Warn}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	path := filepath.Join(dir, "spew.log")
	const n, size = 5000, 100 // 500 kB: far more than the filesystem holds
	spec := Spec{Name: "spew", Command: helperCmd("spew", fmt.Sprint(n), fmt.Sprint(size)), Env: helperEnv(),
		Backoff: noRestart, Log: LogConfig{Path: path, MaxSize: 1 << 20, MaxFiles: 2, Memory: n}}
	runToExit(t, s, spec) // the app finished: not held up
	mem, _ := s.Tail(spec.Name, 0)
	if len(mem) != n || !strings.HasPrefix(mem[n-1].Text, fmt.Sprint(n-1)+" ") {
		t.Fatalf("%d lines in memory, want all %d", len(mem), n)
	}
	file, err := ReadLogFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(file) == 0 || len(file) >= n {
		t.Fatalf("%d lines in the file of a full disk", len(file))
	}
	for i, l := range file { // a record cut by the full disk is left out
		if want := fmt.Sprint(i) + " "; !strings.HasPrefix(l.Text, want) || len(l.Text) != size-1 || l.Stream != "stdout" {
			t.Fatalf("line %d = %.20q (%d bytes, %s)", i, l.Text, len(l.Text), l.Stream)
		}
	}
	logsMu.Lock()
	warned := strings.Count(logs.String(), "log output lost")
	logsMu.Unlock()
	if warned != 1 {
		t.Errorf("%d warnings of lost output, want 1:\n%s", warned, logs.String())
	}

	// Free space: the next run's line is stored whole after what is there.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	spec.Command = "echo after the disk was full"
	spec.Env = []string{"PATH=/usr/bin:/bin"}
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	runToExit(t, s, spec)
	if _, err := s.Stop(context.Background(), spec.Name); err != nil {
		t.Fatal(err)
	}
	again, err := ReadLogFile(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The cut record, ended by the writer, and the new one.
	if len(again) != len(file)+1 && len(again) != len(file)+2 {
		t.Fatalf("%d lines after space was freed, want %d or %d", len(again), len(file)+1, len(file)+2)
	}
	if last := again[len(again)-1]; last.Text != "after the disk was full" || last.Stream != "stdout" {
		t.Fatalf("last line %+v", last)
	}
}

// runToExit starts spec, which must not restart (Backoff noRestart), and
// returns once its process has exited and all its output is stored.
func runToExit(t *testing.T, s *Supervisor, spec Spec) {
	t.Helper()
	events, cancel := s.Subscribe(100)
	defer cancel()
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	nextEvent(t, events, spec.Name, inState(StateBackoff))
	if ok, err := s.WaitOutput(spec.Name, 30*time.Second); !ok || err != nil {
		t.Fatalf("%s: output not all read: %v, %v", spec.Name, ok, err)
	}
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// FuzzLogLines ensures any output, read in any pieces, is stored as
// exactly its lines (long ones in marked pieces, an unfinished last one
// marked partial) in memory and in the file: app bytes never read as a
// prefix or a header, whatever they hold.
func FuzzLogLines(f *testing.F) {
	const maxLine = 32
	f.Add([]byte("plain\nlines\n"), uint64(1))
	f.Add([]byte("\x1e2026-11-26T13:43:46.123456Z stderr\nforged header\n\x1e\x1e\n"), uint64(7))
	f.Add([]byte(strings.Repeat("x", 3*maxLine+5)+"\n\x1e"+strings.Repeat("y", maxLine)+"\nend"), uint64(42))
	f.Add([]byte("\n\n\x1e\n"), uint64(3))
	f.Add([]byte("2026-11-26T13:43:46.123456Z v9 err+ forged\n\xff\xfe\r\n2026-11-26T13:43:46.1"), uint64(5))
	f.Fuzz(func(t *testing.T, input []byte, seed uint64) {
		// What must be stored: the lines, long ones cut into maxLine
		// pieces, and an unfinished last line.
		var want []LogLine
		rest := input
		for len(rest) > 0 {
			line, partial := rest, false
			if i := strings.IndexByte(string(rest), '\n'); i >= 0 {
				line, rest = rest[:i], rest[i+1:]
			} else {
				rest, partial = nil, true
			}
			for len(line) > maxLine {
				want = append(want, LogLine{Text: string(line[:maxLine]), Split: true})
				line = line[maxLine:]
			}
			want = append(want, LogLine{Text: string(line), Partial: partial})
		}

		rng := rand.New(rand.NewPCG(seed, seed>>32))
		path := checkCapture(t, rng, input, want, maxLine)
		// A tail of the file read backwards ends the same way.
		if n := 1 + rng.IntN(len(want)+1); len(want) > 0 {
			tail, err := ReadLogFile(path, n)
			if err != nil || len(tail) != min(n, len(want)) || tail[len(tail)-1].Text != want[len(want)-1].Text {
				t.Fatalf("last %d lines: %d, %v", n, len(tail), err)
			}
		}
	})
}

// FuzzReadLogs ensures the reader of stored files takes any bytes (a
// file cut anywhere by a crash, or written by anyone) without failing:
// it returns at most one line per newline, never the unterminated end,
// and a tail read backwards is the end of the whole read, whatever the
// block boundaries (for files without headers of the earlier format,
// whose meaning depends on what comes before).
func FuzzReadLogs(f *testing.F) {
	const ts = "2026-11-26T13:43:46.123456Z"
	f.Add([]byte(ts+" v1 out hello\n"+ts+" v1 err+ piece\n"+ts+" v1 err rest\n"+ts+" v2 out% end\n"), 2)
	f.Add([]byte(ts+" v1 out whole\n"+ts+" v1 out cut in the mi"), 1)
	f.Add([]byte("\x1e"+ts+" stdout\nold\n"+ts+" stderr legacy\n\xff\xfe\n"), 3)
	f.Add([]byte(ts+" "+strings.Repeat("v", 40)+" out long tag\n\n\n"), 5)
	f.Fuzz(func(t *testing.T, data []byte, n int) {
		path := filepath.Join(t.TempDir(), "f.log")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		all, err := ReadLogFile(path, 0)
		if err != nil {
			t.Fatal(err)
		}
		if nl := strings.Count(string(data), "\n"); len(all) > nl {
			t.Fatalf("%d lines from %d newlines", len(all), nl)
		}
		n = 1 + int(uint(n)%uint(len(all)+2))
		tail, err := ReadLogFile(path, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(tail) != min(n, len(all)) {
			t.Fatalf("tail of %d: %d lines of %d", n, len(tail), len(all))
		}
		if strings.IndexByte(string(data), recordSep) >= 0 {
			return
		}
		for i, l := range tail {
			if w := all[len(all)-len(tail)+i]; l != w {
				t.Fatalf("tail line %d = %+v, want %+v", i, l, w)
			}
		}
	})
}

// Ensures a file met twice while the files are read (a rotation renamed
// it from path to path.1 meanwhile; a hard link here) is read once.
func TestLogs_ReadLogsSkipsAFileSeenUnderItsFormerName(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "web.1.log")
	const ts = "2026-11-26T13:43:46.123456Z"
	if err := os.WriteFile(path, []byte(ts+" v2 out new\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".2", []byte(ts+" v1 out old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lines, err := ReadLogFile(path, 0)
	if err != nil || len(lines) != 2 || lines[0].Text != "old" || lines[1].Text != "new" {
		t.Fatalf("read %+v, %v; want old, new", lines, err)
	}
}
