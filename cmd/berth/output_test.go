package main

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

// TestRelativeTimes covers the human durations of the tables.
func TestRelativeTimes(t *testing.T) {
	now := time.Date(2026, 1, 10, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		got, want string
	}{
		{ago(now, time.Time{}), "-"},
		{ago(now, now.Add(-300*time.Millisecond)), "just now"},
		{ago(now, now.Add(-45*time.Second)), "45s ago"},
		{ago(now, now.Add(-3*time.Minute-20*time.Second)), "3m ago"},
		{ago(now, now.Add(-5*time.Hour)), "5h ago"},
		{ago(now, now.Add(-72*time.Hour)), "3d ago"},
		{uptime(9 * time.Second), "9s"},
		{uptime(3*time.Minute + 12*time.Second), "3m12s"},
		{uptime(2*time.Hour + 5*time.Minute + 59*time.Second), "2h5m"},
		{uptime(76 * time.Hour), "3d4h"},
		{uptime(-time.Second), "0s"},
		{elapsed(0), "-"},
		{elapsed(12 * time.Millisecond), "12ms"},
		{elapsed(1300 * time.Millisecond), "1.3s"},
		{elapsed(125 * time.Second), "2m5s"},
		{bytesHuman(512), "512 B"},
		{bytesHuman(3 << 20), "3.0 MiB"},
		{shellQuote("plain-value_1.2"), "plain-value_1.2"},
		{shellQuote(""), "''"},
		{shellQuote("two words"), "'two words'"},
		{shellQuote("it's"), `'it'\''s'`},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

// TestUploadBar ensures the upload progress passes every byte through and
// ends at 100% on its own line.
func TestUploadBar(t *testing.T) {
	var out bytes.Buffer
	clock := time.Unix(0, 0)
	data := strings.Repeat("x", 3000)
	bar := &uploadBar{w: &out, r: strings.NewReader(data), size: int64(len(data)), now: func() time.Time {
		clock = clock.Add(60 * time.Millisecond)
		return clock
	}}
	got, err := io.ReadAll(io.MultiReader(&chunked{r: bar, n: 1000}))
	if err != nil || string(got) != data {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	bar.finish()
	s := out.String()
	if !strings.Contains(s, "\rupload  2.9 KiB / 2.9 KiB  100%\n") || strings.Count(s, "\n") != 1 {
		t.Errorf("progress output %q", s)
	}
}

// chunked reads at most n bytes at a time.
type chunked struct {
	r io.Reader
	n int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

// TestParseSince ensures logs --since takes RFC 3339 times, local dates
// and times, and durations before now, and refuses anything else.
func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 2, 23, 10, 0, 0, time.UTC)
	local := func(y, mo, d, h, mi, s int) time.Time {
		return time.Date(y, time.Month(mo), d, h, mi, s, 0, time.Local)
	}
	for _, c := range []struct {
		in   string
		want time.Time
	}{
		{"10m", now.Add(-10 * time.Minute)},
		{"1h30m", now.Add(-90 * time.Minute)},
		{"0s", now},
		{"2026-12-02T23:00:00Z", time.Date(2026, 12, 2, 23, 0, 0, 0, time.UTC)},
		{"2026-12-02T23:00:00.5+01:00", time.Date(2026, 12, 2, 22, 0, 0, 5e8, time.UTC)},
		{"2026-12-02T23:00:01", local(2026, 12, 2, 23, 0, 1)},
		{"2026-12-02 23:00", local(2026, 12, 2, 23, 0, 0)},
		{"2026-12-02", local(2026, 12, 2, 0, 0, 0)},
	} {
		got, err := parseSince(now, c.in)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "yesterday", "-5m", "2026-13-02", "23:00"} {
		if got, err := parseSince(now, bad); err == nil {
			t.Errorf("parseSince(%q) = %v, want an error", bad, got)
		}
	}
}
