package agent

import (
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent/health"
	"github.com/berth-dev/berth/state"
	"github.com/berth-dev/berth/state/build"
	"github.com/berth-dev/berth/supervisor"
)

// TestProcessEnv ensures the process env is the release config plus what
// berth sets, with only PATH, LANG, TZ and allowed names passed through
// from the agent, and that berth's variables win over the config.
func TestProcessEnv(t *testing.T) {
	host := map[string]string{"PATH": "/usr/bin", "LANG": "C.UTF-8", "SECRET": "agent-only", "EXTRA": "ok"}
	lookup := func(k string) (string, bool) { v, ok := host[k]; return v, ok }
	cases := []struct {
		name   string
		p      envParams
		want   []string
		absent []string
	}{
		{
			name: "defaults",
			p:    envParams{Config: map[string]string{"FOO": "bar"}, App: "hello", Version: 7, Instance: "web.2", Build: "abc", Port: 5003, TmpDir: "/d/tmp", Host: lookup},
			want: []string{"FOO=bar", "PORT=5003", "BERTH_APP=hello", "BERTH_RELEASE=v7", "BERTH_PROCESS=web.2", "BERTH_BUILD=abc",
				"TMPDIR=/d/tmp", "HOME=/d/tmp", "PATH=/usr/bin", "LANG=C.UTF-8"},
			absent: []string{"SECRET", "EXTRA", "TZ"},
		},
		{
			name:   "allowed and config HOME",
			p:      envParams{Config: map[string]string{"HOME": "/srv", "PATH": "/app/bin"}, App: "a", Version: 1, Instance: "web.1", Port: 1, TmpDir: "/t", Allow: []string{"EXTRA"}, Host: lookup},
			want:   []string{"HOME=/srv", "EXTRA=ok", "PATH=/app/bin"},
			absent: []string{"SECRET"},
		},
		{
			name:   "release phase has no port",
			p:      envParams{App: "a", Version: 1, Instance: "release", TmpDir: "/t", Host: lookup},
			want:   []string{"BERTH_PROCESS=release"},
			absent: []string{"PORT"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := processEnv(tc.p)
			if !slices.IsSorted(env) {
				t.Errorf("env not sorted: %v", env)
			}
			for _, w := range tc.want {
				if !slices.Contains(env, w) {
					t.Errorf("env lacks %s: %v", w, env)
				}
			}
			for _, k := range tc.absent {
				for _, kv := range env {
					if strings.HasPrefix(kv, k+"=") {
						t.Errorf("env has %s: %v", kv, env)
					}
				}
			}
		})
	}
}

// TestParseSignal ensures stop signals are parsed by name or number and
// unknown ones refused.
func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{"": syscall.SIGTERM, "SIGINT": syscall.SIGINT, "quit": syscall.SIGQUIT, "9": syscall.SIGKILL} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("parseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"SIGNOPE", "0", "99", "-1"} {
		if _, err := parseSignal(bad); err == nil {
			t.Errorf("parseSignal(%q) accepted", bad)
		}
	}
}

// TestNew ensures bad configuration is refused by New with the value
// named, and defaults are filled in.
func TestNew(t *testing.T) {
	for name, cfg := range map[string]Config{
		"port":      {DataDir: t.TempDir(), BasePort: 70000},
		"retention": {DataDir: t.TempDir(), Retention: -1},
		"env":       {DataDir: t.TempDir(), AllowEnv: []string{"NOT-OK"}},
		"user":      {DataDir: t.TempDir(), DefaultUser: "no-such-user-here"},
		"uids":      {DataDir: t.TempDir(), AppUIDs: state.UIDRange{Min: 0, Max: 10}},
	} {
		if _, err := New(cfg, nil); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	a, err := New(Config{DataDir: "rel/dir"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := a.config()
	if cfg.BasePort != 5000 || cfg.StopTimeout != DefaultStopTimeout || cfg.Retention != 5 || cfg.LogMaxSize != 10<<20 ||
		!strings.HasPrefix(cfg.DataDir, "/") || cfg.SocketPath == "" {
		t.Fatalf("defaults = %+v", cfg)
	}
	if cfg.DefaultUser != "" || cfg.AppUIDs != DefaultAppUIDs {
		t.Fatalf("default user %q, app uids %v; want none (each app its own uid) and %v", cfg.DefaultUser, cfg.AppUIDs, DefaultAppUIDs)
	}
}

// TestCheckOf ensures a manifest's health check gets the defaults of
// the ones it leaves out, that none means no check, and that a check the
// health package cannot probe is refused naming the bad value.
func TestCheckOf(t *testing.T) {
	if c, err := checkOf(nil); c != nil || err != nil {
		t.Fatalf("checkOf(nil) = %v, %v", c, err)
	}
	c, err := checkOf(&build.Healthcheck{HTTP: "/up", Interval: build.Duration(time.Second), StartPeriod: build.Duration(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP != "/up" || c.Interval != time.Second || c.Timeout != health.DefaultTimeout || c.Retries != health.DefaultRetries || c.StartPeriod != 5*time.Second {
		t.Fatalf("check = %+v", c)
	}
	for _, bad := range []build.Healthcheck{{HTTP: "/up#x"}, {}, {HTTP: "/up", TCP: true}, {Exec: "  "}} {
		if _, err := checkOf(&bad); !errors.Is(err, health.ErrInvalidCheck) {
			t.Errorf("checkOf(%+v) = %v, want ErrInvalidCheck", bad, err)
		}
	}
}

// TestBackoffOf ensures a type's restart settings override the agent's
// Backoff field by field, none keeps the agent's, and a value that
// clashes with the default or agent value it is paired with is refused.
func TestBackoffOf(t *testing.T) {
	agent := supervisor.Backoff{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond, Settle: 300 * time.Millisecond, CrashAfter: 4}
	d := func(v time.Duration) build.Duration { return build.Duration(v) }
	for _, tc := range []struct {
		name  string
		agent supervisor.Backoff
		r     *build.Restart
		want  supervisor.Backoff
	}{
		{"none", agent, nil, agent},
		{"empty", agent, &build.Restart{}, agent},
		{"all", agent, &build.Restart{MinRun: d(time.Second), Settle: d(5 * time.Second), BackoffInitial: d(100 * time.Millisecond), BackoffMax: d(30 * time.Second)},
			supervisor.Backoff{MinRun: time.Second, Settle: 5 * time.Second, Initial: 100 * time.Millisecond, Max: 30 * time.Second, CrashAfter: 4}},
		{"some", agent, &build.Restart{Settle: d(2 * time.Second)},
			supervisor.Backoff{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond, Settle: 2 * time.Second, CrashAfter: 4}},
		{"settle below the default min_run", supervisor.Backoff{}, &build.Restart{Settle: d(500 * time.Millisecond)},
			supervisor.Backoff{Settle: 500 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := backoffOf(tc.agent, tc.r)
			if err != nil || got != tc.want {
				t.Fatalf("backoffOf = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name  string
		agent supervisor.Backoff
		r     build.Restart
		field string
	}{
		{"initial above the agent's max", agent, build.Restart{BackoffInitial: d(time.Second)}, "Backoff.Initial"},
		{"initial above the default max", supervisor.Backoff{}, build.Restart{BackoffInitial: d(time.Minute)}, "Backoff.Initial"},
		{"max below the agent's initial", supervisor.Backoff{Initial: 5 * time.Second}, build.Restart{BackoffMax: d(time.Second)}, "Backoff.Initial"},
		{"min_run above the default settle", supervisor.Backoff{}, build.Restart{MinRun: d(10 * time.Second)}, "Backoff.MinRun"},
		{"settle below the agent's min_run", supervisor.Backoff{MinRun: time.Second}, build.Restart{Settle: d(500 * time.Millisecond)}, "Backoff.MinRun"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := backoffOf(tc.agent, &tc.r)
			var se *supervisor.SpecError
			if !errors.As(err, &se) || se.Field != tc.field {
				t.Fatalf("backoffOf = %v, want a SpecError for %s", err, tc.field)
			}
		})
	}
}

// TestHealthDeadline ensures a switch waits for the start period plus
// the probes a check needs to fail, never longer than the start timeout.
func TestHealthDeadline(t *testing.T) {
	for _, tc := range []struct {
		c     health.Check
		limit time.Duration
		want  time.Duration
	}{
		{health.Check{HTTP: "/", Interval: time.Second, Timeout: time.Second, StartPeriod: 10 * time.Second, Retries: 3}, time.Minute, 10*time.Second + 8*time.Second + time.Second},
		{health.Check{TCP: true}, time.Minute, 4*(health.DefaultInterval+health.DefaultTimeout) + time.Second},
		{health.Check{HTTP: "/", StartPeriod: time.Hour}, 30 * time.Second, 30 * time.Second},
	} {
		if got := healthDeadline(tc.c, tc.limit); got != tc.want {
			t.Errorf("healthDeadline(%+v, %s) = %s, want %s", tc.c, tc.limit, got, tc.want)
		}
	}
}

// TestSplitName ensures supervisor names of both modes map to the app
// and the instance users know.
func TestSplitName(t *testing.T) {
	for name, want := range map[string][2]string{
		"hello/web.1":     {"hello", "web.1"},
		"hello/web.1@v12": {"hello", "web.1"},
		"a-b/worker.10":   {"a-b", "worker.10"},
	} {
		if app, inst := splitName(name); app != want[0] || inst != want[1] {
			t.Errorf("splitName(%q) = %q, %q, want %q", name, app, inst, want)
		}
	}
}

// TestConfigValidate_Switching ensures negative switch timings are
// refused naming the value, and that the probation and settle defaults
// apply.
func TestConfigValidate_Switching(t *testing.T) {
	for _, cfg := range []Config{{StartTimeout: -time.Second}, {Settle: -time.Second}} {
		_, err := New(Config{DataDir: t.TempDir(), StartTimeout: cfg.StartTimeout, Settle: cfg.Settle}, nil)
		if err == nil || !strings.Contains(err.Error(), "-1s") {
			t.Errorf("New(%+v) = %v, want an error naming -1s", cfg, err)
		}
	}
	a, err := New(Config{DataDir: t.TempDir(), Backoff: supervisor.Backoff{Settle: 2 * time.Second}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := a.config(); cfg.Probation != DefaultProbation || cfg.Settle != 2*time.Second {
		t.Fatalf("defaults: probation %s, settle %s", cfg.Probation, cfg.Settle)
	}
}
