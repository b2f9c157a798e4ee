package build

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestParseProcfile covers the Heroku/foreman format and each error, which
// must carry the line number.
func TestParseProcfile(t *testing.T) {
	valid := "# processes\n\nweb: bundle exec puma -p $PORT\r\n  worker:./bin/worker  --queue a:b  \nrelease: ./migrate\nclock-2_X: x\n"
	p, err := ParseProcfile(strings.NewReader(valid))
	if err != nil {
		t.Fatal(err)
	}
	want := []ProcfileEntry{
		{Type: "web", Command: "bundle exec puma -p $PORT", Line: 3},
		{Type: "worker", Command: "./bin/worker  --queue a:b", Line: 4},
		{Type: "release", Command: "./migrate", Line: 5},
		{Type: "clock-2_X", Command: "x", Line: 6},
	}
	if !reflect.DeepEqual(p.Entries, want) {
		t.Fatalf("entries = %+v", p.Entries)
	}
	if cmd, ok := p.Command("worker"); !ok || cmd != "./bin/worker  --queue a:b" {
		t.Errorf("Command(worker) = %q, %v", cmd, ok)
	}
	if _, ok := p.Command("missing"); ok {
		t.Error("Command(missing) found")
	}
	if got := p.Types(); !reflect.DeepEqual(got, []string{"web", "worker", "release", "clock-2_X"}) {
		t.Errorf("Types = %v", got)
	}

	// The limits themselves are accepted.
	atLimit := manyTypes(MaxProcfileTypes) + "last: " + strings.Repeat("x", MaxProcfileLine-6) + "\r\n"
	if _, err := ParseProcfile(strings.NewReader(strings.Replace(atLimit, "t0: sleep 1000\n", "", 1))); err != nil {
		t.Errorf("Procfile at the limits: %v", err)
	}

	for _, tc := range []struct{ name, in, msg string }{
		{"empty", "", "no process types declared"},
		{"only comments", "# web: x\n\n", "no process types declared"},
		{"no colon", "web: x\nworker ./w\n", `line 2: want "type: command"`},
		{"invalid type", "web: x\n\nweb.1: y\n", `line 3: invalid process type "web.1"`},
		{"space in type", "my web: x\n", `line 1: invalid process type "my web"`},
		{"empty type", ": x\n", `line 1: invalid process type ""`},
		{"type too long", strings.Repeat("w", 64) + ": x\n", "line 1: invalid process type"},
		{"empty command", "web:   \n", `line 1: process type "web" has an empty command`},
		{"duplicate", "web: a\n# c\nweb: b\n", `line 3: process type "web" already declared on line 1`},
		{"NUL", "web: a\x00b\n", "line 1: contains a NUL byte"},
		{"bad UTF-8", "web: \xff\n", "line 1: not valid UTF-8"},
		{"MaxProcfileTypes", manyTypes(MaxProcfileTypes + 1), fmt.Sprintf("line %d: more than %d process types (MaxProcfileTypes)", MaxProcfileTypes+1, MaxProcfileTypes)},
		{"MaxProcfileLine", "web: " + strings.Repeat("x", MaxProcfileLine) + "\n", fmt.Sprintf("line 1: longer than %d bytes (MaxProcfileLine)", MaxProcfileLine)},
		{"MaxProcfileLine comment", "web: x\n#" + strings.Repeat("x", MaxProcfileLine) + "\n", "line 2: longer than"},
		{"MaxProcfileLine far over", "web: x\n" + strings.Repeat("x", 3*MaxProcfileLine) + "\n", "line 2: longer than"},
		{"too large", "web: x\n" + strings.Repeat("# comment\n", maxProcfileSize/10+1), "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseProcfile(strings.NewReader(tc.in))
			if !errors.Is(err, ErrProcfile) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error = %v, want ErrProcfile containing %q", err, tc.msg)
			}
		})
	}
}

// TestParseManifest covers a full manifest and each way one is refused.
func TestParseManifest(t *testing.T) {
	m, err := ParseManifest([]byte(`{"processes": {
		"web": {"healthcheck": {"http": "/up", "interval": "2s", "timeout": "1s", "start_period": "30s", "retries": 3},
		        "socket_activation": true, "stop_signal": "SIGTERM", "stop_timeout": "30s", "drain_timeout": "20s",
		        "restart": {"min_run": "1s", "settle": "5s", "backoff_initial": "100ms", "backoff_max": "30s"}},
		"clock": {"restart": {"settle": "1m"}},
		"worker": {"healthcheck": {"exec": "./bin/check"}, "stop_signal": "SIGQUIT"},
		"tcp": {"healthcheck": {"tcp": true}},
		"release": {"stop_timeout": "1m30s"}}}` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Manifest{Processes: map[string]ProcessManifest{
		"web": {Healthcheck: &Healthcheck{HTTP: "/up", Interval: Duration(2 * time.Second), Timeout: Duration(time.Second), StartPeriod: Duration(30 * time.Second), Retries: 3},
			SocketActivation: true, StopSignal: "SIGTERM", StopTimeout: Duration(30 * time.Second), DrainTimeout: Duration(20 * time.Second),
			Restart: &Restart{MinRun: Duration(time.Second), Settle: Duration(5 * time.Second),
				BackoffInitial: Duration(100 * time.Millisecond), BackoffMax: Duration(30 * time.Second)}},
		"clock":   {Restart: &Restart{Settle: Duration(time.Minute)}},
		"worker":  {Healthcheck: &Healthcheck{Exec: "./bin/check"}, StopSignal: "SIGQUIT"},
		"tcp":     {Healthcheck: &Healthcheck{TCP: true}},
		"release": {StopTimeout: Duration(90 * time.Second)},
	}}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("manifest = %+v", m)
	}
	if m, err := ParseManifest([]byte(`{}`)); err != nil || len(m.Processes) != 0 {
		t.Errorf("empty manifest = %+v, %v", m, err)
	}

	for _, tc := range []struct{ name, in, msg string }{
		{"not an object", `[]`, "want a JSON object"},
		{"null", `null`, "want a JSON object"},
		{"empty", ``, "want a JSON object"},
		{"unknown top key", `{"process": {}}`, `unknown field "process"`},
		{"unknown process key", `{"processes": {"web": {"restart_policy": "always"}}}`, `unknown field "restart_policy"`},
		{"unknown restart key", `{"processes": {"web": {"restart": {"delay": "1s"}}}}`, `unknown field "delay"`},
		{"restart not an object", `{"processes": {"web": {"restart": "always"}}}`, "cannot unmarshal string"},
		{"restart bad duration", `{"processes": {"web": {"restart": {"settle": "5"}}}}`, `invalid duration "5"`},
		{"restart numeric duration", `{"processes": {"web": {"restart": {"min_run": 1}}}}`, "duration must be a string"},
		{"restart negative duration", `{"processes": {"web": {"restart": {"backoff_max": "-30s"}}}}`, `negative duration "-30s"`},
		{"restart initial above max", `{"processes": {"web": {"restart": {"backoff_initial": "1m", "backoff_max": "30s"}}}}`,
			`restart backoff_initial 1m0s must not exceed backoff_max 30s`},
		{"restart min_run above settle", `{"processes": {"web": {"restart": {"min_run": "10s", "settle": "5s"}}}}`,
			`restart min_run 10s must not exceed settle 5s`},
		{"restart min_run too short", `{"processes": {"web": {"restart": {"min_run": "1ms"}}}}`, `restart min_run 1ms must be between 100ms and 1h0m0s`},
		{"restart settle too long", `{"processes": {"web": {"restart": {"settle": "2h"}}}}`, `restart settle 2h0m0s must be between 100ms and 1h0m0s`},
		{"restart initial too short", `{"processes": {"web": {"restart": {"backoff_initial": "1ms"}}}}`, `restart backoff_initial 1ms must be between 10ms`},
		{"restart max too short", `{"processes": {"web": {"restart": {"backoff_max": "100ms"}}}}`, `restart backoff_max 100ms must be between 1s`},
		{"release restart", `{"processes": {"release": {"restart": {"settle": "5s"}}}}`, "release phase"},
		{"drain too long", `{"processes": {"web": {"drain_timeout": "2h"}}}`, "drain_timeout 2h0m0s is longer than 1h0m0s"},
		{"drain negative", `{"processes": {"web": {"drain_timeout": "-1s"}}}`, `negative duration "-1s"`},
		{"drain not a duration", `{"processes": {"web": {"drain_timeout": "soon"}}}`, `invalid duration "soon"`},
		{"release drain", `{"processes": {"release": {"drain_timeout": "5s"}}}`, "release phase"},
		{"unknown healthcheck key", `{"processes": {"web": {"healthcheck": {"http": "/", "path": "/"}}}}`, `unknown field "path"`},
		{"trailing data", `{} {}`, "unexpected data after the JSON object"},
		{"trailing garbage", `{}x`, "unexpected data after the JSON object"},
		{"malformed", `{"processes": `, "unexpected EOF"},
		{"invalid type name", `{"processes": {"web 1": {}}}`, `invalid process type "web 1"`},
		{"bad signal", `{"processes": {"web": {"stop_signal": "TERM"}}}`, `stop_signal "TERM" is not one of`},
		{"numeric duration", `{"processes": {"web": {"stop_timeout": 30}}}`, `duration must be a string`},
		{"bad duration", `{"processes": {"web": {"stop_timeout": "30"}}}`, `invalid duration "30"`},
		{"negative duration", `{"processes": {"web": {"healthcheck": {"tcp": true, "interval": "-1s"}}}}`, `negative duration "-1s"`},
		{"two probes", `{"processes": {"web": {"healthcheck": {"tcp": true, "http": "/"}}}}`, "exactly one of http, tcp and exec"},
		{"no probe", `{"processes": {"web": {"healthcheck": {"interval": "1s"}}}}`, "exactly one of http, tcp and exec"},
		{"http not a path", `{"processes": {"web": {"healthcheck": {"http": "up"}}}}`, `healthcheck http "up" must be a path`},
		{"negative retries", `{"processes": {"web": {"healthcheck": {"tcp": true, "retries": -1}}}}`, "retries -1 is negative"},
		{"release healthcheck", `{"processes": {"release": {"healthcheck": {"tcp": true}}}}`, "release phase"},
		{"wrong value type", `{"processes": {"web": {"socket_activation": "yes"}}}`, "cannot unmarshal string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseManifest([]byte(tc.in))
			if !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error = %v, want ErrManifest containing %q", err, tc.msg)
			}
		})
	}
}

// TestManifest_CheckTypes ensures a manifest may only name Procfile types.
func TestManifest_CheckTypes(t *testing.T) {
	p, err := ParseProcfile(strings.NewReader("web: a\nworker: b\n"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseManifest([]byte(`{"processes": {"web": {}, "clock": {}}}`))
	if err != nil {
		t.Fatal(err)
	}
	err = m.checkTypes(p)
	if !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), `"clock" is not declared in the Procfile (declared: web, worker)`) {
		t.Fatalf("checkTypes = %v", err)
	}
}

// TestValidateDigest accepts only 64 lowercase hex characters.
func TestValidateDigest(t *testing.T) {
	if err := ValidateDigest(strings.Repeat("0a", 32)); err != nil {
		t.Error(err)
	}
	for _, d := range []string{"", strings.Repeat("0A", 32), strings.Repeat("0a", 31), strings.Repeat("0a", 32) + "0", strings.Repeat("zz", 32), "../" + strings.Repeat("a", 61)} {
		if err := ValidateDigest(d); !errors.Is(err, ErrInvalidDigest) {
			t.Errorf("ValidateDigest(%q) = %v", d, err)
		}
	}
}
