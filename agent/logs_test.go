package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/supervisor"
)

// logTexts returns "vN text" for each line, for messages.
func logTexts(lines []api.LogLine) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = fmt.Sprintf("v%d %s", l.Release, l.Text)
	}
	return out
}

// TestAgent_LogsAcrossReleasesAndCrash ensures logs reads the same
// history whether an instance runs or not: the lines of three releases
// and of the process a crash replaced, each with its time and release,
// in order, from the stored files; that -n, --since and --release pick
// the lines they say; and that a record cut by a kill -9 at the end of
// the file neither fails the read nor shows.
func TestAgent_LogsAcrossReleasesAndCrash(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		ta.mustDeploy(t, "hello", webBuild(t, fmt.Sprint("build ", i)))
		ta.waitLog(t, "hello", "web.1", fmt.Sprintf("rel=v%d FOO=", i))
	}
	pid := ta.procs(t, "hello")["web.1"].PID
	if err := syscallKill(pid); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "web.1 restarted after its crash", func() bool {
		p := ta.procs(t, "hello")["web.1"]
		return p.State == "running" && p.PID != pid && p.PID != 0
	})
	all := func() []api.LogLine {
		lines, err := ta.Logs(ctx, "hello", api.LogQuery{Instance: "web.1"})
		if err != nil {
			t.Fatal(err)
		}
		return lines
	}
	waitFor(t, 10*time.Second, "the restarted process's line", func() bool { return len(all()) == 4 })

	// Stopped: the history reads the same.
	if _, err := ta.Scale(ctx, "hello", map[string]int{"web": 0}); err != nil {
		t.Fatal(err)
	}
	lines := all()
	wantRel := []int{1, 2, 3, 3}
	if len(lines) != len(wantRel) {
		t.Fatalf("logs of a stopped web.1: %q, want one line of v1, v2 and two of v3", logTexts(lines))
	}
	for i, l := range lines {
		if l.Release != wantRel[i] || !strings.HasPrefix(l.Text, fmt.Sprintf("rel=v%d FOO=", wantRel[i])) ||
			l.App != "hello" || l.Instance != "web.1" || l.Stream != "stdout" || l.Time.IsZero() ||
			(i > 0 && l.Time.Before(lines[i-1].Time)) {
			t.Fatalf("line %d = %+v; all: %q", i, l, logTexts(lines))
		}
	}

	for _, c := range []struct {
		q    api.LogQuery
		want []api.LogLine
	}{
		{api.LogQuery{N: 2}, lines[2:]},
		{api.LogQuery{Instance: "web.1", Release: 2}, lines[1:2]},
		{api.LogQuery{Release: 3, N: 1}, lines[3:]},
		{api.LogQuery{Since: lines[2].Time}, lines[2:]},
		{api.LogQuery{Since: lines[3].Time.Add(time.Microsecond)}, nil},
		{api.LogQuery{Release: 9}, nil},
	} {
		got, err := ta.Logs(ctx, "hello", c.q)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(logTexts(got)) != fmt.Sprint(logTexts(c.want)) {
			t.Errorf("Logs(%+v) = %q, want %q", c.q, logTexts(got), logTexts(c.want))
		}
	}

	// A kill -9 of the agent while it wrote leaves a cut record.
	path := ta.appDir("hello", "logs", "web.1.log")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "%s v3 out rel=v3 cut in the mi", time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"))
	f.Close()
	if got := all(); fmt.Sprint(logTexts(got)) != fmt.Sprint(logTexts(lines)) {
		t.Errorf("logs with a cut last record = %q, want %q", logTexts(got), logTexts(lines))
	}
	// The next process's output starts on a line of its own.
	if _, err := ta.Scale(ctx, "hello", map[string]int{"web": 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the cut record and the new line", func() bool { return len(all()) == 6 })
	got := all()
	if got[4].Text != "rel=v3 cut in the mi" || !strings.HasPrefix(got[5].Text, "rel=v3 FOO=") || got[5].Release != 3 {
		t.Errorf("after a cut record: %q", logTexts(got))
	}

	for _, q := range []api.LogQuery{{N: -1}, {Release: -1}, {Instance: "web"}} {
		_, err := ta.Logs(ctx, "hello", q)
		wantKind(t, err, api.ErrInvalid)
	}
}

// TestAgent_FollowLogsAcrossSwitch ensures a follower carries on across
// switches: the lines of the new release's instances arrive with their
// release, in bind mode (web.1 stops, then starts) and in socket mode
// (web.1@v2 starts beside web.1@v1), and a follower of one release gets
// only that release's lines.
func TestAgent_FollowLogsAcrossSwitch(t *testing.T) {
	for _, mode := range []string{"bind", "socket"} {
		t.Run(mode, func(t *testing.T) {
			ta := startAgent(t, testConfig(dataDir(t)))
			build := func(i int) []byte {
				if mode == "socket" {
					return helloTar(t, socketManifest, fmt.Sprint("build ", i))
				}
				return webBuild(t, fmt.Sprint("build ", i))
			}
			started := func(rel int) string { // a line each new process writes
				if mode == "socket" {
					return fmt.Sprintf("hello: release v%d of hello (web.1) listening", rel)
				}
				return fmt.Sprintf("rel=v%d FOO=", rel)
			}
			ta.mustDeploy(t, "hello", build(1))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			got := make(chan api.LogLine, 1000)
			only2 := make(chan api.LogLine, 1000)
			done := make(chan error, 2)
			go func() {
				done <- ta.FollowLogs(ctx, "hello", api.LogQuery{}, func(l api.LogLine) error { got <- l; return nil })
			}()
			go func() {
				done <- ta.FollowLogs(ctx, "hello", api.LogQuery{Instance: "web.1", Release: 2}, func(l api.LogLine) error { only2 <- l; return nil })
			}()
			next := func(ch chan api.LogLine, what string, ok func(api.LogLine) bool) api.LogLine {
				t.Helper()
				timeout := time.After(30 * time.Second)
				for {
					select {
					case l := <-ch:
						if ok(l) {
							return l
						}
					case <-timeout:
						t.Fatalf("no followed line: %s", what)
					}
				}
			}
			// Restarts until the followers are surely following: a line of
			// the restarted v1 process reaches the first one.
			waitFor(t, 30*time.Second, "the follower to follow", func() bool {
				if err := ta.Restart(context.Background(), "hello", "web.1"); err != nil {
					t.Fatal(err)
				}
				select {
				case l := <-got:
					return strings.Contains(l.Text, started(1))
				case <-time.After(2 * time.Second):
					return false
				}
			})
			ta.mustDeploy(t, "hello", build(2))
			l := next(got, "v2's first line", func(l api.LogLine) bool { return strings.Contains(l.Text, started(2)) })
			if l.Release != 2 || l.Instance != "web.1" || l.App != "hello" || l.Time.IsZero() {
				t.Errorf("v2's line = %+v", l)
			}
			l = next(only2, "v2's first line, following v2 only", func(l api.LogLine) bool { return true })
			if l.Release != 2 || !strings.Contains(l.Text, started(2)) {
				t.Errorf("first line of the v2 follower = %+v", l)
			}
			// A third release: the follower of v2 gets nothing of it.
			ta.mustDeploy(t, "hello", build(3))
			next(got, "v3's first line", func(l api.LogLine) bool { return strings.Contains(l.Text, started(3)) })
			cancel()
			for range 2 {
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
			close(only2)
			for l := range only2 {
				if l.Release != 2 {
					t.Errorf("the follower of v2 got %+v", l)
				}
			}
		})
	}
}

// TestAgent_FollowLogsSkipNotice ensures a follower that falls behind
// never slows the app or loses a stored line, and is told how many
// lines it missed: the lines it got and the count it was told add up to
// every line written while it followed.
func TestAgent_FollowLogsSkipNotice(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 5000
	// Each start writes n lines at once and, after a pause in which a
	// follower catches up, one more: the next line a follower gets after
	// losing some, which tells it how many.
	ta.mustDeploy(t, "spam", webApp(t, fmt.Sprintf(`spam: i=0; while [ $i -lt %d ]; do echo "line $i"; i=$((i+1)); done; sleep 0.3; echo done; exec sleep 1000`+"\n", n)))
	const perRun = n + 1
	stored := func() int {
		lines, err := ta.Logs(ctx, "spam", api.LogQuery{Instance: "spam.1"})
		if err != nil {
			t.Fatal(err)
		}
		return len(lines)
	}
	waitFor(t, 30*time.Second, "the first run's lines stored", func() bool { return stored() == perRun })

	stuck, release := make(chan struct{}), make(chan struct{})
	lines := make(chan api.LogLine, 4*perRun)
	done := make(chan error, 1)
	go func() {
		first := true
		done <- ta.FollowLogs(ctx, "spam", api.LogQuery{Instance: "spam.1"}, func(l api.LogLine) error {
			if first { // a slow reader: stuck until the app has written all
				first = false
				close(stuck)
				<-release
			}
			lines <- l
			return nil
		})
	}()
	// Restart until a run's line reaches the follower, which gets stuck.
	runs := 1
	for ; ; runs++ {
		if err := ta.Restart(ctx, "spam", "spam.1"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, "a run's lines stored", func() bool { return stored() == (runs+1)*perRun })
		select {
		case <-stuck:
		case <-time.After(time.Second):
			continue
		}
		break
	}
	close(release)
	// One more run; its last line tells the follower what it missed.
	if err := ta.Restart(ctx, "spam", "spam.1"); err != nil {
		t.Fatal(err)
	}
	var got, missed int
	timeout := time.After(30 * time.Second)
	for end := false; !end; {
		select {
		case l := <-lines:
			got++
			missed += l.Missed
			end = l.Text == "done" && got > 1
		case <-timeout:
			t.Fatalf("the last run's last line did not reach the follower: got %d lines, %d missed", got, missed)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if missed == 0 {
		t.Fatalf("a stuck follower got %d lines and was told of none missed", got)
	}
	// What the follower was offered: part of the run it got stuck in (it
	// may have started following in its middle) and all of the last one.
	if got+missed > 2*perRun || got+missed <= perRun {
		t.Errorf("got %d lines and %d missed; want them to add up to the lines written while following", got, missed)
	}
	waitFor(t, 30*time.Second, "every line stored", func() bool { return stored() == (runs+2)*perRun })
}

// TestAgent_ReleasePhaseOutputKept ensures the release phase's output of
// a successful release is kept and shown by releases info, and that an
// output longer than the release record holds keeps its end behind a
// notice with the exact count of bytes cut.
func TestAgent_ReleasePhaseOutputKept(t *testing.T) {
	ta := startAgent(t, testConfig(dataDir(t)))
	ctx := context.Background()
	v1 := ta.mustDeploy(t, "hello", webApp(t, `release: echo "migrating $BERTH_RELEASE"; echo "3 tables" >&2`+"\n"))
	got, err := ta.Release(ctx, "hello", v1.Version)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != "active" || got.Output != "migrating v1\n3 tables\n" {
		t.Fatalf("v1: status %s, output %q", got.Status, got.Output)
	}
	if v1.Output != got.Output {
		t.Errorf("deploy returned output %q, releases info %q", v1.Output, got.Output)
	}

	// 20,000 lines "line NNNNN" (11 bytes each) and "end": 220,003 bytes.
	const total = 20000*11 + 3
	v2 := ta.mustDeploy(t, "hello", webApp(t, `release: i=10000; while [ $i -lt 30000 ]; do echo "line $i"; i=$((i+1)); done; printf end`+"\n"))
	got, err = ta.Release(ctx, "hello", v2.Version)
	if err != nil {
		t.Fatal(err)
	}
	head, rest, _ := strings.Cut(got.Output, "\n")
	var cut int
	if _, err := fmt.Sscanf(head, "[... %d bytes of output dropped ...]", &cut); err != nil || cut+len(rest) != total ||
		!strings.HasSuffix(rest, "line 29999\nend") {
		t.Fatalf("v2's output: %d bytes, starting %q, ending %q; want the cut counted exactly (%d bytes written)",
			len(got.Output), head, rest[max(0, len(rest)-16):], total)
	}
}

// TestAgent_TailFollowLosesNothing runs `logs -n N -f` (TailLogs over
// the real socket) many times on an app that writes a numbered line
// every millisecond: the stored lines and the new ones join with no line
// missing and none twice, although lines are written while the store is
// read.
func TestAgent_TailFollowLosesNothing(t *testing.T) {
	cfg := testConfig(dataDir(t))
	cfg.NoSocket = false
	ta := startAgent(t, cfg)
	c := api.NewClient(cfg.SocketPath)
	defer c.Close()
	ta.mustDeploy(t, "ticker", tarball(t, map[string]string{
		"Procfile": `tick: i=0; while :; do echo "n $i"; i=$((i+1)); sleep 0.001; done` + "\n",
	}))
	ctx := context.Background()
	waitFor(t, 30*time.Second, "lines stored", func() bool {
		lines, err := ta.Logs(ctx, "ticker", api.LogQuery{N: 50})
		return err == nil && len(lines) == 50
	})
	for round := range 30 {
		fctx, cancel := context.WithCancel(ctx)
		var got []int
		done := make(chan error, 1)
		go func() {
			done <- c.TailLogs(fctx, "ticker", api.LogQuery{N: 5 + round}, func(l api.LogLine) error {
				var n int
				if _, err := fmt.Sscanf(l.Text, "n %d", &n); err != nil {
					return fmt.Errorf("line %q: %v", l.Text, err)
				}
				if got = append(got, n); len(got) == 60+round {
					cancel()
				}
				return nil
			})
		}()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Fatalf("round %d: %v", round, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: only %d lines in 30s", round, len(got))
		}
		cancel()
		for i := 1; i < len(got); i++ {
			if got[i] != got[i-1]+1 {
				t.Fatalf("round %d (-n %d): line %d follows line %d: %v", round, 5+round, got[i], got[i-1], got)
			}
		}
	}
}

// TestDropStored covers the join of stored and followed lines: the
// lines of each instance that the store gave are dropped from the front
// of what the follower got, however many the store gave of them, and
// lines the tag filters out neither match nor lose their Missed count.
func TestDropStored(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 8, 0, 0, 123456789, time.UTC)
	live := func(inst, tag, text string, at time.Duration, missed int) supervisor.LogLine {
		return supervisor.LogLine{Name: "app/" + inst + "@" + tag, Tag: tag, Time: t0.Add(at * time.Millisecond), Stream: "stdout", Text: text, Missed: missed}
	}
	stored := func(inst, text string, at time.Duration) api.LogLine {
		// The store keeps microseconds.
		return api.LogLine{Instance: inst, Time: t0.Add(at * time.Millisecond).Truncate(time.Microsecond), Stream: "stdout", Text: text}
	}
	texts := func(ls []supervisor.LogLine) string {
		var out []string
		for _, l := range ls {
			out = append(out, fmt.Sprintf("%s:%s+%d", l.Name, l.Text, l.Missed))
		}
		return strings.Join(out, " ")
	}
	for _, c := range []struct {
		name    string
		pending []supervisor.LogLine
		read    map[string][]api.LogLine
		tag     string
		want    string
	}{{
		name:    "overlap of two",
		pending: []supervisor.LogLine{live("web.1", "v1", "b", 2, 0), live("web.1", "v1", "c", 3, 0), live("web.1", "v1", "d", 4, 0)},
		read:    map[string][]api.LogLine{"web.1": {stored("web.1", "a", 1), stored("web.1", "b", 2), stored("web.1", "c", 3)}},
		want:    "app/web.1@v1:d+0",
	}, {
		name:    "the store gave fewer than the overlap (-n 1)",
		pending: []supervisor.LogLine{live("web.1", "v1", "b", 2, 0), live("web.1", "v1", "c", 3, 0), live("web.1", "v1", "d", 4, 0)},
		read:    map[string][]api.LogLine{"web.1": {stored("web.1", "c", 3)}},
		want:    "app/web.1@v1:d+0",
	}, {
		name:    "no overlap; another instance's lines stay",
		pending: []supervisor.LogLine{live("web.2", "v1", "c", 3, 0), live("web.1", "v1", "d", 4, 0)},
		read:    map[string][]api.LogLine{"web.1": {stored("web.1", "c", 3)}},
		want:    "app/web.2@v1:c+0 app/web.1@v1:d+0",
	}, {
		name: "identical lines of one batch, the store had two of three",
		pending: []supervisor.LogLine{live("web.1", "v1", "x", 5, 0), live("web.1", "v1", "x", 5, 0), live("web.1", "v1", "x", 5, 0),
			live("web.1", "v1", "y", 6, 0)},
		read: map[string][]api.LogLine{"web.1": {stored("web.1", "x", 5), stored("web.1", "x", 5)}},
		want: "app/web.1@v1:x+0 app/web.1@v1:y+0",
	}, {
		name:    "same text at another time is a new line",
		pending: []supervisor.LogLine{live("web.1", "v1", "tick", 7, 0)},
		read:    map[string][]api.LogLine{"web.1": {stored("web.1", "tick", 6)}},
		want:    "app/web.1@v1:tick+0",
	}, {
		name:    "a dropped line's Missed count moves on; other tags are kept for relay",
		pending: []supervisor.LogLine{live("web.1", "v2", "c", 3, 4), live("web.1", "v1", "old", 3, 0), live("web.1", "v2", "d", 4, 0)},
		read:    map[string][]api.LogLine{"web.1": {stored("web.1", "c", 3)}},
		tag:     "v2",
		want:    "app/web.1@v1:old+4 app/web.1@v2:d+0",
	}} {
		marks := logMarks{}
		for inst, lines := range c.read {
			for _, l := range lines {
				marks.add(inst, l.Stream, l.Time)
			}
		}
		if got := texts(dropStored(c.pending, marks, c.tag)); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}
