package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"
)

// maxJSONBody bounds every JSON request body.
const maxJSONBody = 1 << 20

// MaxConfigKeyLen is the longest config key (env var name) a request may
// carry, in bytes: state.MaxConfigKeyLen, which this package may not
// import (agent's TestLimitsAgree keeps the two equal). The decoder
// refuses a longer key before it reaches the agent.
const MaxConfigKeyLen = 256

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
// fields, field names that match only when case is ignored, duplicate
// keys (at any depth), trailing data and bodies over maxJSONBody are
// errors wrapping ErrInvalid (or ErrTooLarge). An empty body is io.EOF,
// unwrapped, for the callers that accept one.
func decodeJSON(r io.Reader, v any) error {
	data, err := io.ReadAll(&limitReader{r: r, max: maxJSONBody, what: "request body"})
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			return err
		}
		return fmt.Errorf("%w: request body: %v", ErrInvalid, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		switch {
		case err == io.EOF:
			return io.EOF
		case errors.Is(err, io.ErrUnexpectedEOF):
			return fmt.Errorf("%w: request body: truncated JSON", ErrInvalid)
		}
		return fmt.Errorf("%w: request body: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: request body: unexpected data after the JSON value", ErrInvalid)
	}
	// encoding/json matches field names case-insensitively and keeps
	// the last of duplicate keys: a second pass over the (valid) value
	// refuses both.
	strict := json.NewDecoder(bytes.NewReader(data))
	strict.UseNumber()
	if err := checkStrict(strict, reflect.TypeOf(v), "request body"); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// checkStrict reads one JSON value from dec, which the caller knows to be
// valid, and refuses a duplicate key in any object and, where t is a
// struct, a key that is not exactly one of its JSON field names. at names
// the value in errors ("request body", "request body.set").
func checkStrict(dec *json.Decoder, t reflect.Type, at string) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%s: %v", at, err)
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return fmt.Errorf("%s: %v", at, err)
			}
			key := kt.(string)
			if seen[key] {
				return fmt.Errorf("%s: duplicate key %q", at, abbrev(key))
			}
			seen[key] = true
			var elem reflect.Type
			switch {
			case t == nil:
			case t.Kind() == reflect.Struct:
				f, ok := structField(t, key)
				if !ok {
					return fmt.Errorf("%s: unknown field %q (field names are case-sensitive)", at, abbrev(key))
				}
				elem = f
			case t.Kind() == reflect.Map:
				elem = t.Elem()
			}
			if err := checkStrict(dec, elem, at+"."+abbrev(key)); err != nil {
				return err
			}
		}
		_, err = dec.Token() // '}'
	case json.Delim('['):
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; dec.More(); i++ {
			if err := checkStrict(dec, elem, at+"["+strconv.Itoa(i)+"]"); err != nil {
				return err
			}
		}
		_, err = dec.Token() // ']'
	}
	if err != nil {
		return fmt.Errorf("%s: %v", at, err)
	}
	return nil
}

// structField returns the type of t's field whose JSON name is exactly
// name.
func structField(t reflect.Type, name string) (reflect.Type, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" {
			continue
		}
		if tag == "" {
			tag = f.Name
		}
		if tag == name {
			return f.Type, true
		}
	}
	return nil, false
}

// abbrev shortens a key quoted in an error to its first 64 bytes.
func abbrev(s string) string {
	if len(s) <= 64 {
		return s
	}
	return s[:64] + "..."
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
	for k := range c.Set {
		if len(k) > MaxConfigKeyLen {
			return c, fmt.Errorf("%w: config key %q is %d bytes, longer than %d (MaxConfigKeyLen)", ErrInvalid, abbrev(k), len(k), MaxConfigKeyLen)
		}
	}
	for _, k := range c.Unset {
		if len(k) > MaxConfigKeyLen {
			return c, fmt.Errorf("%w: config key %q is %d bytes, longer than %d (MaxConfigKeyLen)", ErrInvalid, abbrev(k), len(k), MaxConfigKeyLen)
		}
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
