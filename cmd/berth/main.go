package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(realMain())
}

// realMain turns SIGINT and SIGTERM into a context cancel, runs the
// command line, and returns the exit code: 0 ok, 1 failure, 2 usage.
// SIGHUP is left alone here: only `berth agent` subscribes to it (as a
// reload), so every other command, `logs -f` and `events -f` included,
// ends with the terminal that ran it.
func realMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := &cliEnv{
		stdin:  os.Stdin,
		stdout: os.Stdout,
		stderr: os.Stderr,
		getenv: os.Getenv,
		now:    time.Now,
		isTTY: func(w io.Writer) bool {
			f, ok := w.(*os.File)
			if !ok {
				return false
			}
			_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
			return err == nil
		},
		notifyHangup: func() (<-chan os.Signal, func()) {
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			return hup, func() { signal.Stop(hup) }
		},
		notifyUpgrade: func() (<-chan os.Signal, func()) {
			usr2 := make(chan os.Signal, 1)
			signal.Notify(usr2, syscall.SIGUSR2)
			return usr2, func() { signal.Stop(usr2) }
		},
	}
	return run(ctx, env, os.Args[1:])
}

// cliEnv is what a command sees of the world; tests replace it.
type cliEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
	isTTY          func(io.Writer) bool
	// notifyHangup subscribes to SIGHUP and returns its channel and a
	// function that ends the subscription. Only `berth agent` calls it:
	// every other command keeps SIGHUP's default action. nil means no
	// SIGHUP reaches the agent (tests).
	notifyHangup func() (<-chan os.Signal, func())
	// notifyUpgrade subscribes to SIGUSR2 (an upgrade in place), for
	// `berth agent` only, like notifyHangup.
	notifyUpgrade func() (<-chan os.Signal, func())
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError is a bad command line: exit code 2.
type usageError struct {
	cmd string // the command path, for the "see --help" hint
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef returns a usage error for the command path cmd.
func usagef(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, err: fmt.Errorf(format, args...)}
}

// run runs the command line args and returns the exit code.
func run(ctx context.Context, env *cliEnv, args []string) int {
	root := newRootCmd(env)
	root.SetArgs(args)
	root.SetIn(env.stdin)
	root.SetOut(env.stdout)
	root.SetErr(env.stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var es *exitStatus
	if errors.As(err, &es) {
		return es.code
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(env.stderr, "berth: %v\n", ue.err)
		if ue.cmd != "" {
			fmt.Fprintf(env.stderr, "Run '%s --help' for usage.\n", ue.cmd)
		}
		return exitUsage
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		fmt.Fprintln(env.stderr, "berth: interrupted")
		return exitFailure
	}
	fmt.Fprintf(env.stderr, "berth: %v\n", err)
	return exitFailure
}
