package systemd

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestStoreFiles ensures a stored fd reaches the notification socket
// with FDSTORE=1, its prefixed name and FDPOLL=0, as a copy of the same
// pipe, and that its blocking mode is left as it was; and that
// RemoveFiles names it for removal.
func TestStoreFiles(t *testing.T) {
	conn := notifySocket(t)
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	r := os.NewFile(uintptr(p[0]), "r")
	w := os.NewFile(uintptr(p[1]), "w")
	defer r.Close()
	defer w.Close()
	sent, err := StoreFiles("out/42/hello/web.1@v3", r)
	if err != nil || !sent {
		t.Fatalf("StoreFiles = %v, %v", sent, err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf, oob := make([]byte, 4096), make([]byte, 128)
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(buf[:n]), "FDSTORE=1\nFDNAME=berth/out/42/hello/web.1@v3\nFDPOLL=0"; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control messages %v %v", msgs, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("rights %v %v", fds, err)
	}
	got := os.NewFile(uintptr(fds[0]), "got")
	defer got.Close()
	if _, err := w.WriteString("line\n"); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 16)
	if k, err := unix.Read(fds[0], b); err != nil || string(b[:k]) != "line\n" {
		t.Errorf("read through the passed fd: %q %v", b[:k], err)
	}
	if fl, err := unix.FcntlInt(uintptr(p[0]), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Errorf("the stored pipe is no longer non-blocking")
	}

	if err := RemoveFiles("out/42/hello/web.1@v3"); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, conn); got != "FDSTOREREMOVE=1\nFDNAME=berth/out/42/hello/web.1@v3" {
		t.Errorf("remove message %q", got)
	}
}

// TestStoreFiles_BadName ensures names systemd would refuse are refused
// before anything is sent.
func TestStoreFiles_BadName(t *testing.T) {
	notifySocket(t)
	for _, name := range []string{"a:b", "a\nb", strings.Repeat("x", 250)} {
		if _, err := StoreFiles(name, os.Stdin); !errors.Is(err, ErrInvalidNotify) {
			t.Errorf("StoreFiles(%q) = %v, want ErrInvalidNotify", name, err)
		}
	}
}

// TestInherit ensures stored fds come back by name and sockets of a
// socket unit as listeners.
func TestInherit(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(ln, 8); err != nil {
		t.Fatal(err)
	}
	in, err := inherit([]*os.File{os.NewFile(uintptr(p[0]), "berth/out/7/a/web.1"), os.NewFile(uintptr(ln), "berth.socket")})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range in.Stored {
			f.File.Close()
		}
		for _, l := range in.Listeners {
			l.Close()
		}
	}()
	if len(in.Stored) != 1 || in.Stored[0].Name != "out/7/a/web.1" || len(in.Listeners) != 1 {
		t.Fatalf("Inherit = %+v", in)
	}
}
