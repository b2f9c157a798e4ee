package systemd

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// pending returns the notifications waiting on conn without blocking.
func pending(t *testing.T, conn *net.UnixConn) []string {
	t.Helper()
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	buf := make([]byte, 4096)
	for {
		var n int
		var rerr error
		if err := raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if errors.Is(rerr, unix.EAGAIN) {
			return msgs
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
		msgs = append(msgs, string(buf[:n]))
	}
}

// TestWatchdog_PingsOnlyWhileCheckSucceeds ensures WATCHDOG=1 follows each
// successful check and no other: not a failed check, and not a check that
// answers only after its half-interval deadline (a wedged agent).
func TestWatchdog_PingsOnlyWhileCheckSucceeds(t *testing.T) {
	conn := notifySocket(t)
	t.Setenv("WATCHDOG_USEC", "100000") // checks every 50ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	script := []string{"ok", "ok", "fail", "hang", "fail", "ok", "hang", "ok"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	call := 0
	var got []string // per call: the pings seen since the previous call
	w := &Watchdog{Check: func(cctx context.Context) error {
		if call > 0 {
			got = append(got, strings.Join(pending(t, conn), ","))
		}
		if call == len(script) {
			cancel()
			return context.Canceled
		}
		step := script[call]
		call++
		switch step {
		case "fail":
			return errors.New("store does not answer")
		case "hang":
			<-cctx.Done()
			return nil // answered, but after the deadline
		}
		return nil
	}}
	// Run on the test goroutine: Check may fail the test.
	if err := w.Run(ctx, hclog.NewNullLogger()); err != nil {
		t.Fatalf("Run = %v, want nil after cancel", err)
	}
	if len(got) != len(script) {
		t.Fatalf("saw %d checks, want %d", len(got), len(script))
	}
	for i, step := range script {
		want := ""
		if step == "ok" {
			want = "WATCHDOG=1"
		}
		if got[i] != want {
			t.Errorf("check %d (%s): pings %q, want %q", i, step, got[i], want)
		}
	}
}

// TestWatchdog_Disabled ensures Run returns at once when systemd asked for
// no watchdog, or for one watched on another process.
func TestWatchdog_Disabled(t *testing.T) {
	for _, tc := range []struct{ usec, pid string }{
		{"", ""},
		{"100000", strconv.Itoa(os.Getpid() + 1)},
	} {
		t.Setenv("WATCHDOG_USEC", tc.usec)
		t.Setenv("WATCHDOG_PID", tc.pid)
		called := false
		w := &Watchdog{Check: func(context.Context) error { called = true; return nil }}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := w.Run(ctx, hclog.NewNullLogger())
		cancel()
		if err != nil || called {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: Run = %v, check called %v; want nil and no check", tc.usec, tc.pid, err, called)
		}
	}
}

// TestWatchdog_BadInterval ensures a malformed WATCHDOG_USEC is an error
// naming the value.
func TestWatchdog_BadInterval(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "thirty")
	t.Setenv("WATCHDOG_PID", "")
	err := (&Watchdog{}).Run(context.Background(), hclog.NewNullLogger())
	if err == nil || !strings.Contains(err.Error(), `"thirty"`) {
		t.Fatalf("err = %v, want one naming \"thirty\"", err)
	}
}
