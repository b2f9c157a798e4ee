package state

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// TestValidate ensures each validator accepts the rule's edge cases and
// refuses everything else with a *ValidationError that names the value
// and the rule.
func TestValidate(t *testing.T) {
	long := strings.Repeat("a", 63)
	tests := []struct {
		name     string
		fn       func(string) error
		ok       []string
		bad      []string
		rule     string // a fragment of the rule the error must quote
		nameKind bool   // wraps ErrInvalidName
	}{
		{"app", ValidateAppName,
			[]string{"a", "web", "my-app-2", "a-", long},
			[]string{"", "A", "My_App", "1app", "-app", "app_x", "app.x", "app x", long + "a", "ä", "app\x00"},
			"^[a-z][a-z0-9-]{0,62}$", true},
		{"env", ValidateEnvName,
			[]string{"A", "_", "FOO_BAR", "foo9", "_9", strings.Repeat("X", 300)},
			[]string{"", "9A", "FOO-BAR", "FOO BAR", "FOO=1", "A.B", "É"},
			"^[A-Za-z_][A-Za-z0-9_]*$", true},
		{"process type", ValidateProcessType,
			[]string{"web", "Worker_2", "clock-1", "9", long},
			[]string{"", "web.1", "we b", "web:", long + "a"},
			"^[A-Za-z0-9_-]+$", true},
		{"instance", ValidateInstance,
			[]string{"web.1", "worker_2.10", "a.999999"},
			[]string{"", "web", "web.0", "web.01", "web.-1", ".1", "web.1.2", "we b.1", "web.1000000", long + "a.1"},
			"<type>.<n>", true},
		{"user", ValidateUser,
			[]string{"", "www-data", "_apt", "app.user", "1000", "A"},
			[]string{"-x", "a b", "root:0", strings.Repeat("u", 33), "1.5", "../x"},
			"user name", true},
		{"digest", ValidateDigest,
			[]string{testDigest(1), strings.Repeat("0", 64)},
			[]string{"", "abc", strings.ToUpper(testDigest(1)), testDigest(1) + "0", "g" + testDigest(1)[1:]},
			"64 lowercase hex", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, v := range tt.ok {
				if err := tt.fn(v); err != nil {
					t.Errorf("%q refused: %v", v, err)
				}
			}
			for _, v := range tt.bad {
				err := tt.fn(v)
				if err == nil {
					t.Errorf("%q accepted", v)
					continue
				}
				var ve *ValidationError
				if !errors.As(err, &ve) || ve.Value != v {
					t.Errorf("%q: error %v is not a *ValidationError for the value", v, err)
				}
				if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrInvalidName) != tt.nameKind {
					t.Errorf("%q: error %v: Is(ErrInvalid)=%v Is(ErrInvalidName)=%v", v, err, errors.Is(err, ErrInvalid), errors.Is(err, ErrInvalidName))
				}
				if !strings.Contains(err.Error(), strconv.Quote(v)) || !strings.Contains(err.Error(), tt.rule) {
					t.Errorf("%q: error %q does not name the value and the rule %q", v, err, tt.rule)
				}
			}
		})
	}
}

// TestStore_BadInputChangesNothing ensures every refused operation returns
// an error naming the bad value and leaves the database byte-for-byte as
// it was (no half-written record, no counter advanced).
func TestStore_BadInputChangesNothing(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "web")
	r := mustRelease(t, s, "web", NewRelease{Build: testDigest(1), Config: map[string]string{"A": "1"}})
	if _, err := s.Activate("web", r.Version); err != nil {
		t.Fatal(err)
	}
	bad := mustRelease(t, s, "web", NewRelease{Build: testDigest(2)})
	if err := s.MarkFailed("web", bad.Version, "release phase exited 1", ""); err != nil {
		t.Fatal(err)
	}
	before := dump(t, s)

	tests := []struct {
		name    string
		op      func() error
		target  error
		mention string
	}{
		{"create app with bad name", func() error { _, err := s.CreateApp("Web_1"); return err }, ErrInvalidName, `"Web_1"`},
		{"create existing app", func() error { _, err := s.CreateApp("web"); return err }, ErrAppExists, `"web"`},
		{"delete unknown app", func() error { return s.DeleteApp("nope") }, ErrAppNotFound, `"nope"`},
		{"bad user", func() error { _, err := s.SetAppUser("web", "a b"); return err }, ErrInvalidName, `"a b"`},
		{"user of unknown app", func() error { _, err := s.SetAppUser("nope", "x"); return err }, ErrAppNotFound, `"nope"`},
		{"release with bad env name", func() error {
			_, err := s.CreateRelease("web", NewRelease{Build: testDigest(3), Config: map[string]string{"OK": "1", "BAD-NAME": "x"}})
			return err
		}, ErrInvalidName, `"BAD-NAME"`},
		{"release with NUL in a value", func() error {
			_, err := s.CreateRelease("web", NewRelease{Build: testDigest(3), Config: map[string]string{"SECRET": "a\x00b"}})
			return err
		}, ErrInvalid, "SECRET"},
		{"release with bad digest", func() error {
			_, err := s.CreateRelease("web", NewRelease{Build: "deadbeef"})
			return err
		}, ErrInvalid, `"deadbeef"`},
		{"release with negative count", func() error {
			_, err := s.CreateRelease("web", NewRelease{Build: testDigest(3), Formation: map[string]int{"web": -1}})
			return err
		}, ErrInvalid, `"web=-1"`},
		{"release of unknown app", func() error {
			_, err := s.CreateRelease("nope", NewRelease{Build: testDigest(3)})
			return err
		}, ErrAppNotFound, `"nope"`},
		{"activate unknown version", func() error { _, err := s.Activate("web", 99); return err }, ErrReleaseNotFound, "v99"},
		{"activate failed release", func() error { _, err := s.Activate("web", bad.Version); return err }, ErrBadTransition, "v2 is failed"},
		{"fail unknown release", func() error { return s.MarkFailed("web", 0, "x", "") }, ErrReleaseNotFound, "v0"},
		{"put config with bad name", func() error { return s.PutConfig("web", map[string]string{"1X": "y"}) }, ErrInvalidName, `"1X"`},
		{"formation with bad type", func() error { _, err := s.SetFormation("web", map[string]int{"web": 1, "we b": 1}); return err }, ErrInvalidName, `"we b"`},
		{"formation too large", func() error { _, err := s.SetFormation("web", map[string]int{"web": MaxProcessCount + 1}); return err }, ErrInvalid, "web=1001"},
		{"config key over MaxConfigKeyLen", func() error {
			return s.PutConfig("web", map[string]string{strings.Repeat("K", MaxConfigKeyLen+1): "v"})
		}, ErrInvalidName, "MaxConfigKeyLen"},
		{"config value over MaxConfigValueBytes", func() error {
			return s.PutConfig("web", map[string]string{"BIG": strings.Repeat("v", MaxConfigValueBytes+1)})
		}, ErrInvalid, "MaxConfigValueBytes"},
		{"config over MaxConfigVars", func() error { return s.PutConfig("web", manyVars(MaxConfigVars+1, 1)) }, ErrInvalid, "MaxConfigVars"},
		{"config over MaxConfigBytes", func() error {
			return s.PutConfig("web", manyVars(MaxConfigBytes/MaxConfigValueBytes+1, MaxConfigValueBytes))
		}, ErrInvalid, "MaxConfigBytes"},
		{"formation over MaxAppProcesses", func() error {
			_, err := s.SetFormation("web", map[string]int{"web": MaxProcessCount, "worker": MaxProcessCount, "clock": MaxAppProcesses - 2*MaxProcessCount + 1})
			return err
		}, ErrInvalid, "MaxAppProcesses"},
		{"formation of unknown app", func() error { _, err := s.SetFormation("nope", map[string]int{"web": 1}); return err }, ErrAppNotFound, `"nope"`},
		{"port with bad instance", func() error { _, err := s.Port("web", "web", 5000); return err }, ErrInvalidName, `"web"`},
		{"port with bad base", func() error { _, err := s.Port("web", "web.1", 70000); return err }, ErrInvalid, `"70000"`},
		{"port of unknown app", func() error { _, err := s.Port("nope", "web.1", 5000); return err }, ErrAppNotFound, `"nope"`},
		{"build with bad digest", func() error { return s.PutBuild(BuildRecord{Digest: "x"}) }, ErrInvalid, `"x"`},
		{"build with bad type", func() error { return s.PutBuild(BuildRecord{Digest: testDigest(4), Types: []string{"a:b"}}) }, ErrInvalidName, `"a:b"`},
		{"build with negative size", func() error { return s.PutBuild(BuildRecord{Digest: testDigest(4), Size: -1}) }, ErrInvalid, `"-1/0"`},
		{"delete unknown build", func() error { return s.DeleteBuild(testDigest(9)) }, ErrBuildNotFound, testDigest(9)},
		{"proc without name", func() error { return s.PutProc(ProcRecord{PID: 1, PGID: 1}) }, ErrInvalidName, "process record name"},
		{"proc without pid", func() error { return s.PutProc(ProcRecord{Name: "x"}) }, ErrInvalid, `"0/0"`},
		{"event with bad app", func() error { _, err := s.AppendEvent("Bad App", "deploy", "x"); return err }, ErrInvalidName, `"Bad App"`},
		{"event without kind", func() error { _, err := s.AppendEvent("web", "", "x"); return err }, ErrInvalid, "event kind"},
		{"negative release limit", func() error { _, err := s.Releases("web", -1); return err }, ErrInvalid, `"-1"`},
		{"negative event limit", func() error { _, err := s.Events("", 0, -1); return err }, ErrInvalid, `"-1"`},
		{"negative keep", func() error { _, err := s.ReferencedBuilds(-1); return err }, ErrInvalid, `"-1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op()
			wantErr(t, err, tt.target, tt.mention)
			if after := dump(t, s); after != before {
				t.Errorf("database changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
	// The NUL error names the key but never the value.
	_, err := s.CreateRelease("web", NewRelease{Build: testDigest(3), Config: map[string]string{"SECRET": "hunter2\x00"}})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %v quotes a config value", err)
	}
	// The next release still gets the next number: refusals used none.
	if r := mustRelease(t, s, "web", NewRelease{Build: testDigest(3)}); r.Version != 3 {
		t.Errorf("version after refusals = %d, want 3", r.Version)
	}
}

// manyVars is a config of n vars whose values are size bytes each.
func manyVars(n, size int) map[string]string {
	cfg := make(map[string]string, n)
	for i := range n {
		cfg[fmt.Sprintf("V%d", i)] = strings.Repeat("x", size)
	}
	return cfg
}

// TestStore_AgentProcessLimit ensures the formations of all apps
// together cannot exceed MaxAgentProcesses, and the refusal names it.
func TestStore_AgentProcessLimit(t *testing.T) {
	s := openTest(t)
	n := 0
	for i := 0; n < MaxAgentProcesses; i++ {
		app := fmt.Sprintf("app%d", i)
		mustApp(t, s, app)
		c := min(MaxProcessCount, MaxAgentProcesses-n)
		if _, err := s.SetFormation(app, map[string]int{"web": c}); err != nil {
			t.Fatal(err)
		}
		n += c
	}
	mustApp(t, s, "last")
	_, err := s.SetFormation("last", map[string]int{"web": 1})
	wantErr(t, err, ErrInvalid, "MaxAgentProcesses")
	// Scaling an app down is always possible.
	if _, err := s.SetFormation("app0", map[string]int{"web": 0}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetFormation("last", map[string]int{"web": 1}); err != nil {
		t.Fatal(err)
	}
}

// TestOneLine ensures stored reasons are one line, saying when more
// was left out.
func TestOneLine(t *testing.T) {
	for in, want := range map[string]string{
		"":                                  "",
		"release phase exited 1":            "release phase exited 1",
		"  padded\n":                        "padded",
		"first\nsecond\nthird":              "first (see berth releases info)",
		"crlf\r\nnext":                      "crlf (see berth releases info)",
		strings.Repeat("x", MaxReasonLen+5): strings.Repeat("x", MaxReasonLen) + " (see berth releases info)",
	} {
		if got := OneLine(in); got != want {
			t.Errorf("OneLine(%.40q) = %.60q, want %.60q", in, got, want)
		}
	}
}

// TestStore_MarkFailedMultiLineReason ensures a multi-line reason is
// stored as its first line, the whole of it kept in the output.
func TestStore_MarkFailedMultiLineReason(t *testing.T) {
	s := openTest(t)
	mustApp(t, s, "web")
	r := mustRelease(t, s, "web", NewRelease{Build: testDigest(1)})
	reason := "Procfile: too many types\nline 2\nline 3"
	if err := s.MarkFailed("web", r.Version, reason, "phase output\n"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Release("web", r.Version)
	if err != nil {
		t.Fatal(err)
	}
	if got.Reason != "Procfile: too many types (see berth releases info)" || !strings.Contains(got.Output, reason) || !strings.Contains(got.Output, "phase output") {
		t.Fatalf("reason %q, output %q", got.Reason, got.Output)
	}
}
