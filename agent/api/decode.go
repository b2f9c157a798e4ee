package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// maxJSONBody bounds every JSON request body.
const maxJSONBody = 1 << 20

// CreateAppRequest is the body of POST /v1/apps.
type CreateAppRequest struct {
	Name string `json:"name"`
}

// SetUserRequest is the body of PUT /v1/apps/{app}/user. An empty User
// means the agent's default user.
type SetUserRequest struct {
	User string `json:"user"`
}

// RollbackRequest is the body of POST /v1/apps/{app}/rollback. Version 0
// (or an empty body) means the release before the active one.
type RollbackRequest struct {
	Version int `json:"version"`
}

// limitReader returns an error wrapping ErrTooLarge once more than max
// bytes have been read, so callers can tell an oversize body apart.
type limitReader struct {
	r     io.Reader
	max   int64
	n     int64
	what  string
	tripd bool
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n >= l.max {
		// Probe for one more byte: only an actual excess is an error.
		var one [1]byte
		n, err := l.r.Read(one[:])
		if n > 0 {
			l.tripd = true
			return 0, fmt.Errorf("%w: %s is larger than %d bytes", ErrTooLarge, l.what, l.max)
		}
		return 0, err
	}
	if rest := l.max - l.n; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	return n, err
}

// decodeJSON decodes exactly one JSON value from r into v: unknown
// fields, trailing data and bodies over maxJSONBody are errors wrapping
// ErrInvalid (or ErrTooLarge). An empty body is io.EOF, unwrapped, for
// the callers that accept one.
func decodeJSON(r io.Reader, v any) error {
	dec := json.NewDecoder(&limitReader{r: r, max: maxJSONBody, what: "request body"})
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		switch {
		case errors.Is(err, ErrTooLarge):
			return err
		case err == io.EOF:
			return io.EOF
		case errors.Is(err, io.ErrUnexpectedEOF):
			return fmt.Errorf("%w: request body: truncated JSON", ErrInvalid)
		}
		return fmt.Errorf("%w: request body: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		if errors.Is(err, ErrTooLarge) {
			return err
		}
		return fmt.Errorf("%w: request body: unexpected data after the JSON value", ErrInvalid)
	}
	return nil
}

// decodeFormation decodes a formation (process type -> count) and checks
// that it names at least one type and has no negative count.
func decodeFormation(r io.Reader) (map[string]int, error) {
	var f map[string]int
	if err := decodeJSON(r, &f); err != nil && err != io.EOF {
		return nil, err
	}
	if len(f) == 0 { // an empty body too
		return nil, fmt.Errorf("%w: request body: empty formation, want {\"TYPE\": COUNT}", ErrInvalid)
	}
	for typ, n := range f {
		if n < 0 {
			return nil, fmt.Errorf("%w: formation: negative count %d for %q", ErrInvalid, n, typ)
		}
	}
	return f, nil
}

// decodeConfigChange decodes a ConfigChange and checks that it changes
// something and does not both set and unset one name.
func decodeConfigChange(r io.Reader) (ConfigChange, error) {
	var c ConfigChange
	if err := decodeJSON(r, &c); err != nil {
		if err == io.EOF {
			return c, fmt.Errorf("%w: request body: empty config change", ErrInvalid)
		}
		return c, err
	}
	if len(c.Set) == 0 && len(c.Unset) == 0 {
		return c, fmt.Errorf("%w: config change sets and unsets nothing", ErrInvalid)
	}
	for _, k := range c.Unset {
		if _, ok := c.Set[k]; ok {
			return c, fmt.Errorf("%w: config change both sets and unsets %q", ErrInvalid, k)
		}
	}
	// One form for "nothing": {"set":{}} is no set at all.
	if len(c.Set) == 0 {
		c.Set = nil
	}
	if len(c.Unset) == 0 {
		c.Unset = nil
	}
	return c, nil
}

// decodeRollback decodes a RollbackRequest; an empty body is version 0.
func decodeRollback(r io.Reader) (RollbackRequest, error) {
	var req RollbackRequest
	if err := decodeJSON(r, &req); err != nil && err != io.EOF {
		return req, err
	}
	if req.Version < 0 {
		return req, fmt.Errorf("%w: rollback: bad version %d", ErrInvalid, req.Version)
	}
	return req, nil
}

// decodeCreateApp decodes a CreateAppRequest with a non-empty name.
func decodeCreateApp(r io.Reader) (CreateAppRequest, error) {
	var req CreateAppRequest
	if err := decodeJSON(r, &req); err != nil {
		if err == io.EOF {
			return req, fmt.Errorf("%w: request body: want {\"name\": NAME}", ErrInvalid)
		}
		return req, err
	}
	if req.Name == "" {
		return req, fmt.Errorf("%w: create app: empty name", ErrInvalid)
	}
	return req, nil
}

// decodeSetUser decodes a SetUserRequest.
func decodeSetUser(r io.Reader) (SetUserRequest, error) {
	var req SetUserRequest
	if err := decodeJSON(r, &req); err != nil {
		if err == io.EOF {
			return req, fmt.Errorf("%w: request body: want {\"user\": USER}", ErrInvalid)
		}
		return req, err
	}
	return req, nil
}

// ParseVersion parses a release version as "v3" or "3".
func ParseVersion(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimPrefix(s, "v"))
	if err != nil || n <= 0 || strings.HasPrefix(s, "v+") || strings.HasPrefix(s, "+") {
		return 0, fmt.Errorf("%w: bad release version %q, want vN or N", ErrInvalid, s)
	}
	return n, nil
}

var digestRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// checkDigest accepts "" or a lowercase sha256 hex digest, with or
// without a "sha256:" prefix, and returns the bare digest.
func checkDigest(s string) (string, error) {
	d := strings.TrimPrefix(s, "sha256:")
	if s == "" || digestRE.MatchString(d) {
		return d, nil
	}
	return "", fmt.Errorf("%w: bad digest %q, want 64 lowercase hex digits of sha256", ErrInvalid, s)
}
