package systemd

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSendJournal_Fields sends through SendJournal to a journald stand-in:
// a child in a private mount namespace with a tmpfs on /run listens on
// /run/systemd/journal/socket (the path journald uses) and decodes the
// native protocol. The entry must carry the message (a multi-line one
// too), the BERTH_* fields, BERTH_STREAM and SYSLOG_IDENTIFIER.
func TestSendJournal_Fields(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a private mount namespace; `make e2e-systemd` sends to a real journald")
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = helperEnviron("journal")
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	var entries []map[string]string
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	want := []map[string]string{
		{"MESSAGE": "listening on :5000", "PRIORITY": "6", "BERTH_APP": "hello", "BERTH_PROCESS": "web.1",
			"BERTH_RELEASE": "v3", "BERTH_STREAM": "stdout", "SYSLOG_IDENTIFIER": "hello"},
		{"MESSAGE": "panic: boom\ngoroutine 1", "PRIORITY": "6", "BERTH_APP": "hello", "BERTH_PROCESS": "web.1",
			"BERTH_RELEASE": "v3", "BERTH_STREAM": "stderr", "SYSLOG_IDENTIFIER": "hello"},
	}
	if len(entries) != len(want) {
		t.Fatalf("got %d entries: %v", len(entries), entries)
	}
	for i := range want {
		if fmt.Sprint(entries[i]) != fmt.Sprint(want[i]) {
			t.Errorf("entry %d:\n got %v\nwant %v", i, entries[i], want[i])
		}
	}
}

func helperJournal() error {
	if err := unix.Mount("tmpfs", "/run", "tmpfs", 0, "size=1m"); err != nil {
		return fmt.Errorf("mount tmpfs on /run: %w", err)
	}
	if err := os.MkdirAll("/run/systemd/journal", 0o755); err != nil {
		return err
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: "/run/systemd/journal/socket", Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	fields := map[string]string{"BERTH_APP": "hello", "BERTH_PROCESS": "web.1", "BERTH_RELEASE": "v3"}
	if err := SendJournal("listening on :5000", false, fields); err != nil {
		return err
	}
	if err := SendJournal("panic: boom\ngoroutine 1", true, fields); err != nil {
		return err
	}
	var entries []map[string]string
	buf := make([]byte, 64<<10)
	for range 2 {
		n, err := conn.Read(buf)
		if err != nil {
			return err
		}
		e, err := decodeJournal(buf[:n])
		if err != nil {
			return err
		}
		entries = append(entries, e)
	}
	return json.NewEncoder(os.Stdout).Encode(entries)
}

// decodeJournal decodes journald's native protocol: KEY=value lines, or
// KEY, a little-endian 64-bit length and the raw value for values with
// line breaks.
func decodeJournal(b []byte) (map[string]string, error) {
	e := map[string]string{}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil, errors.New("unterminated field")
		}
		line := string(b[:i])
		b = b[i+1:]
		if k, v, ok := strings.Cut(line, "="); ok {
			e[k] = v
			continue
		}
		if len(b) < 8 {
			return nil, errors.New("short binary field")
		}
		n := binary.LittleEndian.Uint64(b)
		if uint64(len(b)) < 8+n+1 {
			return nil, errors.New("short binary value")
		}
		e[line] = string(b[8 : 8+n])
		b = b[8+n+1:]
	}
	return e, nil
}

// TestSendJournal_BadField ensures a field name journald would reject is
// an error naming it.
func TestSendJournal_BadField(t *testing.T) {
	for _, k := range []string{"berth_app", "_PID", "BERTH-APP", ""} {
		err := SendJournal("x", false, map[string]string{k: "v"})
		if !errors.Is(err, ErrInvalidField) || !strings.Contains(err.Error(), fmt.Sprintf("%q", k)) {
			t.Errorf("field %q: err = %v, want ErrInvalidField naming it", k, err)
		}
	}
}

// TestUnderJournal ensures JOURNAL_STREAM is believed only when it names
// the device and inode of the process's own stderr.
func TestUnderJournal(t *testing.T) {
	f, err := os.Create(t.TempDir() + "/stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	for stream, want := range map[string]string{
		fmt.Sprintf("%d:%d", st.Dev, st.Ino):   "true",
		fmt.Sprintf("%d:%d", st.Dev, st.Ino+1): "false",
		"":                                     "false",
	} {
		cmd := exec.Command(os.Args[0])
		cmd.Env = helperEnviron("underjournal", "JOURNAL_STREAM="+stream)
		cmd.Stderr = f
		out, err := cmd.Output()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("JOURNAL_STREAM=%q: %q, %v; want %s", stream, out, err, want)
		}
	}
}
