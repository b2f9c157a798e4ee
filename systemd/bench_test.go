package systemd

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// BenchmarkNotify measures one sd_notify datagram (dial, write, close),
// what each STATUS= update and watchdog ping costs the agent.
func BenchmarkNotify(b *testing.B) {
	path := filepath.Join(b.TempDir(), "n.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		b.Fatal(err)
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	b.Setenv("NOTIFY_SOCKET", path)
	buf := make([]byte, 512)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := Status("3 apps, 5 of 5 processes running"); err != nil {
			b.Fatal(err)
		}
		if _, _, err := unix.Recvfrom(fd, buf, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCgroups_Kill measures how long Kill takes to empty an
// instance's cgroup of a process and a setsid daemon it forked (cgroup.kill,
// then the wait on cgroup.events), the containment part of every stop.
// It needs root and a writable cgroup2 (skipped otherwise).
func BenchmarkCgroups_Kill(b *testing.B) {
	dir := delegatedCgroup(b)
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = helperEnviron("cgroupbench", fmt.Sprintf("BENCH_N=%d", max(b.N, 1)))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("helper: %v\n%s", err, out)
	}
	var perKill time.Duration
	if _, err := fmt.Sscanf(strings.TrimSpace(string(out)), "kill %d", &perKill); err != nil {
		b.Fatalf("helper output %q: %v", out, err)
	}
	b.ReportMetric(float64(perKill.Microseconds()), "us/kill")
	b.Logf("Kill of an instance cgroup with a setsid daemon: %s each (%d kills)", perKill, max(b.N, 1))
}

// helperCgroupBench runs in the delegated cgroup: BENCH_N times it starts
// a command that forks a setsid daemon and times Kill.
func helperCgroupBench() error {
	var n int
	fmt.Sscan(os.Getenv("BENCH_N"), &n)
	cg, err := NewCgroups(hclog.NewNullLogger())
	if err != nil {
		return err
	}
	defer cg.Close()
	var total time.Duration
	for range n {
		fd, err := cg.Prepare("web.1")
		if err != nil {
			return err
		}
		cmd := exec.Command("/bin/sh", "-c", `setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo started; exec sleep 1000`)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, UseCgroupFD: true, CgroupFD: fd}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		line := make([]byte, 8)
		if _, err := io.ReadFull(stdout, line); err != nil {
			return fmt.Errorf("start: %v (exit %v)", err, cmd.Wait())
		}
		start := time.Now()
		if err := cg.Kill("web.1"); err != nil {
			return err
		}
		total += time.Since(start)
		cmd.Wait()
	}
	if err := cg.Remove("web.1"); err != nil {
		return err
	}
	fmt.Printf("kill %d\n", total/time.Duration(n))
	return nil
}
