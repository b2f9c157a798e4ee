package supervisor

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Ensures which commands are exec'd directly and with what environment:
// plain words, with sh's or env's assignments before the program, run
// the program itself; anything sh or env would treat differently (shell
// syntax, builtins, env's options, a program not found) is left to them.
func TestCommand(t *testing.T) {
	base := []string{"PATH=/usr/bin:/bin", "FOO=old", "HOME=/root"}
	sh := func(cmd string) []string { return []string{"/bin/sh", "-c", cmd} }
	tests := []struct {
		cmd      string
		path     string
		argv     []string
		addedEnv []string // what the program's env has beyond base, in order
		env      []string // the whole env, when an assignment replaces one of base
	}{
		{cmd: "ls -x", path: "/usr/bin/ls", argv: []string{"ls", "-x"}},
		{cmd: "A=1 B=x=y ls arg", path: "/usr/bin/ls", argv: []string{"ls", "arg"}, addedEnv: []string{"A=1", "B=x=y"}},
		{cmd: "env A=1 /bin/true", path: "/bin/true", argv: []string{"/bin/true"}, addedEnv: []string{"A=1"}},
		{cmd: "env true", path: "/usr/bin/true", argv: []string{"true"}},
		{cmd: "A=0 env A=1 B= true", path: "/usr/bin/true", argv: []string{"true"}, addedEnv: []string{"A=1", "B="}},
		{cmd: "FOO=new ls", path: "/usr/bin/ls", argv: []string{"ls"},
			env: []string{"PATH=/usr/bin:/bin", "FOO=new", "HOME=/root"}},
		// env runs a program of a builtin's name from PATH; sh runs its builtin.
		{cmd: "env echo hi", path: "/usr/bin/echo", argv: []string{"echo", "hi"}},
		{cmd: "A=1 echo hi", path: "/bin/sh", argv: sh("A=1 echo hi")},
		// The program is looked up in the PATH the assignment sets, as sh
		// and env do: not found there, sh runs it and says so.
		{cmd: "PATH=/nonexistent ls", path: "/bin/sh", argv: sh("PATH=/nonexistent ls")},
		{cmd: "PATH=/usr/sbin:/usr/bin env true", path: "/usr/bin/true", argv: []string{"true"},
			env: []string{"PATH=/usr/sbin:/usr/bin", "FOO=old", "HOME=/root"}},
		{cmd: "A=1 no-such-program", path: "/bin/sh", argv: sh("A=1 no-such-program")},
		{cmd: "env A=1 no-such-program", path: "/usr/bin/env", argv: []string{"env", "A=1", "no-such-program"}},
		// env's options, env alone, env with no program: env's to run.
		{cmd: "env -i A=1 true", path: "/usr/bin/env", argv: []string{"env", "-i", "A=1", "true"}},
		{cmd: "env A=1 -u FOO true", path: "/usr/bin/env", argv: []string{"env", "A=1", "-u", "FOO", "true"}},
		{cmd: "env", path: "/usr/bin/env", argv: []string{"env"}},
		{cmd: "env A=1", path: "/usr/bin/env", argv: []string{"env", "A=1"}},
		{cmd: "A=1", path: "/bin/sh", argv: sh("A=1")},
		// Not an assignment, or not plain words: sh's.
		{cmd: "1A=b true", path: "/bin/sh", argv: sh("1A=b true")},
		{cmd: "A-B=1 true", path: "/bin/sh", argv: sh("A-B=1 true")},
		{cmd: "=1 true", path: "/bin/sh", argv: sh("=1 true")},
		{cmd: "A=$HOME true", path: "/bin/sh", argv: sh("A=$HOME true")},
		{cmd: "A='x y' true", path: "/bin/sh", argv: sh("A='x y' true")},
		{cmd: "A=1 true; true", path: "/bin/sh", argv: sh("A=1 true; true")},
		{cmd: "A=1 exec true", path: "/bin/sh", argv: sh("A=1 exec true")},
	}
	for _, tt := range tests {
		t.Run(tt.cmd, func(t *testing.T) {
			env := slices.Clone(base)
			path, argv, got := command(&Spec{Command: tt.cmd, Env: env})
			if path != tt.path || !slices.Equal(argv, tt.argv) {
				t.Errorf("runs %s %q, want %s %q", path, argv, tt.path, tt.argv)
			}
			want := tt.env
			if want == nil {
				want = append(slices.Clone(base), tt.addedEnv...)
			}
			if !slices.Equal(got, want) {
				t.Errorf("env = %q, want %q", got, want)
			}
			if !slices.Equal(env, base) {
				t.Errorf("the spec's env was changed to %q", env)
			}
		})
	}
}

// Ensures an app's variables set with env or sh's assignments reach the
// program, exactly and once each, without env itself being run: a
// stand-in env first in PATH leaves a mark when it runs, and runs only
// for what env has to do itself (an option).
func TestSupervisor_EnvPrefixRunsProgramDirectly(t *testing.T) {
	dir := t.TempDir()
	mark := filepath.Join(dir, "env-ran")
	script := "#!/bin/sh\necho \"$@\" >> " + mark + "\nexec /usr/bin/env \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "env"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	s := startSup(t, Config{})
	path := "PATH=" + dir + ":/usr/bin:/bin"
	env := helperEnv(path, "FOO=old")
	marked := 0
	for i, tt := range []struct {
		prefix  string
		want    []string // the program's environment
		envRuns bool
	}{
		{"env FOO=new BAR=1", helperEnv(path, "FOO=new", "BAR=1"), false},
		{"FOO=new env BAR=1", helperEnv(path, "FOO=new", "BAR=1"), false},
		{"BAR=1", helperEnv(path, "FOO=old", "BAR=1"), false},
		{"env -u FOO BAR=1", helperEnv(path, "BAR=1"), true},
	} {
		name := "prefix" + string(rune('a'+i))
		if err := s.Start(Spec{Name: name, Command: tt.prefix + " " + helperCmd("env"), Env: env}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "env printed", func() bool { return len(tailTexts(s, name)) >= len(tt.want) })
		time.Sleep(50 * time.Millisecond) // nothing more may come
		got := tailTexts(s, name)
		if tt.envRuns { // env(1) appends what it sets; the stand-in sh adds PWD
			got = slices.DeleteFunc(got, func(kv string) bool { return strings.HasPrefix(kv, "PWD=") })
			slices.Sort(got)
			tt.want = slices.Sorted(slices.Values(tt.want))
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: env = %q, want %q", tt.prefix, got, tt.want)
		}
		ran, _ := os.ReadFile(mark)
		if runs := len(ran) > marked; runs != tt.envRuns {
			t.Errorf("%s: env ran: %v, want %v (its runs: %q)", tt.prefix, runs, tt.envRuns, ran)
		}
		marked = len(ran)
		if _, err := s.Stop(context.Background(), name); err != nil {
			t.Fatal(err)
		}
	}
}
