package build

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Limits on a Procfile, refused at import with an error naming the limit
// (the README's "Limits" section lists them).
const (
	// MaxProcfileTypes is the most process types a Procfile may declare,
	// the release phase included: each type runs at least one process.
	// It is as high as a supervisor of 1,000 programs needs (one type
	// each, as the peer harness runs them); 10,000 types are refused.
	MaxProcfileTypes = 1000
	// MaxProcfileLine is the longest Procfile line, in bytes.
	MaxProcfileLine = 4096
)

// maxProcfileSize bounds how much of a Procfile is read; real ones are a few
// hundred bytes.
const maxProcfileSize = 1 << 20

// maxTypeLen bounds a process type name, which ends up in instance names,
// log file names and unit names.
const maxTypeLen = 63

// ProcfileEntry is one `type: command` line of a Procfile.
type ProcfileEntry struct {
	// Type is the process type, e.g. "web" or "release".
	Type string
	// Command is the shell command line, with surrounding blanks trimmed.
	Command string
	// Line is the 1-based line number in the Procfile.
	Line int
}

// Procfile is a parsed Procfile: its entries in file order.
type Procfile struct {
	Entries []ProcfileEntry
}

// Command returns the command of the process type t and whether the
// Procfile declares it.
func (p Procfile) Command(t string) (string, bool) {
	for _, e := range p.Entries {
		if e.Type == t {
			return e.Command, true
		}
	}
	return "", false
}

// Types returns the declared process types in file order.
func (p Procfile) Types() []string {
	types := make([]string, len(p.Entries))
	for i, e := range p.Entries {
		types[i] = e.Type
	}
	return types
}

// ValidProcessType reports whether t is a valid process type name: 1 to 63
// characters of [A-Za-z0-9_-], as Heroku and foreman accept.
func ValidProcessType(t string) bool {
	if len(t) == 0 || len(t) > maxTypeLen {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ParseProcfile parses a Procfile in the Heroku/foreman format: one
// `type: command` per line, blank lines and lines starting with '#' ignored,
// CRLF line ends accepted. Invalid lines, invalid or duplicate type names,
// empty commands, lines over MaxProcfileLine and types beyond
// MaxProcfileTypes are errors wrapping ErrProcfile that carry the line
// number.
// A Procfile with no process at all is an error too.
func ParseProcfile(r io.Reader) (Procfile, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxProcfileSize+1))
	if err != nil {
		return Procfile{}, fmt.Errorf("read Procfile: %w", err)
	}
	if len(data) > maxProcfileSize {
		return Procfile{}, fmt.Errorf("%w: larger than %d bytes", ErrProcfile, maxProcfileSize)
	}
	var p Procfile
	seen := make(map[string]int)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), MaxProcfileLine+2) // the line end, CR included
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSuffix(sc.Text(), "\r")
		if len(text) > MaxProcfileLine {
			return Procfile{}, fmt.Errorf("%w: line %d: longer than %d bytes (MaxProcfileLine)", ErrProcfile, line, MaxProcfileLine)
		}
		trimmed := strings.TrimSpace(text)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if !utf8.ValidString(text) {
			return Procfile{}, fmt.Errorf("%w: line %d: not valid UTF-8", ErrProcfile, line)
		}
		if strings.IndexByte(text, 0) >= 0 {
			return Procfile{}, fmt.Errorf("%w: line %d: contains a NUL byte", ErrProcfile, line)
		}
		typ, cmd, ok := strings.Cut(trimmed, ":")
		if !ok {
			return Procfile{}, fmt.Errorf("%w: line %d: want \"type: command\", got %q", ErrProcfile, line, trimmed)
		}
		if !ValidProcessType(typ) {
			return Procfile{}, fmt.Errorf("%w: line %d: invalid process type %q (want 1-%d characters of A-Z a-z 0-9 _ -)", ErrProcfile, line, typ, maxTypeLen)
		}
		cmd = strings.TrimSpace(cmd)
		if cmd == "" {
			return Procfile{}, fmt.Errorf("%w: line %d: process type %q has an empty command", ErrProcfile, line, typ)
		}
		if prev, dup := seen[typ]; dup {
			return Procfile{}, fmt.Errorf("%w: line %d: process type %q already declared on line %d", ErrProcfile, line, typ, prev)
		}
		if len(p.Entries) == MaxProcfileTypes {
			return Procfile{}, fmt.Errorf("%w: line %d: more than %d process types (MaxProcfileTypes)", ErrProcfile, line, MaxProcfileTypes)
		}
		seen[typ] = line
		p.Entries = append(p.Entries, ProcfileEntry{Type: typ, Command: cmd, Line: line})
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return Procfile{}, fmt.Errorf("%w: line %d: longer than %d bytes (MaxProcfileLine)", ErrProcfile, line+1, MaxProcfileLine)
		}
		return Procfile{}, fmt.Errorf("read Procfile: %w", err)
	}
	if len(p.Entries) == 0 {
		return Procfile{}, fmt.Errorf("%w: no process types declared (add a line such as \"web: ./server\")", ErrProcfile)
	}
	return p, nil
}
