package supervisor

import (
	"context"
	"fmt"
	"os"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// inheritableFD opens a file without close-on-exec, as a file the
// process inherited at start is.
func inheritableFD(t *testing.T) int {
	t.Helper()
	fd, err := syscall.Open(os.Args[0], syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	return fd
}

// Ensures an instance gets only fds 0, 1 and 2 when this process holds
// an fd without close-on-exec.
func TestSupervisor_OnlyStdio(t *testing.T) {
	fd := inheritableFD(t)
	s := startSup(t, Config{})
	spec := Spec{Name: "fds", Command: "sleep 1000", Env: []string{"PATH=/usr/bin:/bin"}}
	if err := s.Start(spec); err != nil {
		t.Fatal(err)
	}
	st, _ := s.Status("fds")
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", st.PID))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, []string{"0", "1", "2"}) {
		t.Fatalf("instance fds %v, want [0 1 2] (fd %d open here)", got, fd)
	}
	if _, err := s.Stop(context.Background(), "fds"); err != nil {
		t.Fatal(err)
	}
}

// Ensures the /proc walk (for kernels without CLOSE_RANGE_CLOEXEC) marks
// an inheritable fd close-on-exec.
func TestCloseOnExecProc(t *testing.T) {
	fd := inheritableFD(t)
	if err := closeOnExecProc(); err != nil {
		t.Fatal(err)
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("fd %d flags %#x, %v; want FD_CLOEXEC", fd, flags, err)
	}
}
