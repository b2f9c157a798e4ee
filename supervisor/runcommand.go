package supervisor

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// RunCommand runs a one-off command (a release phase, a health check)
// to completion through the supervisor's reaper, as other code in this
// process must: see the package documentation. The spec is used like
// Start's (command, env, dir, credential, stop signal and timeout; the
// name only labels it; Backoff and Log are ignored). stdout and stderr
// are captured together; the last Config.OutputLimit bytes are
// returned, after a line "[... N bytes of output dropped ...]" when the
// command wrote more, so a cut is never silent. When the command exits, anything left in its process group
// is killed. If ctx ends (or Run is shutting down) first, the group is
// stopped like an instance and ctx's error (or ErrClosed) is returned
// with the exit. A non-zero exit is not an error: look at Exit.
func (s *Supervisor) RunCommand(ctx context.Context, spec Spec) (Exit, []byte, error) {
	sp, err := spec.withDefaults()
	if err != nil {
		return Exit{}, nil, err
	}
	if !s.enter() {
		return Exit{}, nil, ErrClosed
	}
	defer s.wg.Done()
	path, argv, env := command(&sp)
	r, w, err := outputPipe(sp.Name, "output")
	if err != nil {
		return Exit{}, nil, fmt.Errorf("run %s: %w", sp.Name, err)
	}
	cgroup, cleanup, err := s.onceContainer(sp.Name)
	if err != nil {
		r.Close()
		w.Close()
		return Exit{}, nil, err
	}
	defer cleanup()
	p := &proc{exited: make(chan struct{})}
	err = s.fork(&sp, path, argv, env, w, w, cgroup, func(pid int) exitFunc {
		p.pid = pid
		return func(ws syscall.WaitStatus, at time.Time) {
			p.exit = exitOf(ws, at)
			close(p.exited)
		}
	})
	w.Close()
	if err != nil {
		r.Close()
		return Exit{}, nil, fmt.Errorf("run %s: %w", sp.Name, err)
	}
	out := &capture{limit: s.cfg.OutputLimit}
	done := make(chan struct{})
	go func() { // owned: waited for below
		defer close(done)
		out.readFrom(r)
	}()

	// The stop signal to the group if the command is cut short, else
	// SIGKILL to what it left.
	runErr := s.awaitCommand(ctx, &sp, p, done, func() { r.Close() })
	return p.exit, out.bytes(), runErr
}

// capture keeps the last limit bytes read, and counts the bytes before
// them.
type capture struct {
	limit   int
	buf     []byte
	dropped int64
}

func (c *capture) readFrom(f interface{ Read([]byte) (int, error) }) {
	chunk := make([]byte, 32<<10)
	for {
		n, err := f.Read(chunk)
		c.buf = append(c.buf, chunk[:n]...)
		if over := len(c.buf) - c.limit; over > 0 {
			c.buf = append(c.buf[:0], c.buf[over:]...)
			c.dropped += int64(over)
		}
		if err != nil {
			return
		}
	}
}

// bytes returns what was kept, after a notice of what was dropped.
func (c *capture) bytes() []byte {
	if c.dropped == 0 {
		return c.buf
	}
	return append(fmt.Appendf(nil, "[... %d bytes of output dropped ...]\n", c.dropped), c.buf...)
}

// onceContainer prepares the container of a command that runs once (the
// release phase, a one-off): the cgroup fd to start it in (-1 without a
// Container) and the cleanup that kills what is left in the container
// and removes it.
func (s *Supervisor) onceContainer(name string) (int, func(), error) {
	c := s.cfg.Container
	if c == nil {
		return -1, func() {}, nil
	}
	cgroup, err := c.Prepare(name)
	if err != nil {
		return -1, nil, fmt.Errorf("run %s: prepare container: %w", name, err)
	}
	return cgroup, func() {
		if err := errors.Join(c.Kill(name), c.Remove(name)); err != nil {
			s.log.Warn("clean up container", "command", name, "error", err)
		}
	}, nil
}
