package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// startInstance forks and execs the instance's process with its output
// pipes and records it. Called with in.spawnMu held.
func (s *Supervisor) startInstance(in *instance) error {
	sp := &in.spec
	path, argv, env := command(sp)
	outR, outW, err := outputPipe(sp.Name, "stdout")
	if err != nil {
		return err
	}
	errR, errW, err := outputPipe(sp.Name, "stderr")
	if err != nil {
		outR.Close()
		outW.Close()
		return err
	}
	defer outW.Close()
	defer errW.Close()
	cgroup := -1
	var oomBase uint64
	oomWatch := false
	if c := s.cfg.Container; c != nil {
		if cgroup, err = c.Prepare(sp.Name); err != nil {
			outR.Close()
			errR.Close()
			return fmt.Errorf("prepare container: %w", err)
		}
		if oomBase, oomWatch, err = s.applyLimits(sp); err != nil {
			outR.Close()
			errR.Close()
			return err
		}
	}
	var p *proc
	err = s.fork(sp, path, argv, env, outW, errW, cgroup, func(pid int) exitFunc {
		p = &proc{pid: pid, exited: make(chan struct{}), output: make(chan struct{}), oomWatch: oomWatch, oomBase: oomBase}
		in.started(p)
		return func(ws syscall.WaitStatus, at time.Time) { in.exited(p, ws, at) }
	})
	if err != nil {
		outR.Close()
		errR.Close()
		if p != nil {
			close(p.output)
		}
		return err
	}
	if keep := s.cfg.KeepPipes; keep != nil {
		keep(sp.Name, p.pid, outR, errR)
	}
	in.readOutput(p, outR, errR)
	return nil
}

// readOutput starts the readers of p's output pipes; p.output is closed
// once both reached end of file.
func (in *instance) readOutput(p *proc, outR, errR *os.File) {
	in.mu.Lock()
	p.stdout, p.stderr = outR, errR
	in.mu.Unlock()
	var left atomic.Int32
	left.Store(2)
	done := func() {
		if left.Add(-1) == 0 {
			close(p.output)
			in.mu.Lock()
			detached := in.detached
			in.mu.Unlock()
			if drop := in.s.cfg.DropPipes; drop != nil && !detached {
				drop(in.spec.Name, p.pid)
			}
		}
	}
	in.addReader(outR, "stdout", done)
	in.addReader(errR, "stderr", done)
}

// fork starts a process in a new process group, with stdin from
// /dev/null, the given stdout and stderr and sp.ListenFiles from fd 3,
// and registers its pid with the reaper before the reaper can look at
// it. No other fd of this process reaches the child (see fds.go). onStart runs first, with the new pid, and returns the exit handler.
func (s *Supervisor) fork(sp *Spec, path string, argv, env []string, stdout, stderr *os.File, cgroup int, onStart func(pid int) exitFunc) error {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return fmt.Errorf("open %s: %w", os.DevNull, err)
	}
	defer devnull.Close()
	files := make([]uintptr, 0, 3+len(sp.ListenFiles))
	files = append(files, devnull.Fd(), stdout.Fd(), stderr.Fd())
	for _, f := range sp.ListenFiles {
		fd, err := rawFD(f)
		if err != nil {
			return fmt.Errorf("listening socket %s: %w", f.Name(), err)
		}
		files = append(files, fd)
	}
	defer runtime.KeepAlive(sp.ListenFiles)
	sys := &syscall.SysProcAttr{Setpgid: true, Credential: sp.Credential}
	if cgroup >= 0 {
		sys.UseCgroupFD, sys.CgroupFD = true, cgroup
	}
	attr := &syscall.ProcAttr{Dir: sp.Dir, Env: env, Files: files, Sys: sys}
	if err := closeOnExecInherited(); err != nil {
		return err
	}
	s.r.spawnMu.RLock()
	defer s.r.spawnMu.RUnlock()
	pid, err := syscall.ForkExec(path, argv, attr)
	if err != nil {
		return fmt.Errorf("fork/exec %s: %w", path, err)
	}
	s.r.register(pid, onStart(pid))
	return nil
}

// rawFD returns f's descriptor without the side effect of os.File.Fd,
// which puts a pollable file into blocking mode. A listening socket's
// blocking flag belongs to its open file description, which every
// instance holding the socket shares: flipping it under a running Go
// instance leaves that instance's accept4 blocked in the kernel, so its
// graceful stop hangs until the stop timeout (issue 13). The supervisor
// never changes a passed socket's flags.
func rawFD(f *os.File) (uintptr, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var fd uintptr
	if err := rc.Control(func(s uintptr) { fd = s }); err != nil {
		return 0, err
	}
	return fd, nil
}

// outputPipe returns a pipe whose read end is non-blocking and in the
// runtime poller. The pipe is enlarged so a fast writer rarely waits.
func outputPipe(name, stream string) (r, w *os.File, err error) {
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC); err != nil {
		return nil, nil, fmt.Errorf("create %s pipe: %w", stream, err)
	}
	// Best effort: beyond fs.pipe-max-size (1 MiB by default) needs
	// CAP_SYS_RESOURCE, so an agent not run as root gets 1 MiB; the
	// default 64 KiB works too.
	if _, err := unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize); err != nil {
		unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSizeUser)
	}
	if err := syscall.SetNonblock(fds[0], true); err != nil {
		syscall.Close(fds[0])
		syscall.Close(fds[1])
		return nil, nil, fmt.Errorf("create %s pipe: %w", stream, err)
	}
	return os.NewFile(uintptr(fds[0]), name+" "+stream), os.NewFile(uintptr(fds[1]), name+" "+stream+" (write)"), nil
}

// command returns the program, argv and environment for a spec: a
// simple command is exec'd directly (as sh would exec it), anything else
// goes through /bin/sh -c. With ListenFiles the shell sets LISTEN_PID to
// its own pid and execs a simple command, so the pid is the app's; a
// compound command runs as written (its final `exec app` keeps the pid).
func command(sp *Spec) (path string, argv, env []string) {
	env = sp.Env
	if n := len(sp.ListenFiles); n > 0 {
		env = append(append(make([]string, 0, len(env)+1), env...), "LISTEN_FDS="+strconv.Itoa(n))
		script := "LISTEN_PID=$$; export LISTEN_PID; "
		if simpleWords(sp.Command) != nil {
			// The app replaces the shell, so LISTEN_PID is its pid.
			script += "exec "
		}
		// Anything else runs as written: a compound command whose last
		// part is `exec app` gives app the shell's pid (Procfile style).
		return "/bin/sh", []string{"/bin/sh", "-c", script + sp.Command}, env
	}
	if words, assigns := prefixedWords(sp.Command); words != nil {
		withAssigns := assign(env, assigns)
		if p := lookPath(words[0], withAssigns, sp.Dir); p != "" {
			return p, words, withAssigns
		}
	}
	if words := simpleWords(sp.Command); words != nil {
		if p := lookPath(words[0], env, sp.Dir); p != "" {
			return p, words, env
		}
	}
	return "/bin/sh", []string{"/bin/sh", "-c", sp.Command}, env
}

// prefixedWords splits a command of plain words (see simpleWords) that
// sets variables for the program it runs, in either of the two usual
// ways: sh's assignments before the command (`RACK_ENV=production puma
// -p 5000`) or env(1)'s (`env RACK_ENV=production puma -p 5000`, also
// after sh's assignments, or `env puma` alone). It returns the
// program's words and the assignments in order, or nil words when the
// command has no such prefix, or env is given an option or no program
// (those stay env's to run). The program is exec'd directly with the
// variables set, as sh and env would exec it, saving the exec of sh or
// env; a program that is not found is left to them, so their error
// message stays.
func prefixedWords(cmd string) (words, assigns []string) {
	if !plainWords(cmd) {
		return nil, nil
	}
	words = strings.Fields(cmd)
	n := assignments(words)
	assigns = words[:n:n]
	viaEnv := n < len(words) && words[n] == "env"
	if viaEnv {
		k := assignments(words[n+1:])
		assigns = append(assigns, words[n+1:n+1+k]...)
		n += 1 + k
	}
	if n == 0 || n == len(words) {
		return nil, nil
	}
	// sh runs a keyword or builtin itself; env runs a program of that
	// name from PATH, which lookPath finds the same way, but an option
	// to env is env's.
	if (!viaEnv && shellWords[words[n]]) || strings.HasPrefix(words[n], "-") {
		return nil, nil
	}
	return words[n:], assigns
}

// assignments counts the leading words of the form NAME=value, NAME a
// shell variable name.
func assignments(words []string) int {
	for i, w := range words {
		name, _, ok := strings.Cut(w, "=")
		if !ok || !isName(name) {
			return i
		}
	}
	return len(words)
}

// isName reports whether s is a shell variable name: a letter or _,
// then letters, digits and _.
func isName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return s != ""
}

// assign returns env with the NAME=value assignments applied in order,
// each replacing an earlier value of its name in place (as setenv
// does) or appended; env itself is not changed.
func assign(env, assigns []string) []string {
	out := slices.Clone(env)
	for _, a := range assigns {
		name := a[:strings.IndexByte(a, '=')+1]
		i := slices.IndexFunc(out, func(kv string) bool { return strings.HasPrefix(kv, name) })
		if i < 0 {
			out = append(out, a)
			continue
		}
		out[i] = a
		// A name set twice in env (a malformed environment) keeps
		// only the assignment, as setenv leaves one.
		out = append(out[:i+1], slices.DeleteFunc(out[i+1:], func(kv string) bool { return strings.HasPrefix(kv, name) })...)
	}
	return out
}

// shellWords are words sh treats itself (keywords and builtins): a
// command starting with one always goes through sh.
var shellWords = map[string]bool{
	"exec": true, "exit": true, "export": true, "readonly": true, "set": true, "shift": true,
	"trap": true, "unset": true, "eval": true, ".": true, ":": true, "break": true,
	"continue": true, "return": true, "times": true, "cd": true, "alias": true, "bg": true,
	"fg": true, "command": true, "getopts": true, "hash": true, "jobs": true, "kill": true,
	"read": true, "type": true, "ulimit": true, "umask": true, "unalias": true, "wait": true,
	"local": true, "printf": true, "echo": true, "test": true, "true": true, "false": true,
	"pwd": true, "if": true, "then": true, "else": true, "elif": true, "fi": true, "do": true,
	"done": true, "case": true, "esac": true, "while": true, "until": true, "for": true, "in": true,
}

// simpleWords splits a command made only of plain words (letters,
// digits and _ - . / : , + % @ =, separated by blanks) whose first word
// is no assignment and no shell keyword or builtin. It returns nil for
// anything sh would interpret.
func simpleWords(cmd string) []string {
	if !plainWords(cmd) {
		return nil
	}
	words := strings.Fields(cmd)
	if len(words) == 0 || strings.IndexByte(words[0], '=') >= 0 || shellWords[words[0]] {
		return nil
	}
	return words
}

// plainWords reports whether cmd has only letters, digits, blanks and
// _ - . / : , + % @ =, which sh takes as they are.
func plainWords(cmd string) bool {
	for i := 0; i < len(cmd); i++ {
		c := cmd[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("_-./:,+%@= \t", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// lookPath finds name as sh would, in the PATH of env (sh's default
// when unset), relative paths resolved from dir. It returns "" if no
// executable regular file is found, leaving the error message to sh.
func lookPath(name string, env []string, dir string) string {
	executable := func(p string) bool {
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		fi, err := os.Stat(p)
		return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
	}
	if strings.IndexByte(name, '/') >= 0 {
		if executable(name) {
			return name
		}
		return ""
	}
	path, found := "", false
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path, found = v, true
		}
	}
	if !found {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	for _, d := range strings.Split(path, ":") {
		if d == "" {
			d = "."
		}
		if p := d + "/" + name; executable(p) {
			return p
		}
	}
	return ""
}
