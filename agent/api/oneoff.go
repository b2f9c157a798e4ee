package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// One-off commands and metrics over the socket:
//
//	POST /v1/apps/{app}/run   {"command": ["rake", "db:migrate"]}
//	                          -> NDJSON RunMessage lines: started, output
//	                          chunks as they come, then exit (or error)
//	GET  /metrics             the Prometheus text format
//
// Both are served when the Backend also implements OneOffBackend and
// MetricsBackend (the agent does); the peer checks of every other
// endpoint apply.

// MaxRunArgs bounds the words of a one-off command; MaxRunBytes their
// total size.
const (
	MaxRunArgs  = 4096
	MaxRunBytes = 128 << 10
)

// RunRequest asks for a one-off command in the app's active release
// (`berth run`). Command is the argv, run as it is: no shell unless it
// names one (["sh", "-c", "echo $FOO"]). Stdin is /dev/null.
type RunRequest struct {
	Command []string `json:"command"`
}

// RunStarted is the first message of a one-off command's stream.
type RunStarted struct {
	Instance string `json:"instance"` // run.1, as ps lists it while it runs
	PID      int    `json:"pid"`
	Release  int    `json:"release"`
}

// RunExit is how a one-off command ended.
type RunExit struct {
	Code   int    `json:"code"`             // exit code, -1 when killed by a signal
	Signal int    `json:"signal,omitempty"` // the signal that killed it
	Status string `json:"status"`           // "exit 3", "signal SIGKILL"
}

// ExitCode is the exit as a shell reports it: the code, or 128 plus the
// signal.
func (e RunExit) ExitCode() int {
	if e.Signal != 0 {
		return 128 + e.Signal
	}
	return e.Code
}

// RunMessage is one line of a one-off command's stream: Started first,
// then Stream and Data (a chunk of output, base64 in JSON) as it comes,
// and last Exit, or Error when the command could not run to its end.
type RunMessage struct {
	Started *RunStarted `json:"started,omitempty"`
	Stream  string      `json:"stream,omitempty"` // stdout or stderr
	Data    []byte      `json:"data,omitempty"`
	Exit    *RunExit    `json:"exit,omitempty"`
	Error   *ErrorBody  `json:"error,omitempty"`
}

// OneOffBackend runs one-off commands.
type OneOffBackend interface {
	// OneOff runs req's command in the app's active release (its build
	// dir, environment and user), calls started once it runs, writes
	// its output to stdout and stderr as it comes, and returns its exit
	// once it ended. It stops the command when ctx ends.
	OneOff(ctx context.Context, app string, req RunRequest, started func(RunStarted), stdout, stderr io.Writer) (RunExit, error)
}

// MetricsBackend writes the agent's metrics.
type MetricsBackend interface {
	WriteMetrics(ctx context.Context, w io.Writer) error
}

// MetricsContentType is the Content-Type of GET /metrics.
const MetricsContentType = "text/plain; version=0.0.4; charset=utf-8"

func decodeRun(r io.Reader) (RunRequest, error) {
	var req RunRequest
	if err := decodeJSON(r, &req); err != nil {
		if err == io.EOF {
			return req, fmt.Errorf("%w: run: no command given", ErrInvalid)
		}
		return req, err
	}
	return req, CheckRunCommand(req.Command)
}

// CheckRunCommand refuses an empty command, an empty program name, NUL
// bytes and commands over MaxRunArgs words or MaxRunBytes.
func CheckRunCommand(argv []string) error {
	if len(argv) == 0 {
		return fmt.Errorf("%w: run: no command given", ErrInvalid)
	}
	if strings.TrimSpace(argv[0]) == "" {
		return fmt.Errorf("%w: run: the program name is empty", ErrInvalid)
	}
	if len(argv) > MaxRunArgs {
		return fmt.Errorf("%w: run: %d words, more than %d", ErrTooLarge, len(argv), MaxRunArgs)
	}
	size := 0
	for i, a := range argv {
		size += len(a) + 1
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("%w: run: word %d holds a NUL byte", ErrInvalid, i)
		}
	}
	if size > MaxRunBytes {
		return fmt.Errorf("%w: run: the command is %d bytes, more than %d", ErrTooLarge, size, MaxRunBytes)
	}
	return nil
}

func (s *Server) handleRun(w http.ResponseWriter, r *http.Request) {
	b, ok := s.cfg.Backend.(OneOffBackend)
	if !ok {
		s.writeError(w, r, fmt.Errorf("%w: this agent runs no one-off commands", ErrNotFound))
		return
	}
	req, err := decodeRun(r.Body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st := s.newStream(w)
	defer st.close()
	out := func(stream string) io.Writer {
		return writerFunc(func(p []byte) (int, error) {
			if err := st.send(RunMessage{Stream: stream, Data: p}); err != nil {
				return 0, err
			}
			return len(p), nil
		})
	}
	// The command ends with the request: a client that goes away
	// (Ctrl-C) stops it.
	exit, err := b.OneOff(r.Context(), r.PathValue("app"), req,
		func(rs RunStarted) { st.send(RunMessage{Started: &rs}) }, //nolint:errcheck // a client gone ends ctx
		out("stdout"), out("stderr"))
	if err != nil {
		if !st.started() {
			s.writeError(w, r, err)
			return
		}
		body, _ := s.failure(r, err)
		st.send(RunMessage{Error: &body}) //nolint:errcheck // last message
		return
	}
	st.send(RunMessage{Exit: &exit}) //nolint:errcheck // last message
}

func (s *Server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	b, ok := s.cfg.Backend.(MetricsBackend)
	if !ok {
		s.writeError(w, r, fmt.Errorf("%w: this agent serves no metrics", ErrNotFound))
		return
	}
	var buf bytes.Buffer
	if err := b.WriteMetrics(r.Context(), &buf); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", MetricsContentType)
	w.Write(buf.Bytes()) //nolint:errcheck // the scraper went away
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// Run runs a one-off command in the app's active release: started (if
// not nil) gets the instance it runs as, its output is copied to stdout
// and stderr as it comes, and its exit is returned. Ending ctx (Ctrl-C)
// closes the connection, which stops the command.
func (c *Client) Run(ctx context.Context, app string, argv []string, started func(RunStarted), stdout, stderr io.Writer) (RunExit, error) {
	body, err := json.Marshal(RunRequest{Command: argv})
	if err != nil {
		return RunExit{}, fmt.Errorf("run: encode: %w", err)
	}
	resp, err := c.doClose(ctx, "POST", appPath(app, "run"), nil, bytes.NewReader(body), "application/json", true)
	if err != nil {
		return RunExit{}, err
	}
	var exit *RunExit
	err = readStream(resp, func(m RunMessage) error {
		switch {
		case m.Started != nil:
			if started != nil {
				started(*m.Started)
			}
		case m.Exit != nil:
			exit = m.Exit
		case m.Stream == "stdout" && stdout != nil:
			_, err := stdout.Write(m.Data)
			return err
		case m.Stream == "stderr" && stderr != nil:
			_, err := stderr.Write(m.Data)
			return err
		}
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			return RunExit{}, ctx.Err()
		}
		return RunExit{}, err
	}
	if exit == nil {
		return RunExit{}, fmt.Errorf("run: the agent ended the stream without an exit status")
	}
	return *exit, nil
}

// Metrics returns the agent's metrics in the Prometheus text format.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	resp, err := c.do(ctx, "GET", "/metrics", nil, nil, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}
