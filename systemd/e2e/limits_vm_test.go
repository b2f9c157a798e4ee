//go:build e2e_systemd

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/agent/e2e/e2eutil"
)

// A container shares its host's kernel: where the host's memory
// controller is bound to cgroup v1 (a hybrid host, such as the VMs this
// suite often runs on), no container gets cgroup v2 memory limits, and
// TestLimits cannot see an OOM kill. TestLimitsVM boots the same Debian
// root with a kernel of its own in qemu (cgroup v2 with every
// controller) and runs the OOM case there: berth under systemd, an app
// over its memory_max, the oom event, ps, the cgroup's files, /metrics
// and berth run. It runs where TestLimits cannot; where it can, or
// without qemu-system-x86_64, it has nothing to add and says so.

// vmCheckScript runs in the VM at boot (vmcheck.service) and writes what
// the test checks to the serial console between the VMCHECK markers.
const vmCheckScript = `#!/bin/sh
exec > /root/result.txt 2>&1
berth=/usr/local/bin/berth
echo "=== controllers $(cat /sys/fs/cgroup/cgroup.controllers)"
echo "=== setup"
$berth systemd install --env BERTH_SETTLE=1s --env BERTH_PROBATION=1s
for i in $(seq 1 100); do $berth apps >/dev/null 2>&1 && break; sleep 0.2; done
$berth deploy -a oom /root/oom.tar.gz
for i in $(seq 1 120); do
  n=$($berth events -a oom | grep -c "killed by the OOM killer")
  [ "$n" -ge 2 ] && break
  sleep 1
done
echo "=== events"; $berth events -a oom
echo "=== ps"; $berth ps -a oom
echo "=== psjson"; $berth ps -a oom --json | tr -d '\n'; echo
# web.1's cgroup: "oom/web.1", or "oom/web.1@v1" when steering runs old
# and new instances of the slot side by side.
cg=$(ls -d "/sys/fs/cgroup$(systemctl show -P ControlGroup berth)/apps/oom\x2fweb.1"* | head -n 1)
echo "=== memory.max $(cat "$cg/memory.max")"
echo "=== memory.oom.group $(cat "$cg/memory.oom.group")"
echo "=== pids.max $(cat "$cg/pids.max")"
echo "=== metrics"; curl -sS --unix-socket /run/berth/berth.sock http://berth/metrics | grep -v '^#'
echo "=== run"; $berth run -a oom -- sh -c 'echo $BERTH_PROCESS; exit 3'; echo "=== run exit $?"
sync
{ echo "=== VMCHECK start"; cat /root/result.txt; echo "=== VMCHECK end"; } > /dev/ttyS0
systemctl poweroff
`

const vmCheckUnit = `[Unit]
Description=berth OOM check
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/root/check.sh
[Install]
WantedBy=multi-user.target
`

// vmKernelPackages are installed into the VM's copy of the Debian root.
var vmKernelPackages = []string{"linux-image-amd64", "initramfs-tools", "zstd"}

func TestLimitsVM(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86): the OOM case runs in TestLimits alone")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Fatalf("TestLimitsVM needs mkfs.ext4 (e2fsprogs) to make the VM's disk: %v", err)
	}
	if memoryInContainers(t) {
		t.Skip("containers get the cgroup v2 memory controller here: TestLimits runs the OOM case itself")
	}
	root := e2eutil.RepoRoot(t)
	bin := filepath.Join(root, "bin", "berth")
	if b := os.Getenv("BERTH_E2E_BINARY"); b != "" {
		bin = b
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%v (run `make build`, or `make e2e-systemd`)", err)
	}
	src := vmRoot(t)
	dir := t.TempDir()
	vroot := filepath.Join(dir, "root")
	if out, err := exec.Command("cp", "-a", "--reflink=auto", src, vroot).CombinedOutput(); err != nil {
		t.Fatalf("copy the VM root: %v\n%s", err, out)
	}
	write := func(name string, data []byte, mode os.FileMode) {
		p := filepath.Join(vroot, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	binData, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	write("usr/local/bin/berth", binData, 0o755)
	write("root/oom.tar.gz", makeTarball(t, map[string]string{"Procfile": oomProcfile, "berth.json": oomManifest}), 0o644)
	write("root/check.sh", []byte(vmCheckScript), 0o755)
	write("etc/systemd/system/vmcheck.service", []byte(vmCheckUnit), 0o644)
	write("etc/fstab", []byte("/dev/vda / ext4 rw 0 1\n"), 0o644)
	for link, target := range map[string]string{
		"etc/systemd/system/multi-user.target.wants/vmcheck.service": "/etc/systemd/system/vmcheck.service",
		// The serial getty would hang up the console the result goes to.
		"etc/systemd/system/serial-getty@ttyS0.service": "/dev/null",
	} {
		os.Remove(filepath.Join(vroot, link))
		if err := os.Symlink(target, filepath.Join(vroot, link)); err != nil {
			t.Fatal(err)
		}
	}
	// The kernel boots from the cached root, which stays as it is.
	kernel, _ := filepath.Glob(filepath.Join(src, "boot", "vmlinuz-*"))
	initrd, _ := filepath.Glob(filepath.Join(src, "boot", "initrd.img-*"))
	if len(kernel) != 1 || len(initrd) != 1 {
		t.Fatalf("VM root has kernels %v and initrds %v, want one each", kernel, initrd)
	}
	img := filepath.Join(dir, "vm.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-d", vroot, img, "3G").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 -d: %v\n%s", err, out)
	}
	os.RemoveAll(vroot)

	// TCG, not KVM: nested virtualization is often missing where this
	// runs (a kernel boots in about 10 s either way).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	console := filepath.Join(dir, "console.log")
	cmd := exec.CommandContext(ctx, qemu, "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
		"-kernel", kernel[0], "-initrd", initrd[0],
		"-append", "root=/dev/vda rw console=ttyS0 init=/lib/systemd/systemd systemd.unified_cgroup_hierarchy=1 quiet loglevel=1",
		"-drive", "file="+img+",format=raw,if=virtio", "-nographic", "-no-reboot", "-nic", "none",
		"-serial", "file:"+console, "-monitor", "none")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	data, _ := os.ReadFile(console)
	if err != nil {
		t.Fatalf("qemu: %v\n%s\nconsole:\n%s", err, out, e2eutil.Tail(string(data), 60))
	}
	t.Logf("VM booted, ran the check and powered off in %s", time.Since(start).Round(time.Second))
	res := vmResult(t, string(data))
	t.Logf("in the VM (cgroup v2: %s):%s\nevents:%s\nps:%s", res["controllers"], res["setup"], res["events"], res["ps"])

	if !strings.Contains(res["controllers"], "memory") {
		t.Fatalf("the VM's cgroup v2 has no memory controller: %q", res["controllers"])
	}
	if n := strings.Count(res["events"], "web.1 "+oomLimit+"; restarted with backoff like a crash"); n < 2 {
		t.Errorf("%d oom events for web.1, want at least 2:\n%s", n, res["events"])
	}
	var ps []api.Process
	if err := json.Unmarshal([]byte(res["psjson"]), &ps); err != nil || len(ps) != 1 {
		t.Fatalf("ps --json: %v %q", err, res["psjson"])
	}
	if p := ps[0]; p.LastExit != oomLimit || p.Restarts < 2 || p.Limits != "memory_max 64 MiB, tasks_max 32" {
		t.Errorf("ps: %+v, want last exit %q after 2 restarts, limits enforced", p, oomLimit)
	}
	if !strings.Contains(res["ps"], "(last exit: "+oomLimit+")") {
		t.Errorf("ps table:\n%s", res["ps"])
	}
	for key, want := range map[string]string{"memory.max": "67108864", "memory.oom.group": "1", "pids.max": "32", "run exit": "3"} {
		if got := strings.TrimSpace(res[key]); got != want {
			t.Errorf("%s: %q, want %q", key, got, want)
		}
	}
	if strings.TrimSpace(res["run"]) != "run.1" {
		t.Errorf("berth run printed %q, want run.1", res["run"])
	}
	for _, re := range []string{`(?m)^berth_limits_enforced 1$`, `(?m)^berth_oom_kills_total\{app="oom",type="web"\} [2-9]`,
		`(?m)^berth_instance_memory_limit_bytes\{app="oom",instance="web.1",release="1"\} 67108864$`,
		`(?m)^berth_instance_last_exit_code\{app="oom",instance="web.1",release="1"\} 137$`} {
		if !regexp.MustCompile(re).MatchString(res["metrics"]) {
			t.Errorf("/metrics does not match %s:\n%s", re, res["metrics"])
		}
	}
}

// vmResult splits the console's VMCHECK section into its "=== name"
// parts; a part's first line after the name is its value too.
func vmResult(t *testing.T, console string) map[string]string {
	t.Helper()
	console = strings.ReplaceAll(console, "\r", "")
	i := strings.Index(console, "=== VMCHECK start\n")
	j := strings.Index(console, "=== VMCHECK end")
	if i < 0 || j < i {
		t.Fatalf("no check result on the VM's console:\n%s", e2eutil.Tail(console, 80))
	}
	res := map[string]string{}
	key := ""
	for _, line := range strings.Split(console[i+len("=== VMCHECK start\n"):j], "\n") {
		if rest, ok := strings.CutPrefix(line, "=== "); ok {
			for _, k := range []string{"controllers", "setup", "events", "psjson", "ps", "memory.max", "memory.oom.group", "pids.max", "metrics", "run exit", "run"} {
				if v, ok := strings.CutPrefix(rest, k); ok {
					key = k
					res[key] = strings.TrimSpace(v)
					break
				}
			}
			continue
		}
		if key != "" {
			res[key] += "\n" + line
		}
	}
	return res
}

// memoryInContainers reports whether this host's cgroup v2 offers the
// memory controller (so nspawn containers get it too).
func memoryInContainers(t *testing.T) bool {
	mount, _, err := findCgroup2(t)
	if err != nil {
		return false
	}
	data, _ := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	return strings.Contains(" "+string(data)+" ", " memory ")
}

// findCgroup2 returns the host's cgroup2 mount point.
func findCgroup2(t *testing.T) (string, string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if f := strings.Fields(pre); len(f) >= 5 {
			return f[4], f[3], nil
		}
	}
	return "", "", fmt.Errorf("no cgroup2 mount")
}

// vmRoot returns the cached VM root: the Debian root of the suite with
// a kernel and initrd installed (apt-get in a chroot), built once into
// .cache/vm-root like the container's root.
func vmRoot(t *testing.T) string {
	t.Helper()
	src := debianRoot(t)
	cache := filepath.Dir(src)
	lock, err := os.OpenFile(filepath.Join(cache, "vm-root.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(cache, "vm-root")
	srcStamp, _ := os.ReadFile(filepath.Join(src, rootStampName))
	stamp := string(srcStamp) + strings.Join(vmKernelPackages, ",") + "\n"
	if got, err := os.ReadFile(filepath.Join(root, rootStampName)); err == nil && string(got) == stamp {
		return root
	}
	tmp := fmt.Sprintf("%s.tmp-%d", root, os.Getpid())
	os.RemoveAll(tmp)
	if out, err := exec.Command("cp", "-a", "--reflink=auto", src, tmp).CombinedOutput(); err != nil {
		t.Fatalf("copy the Debian root: %v\n%s", err, out)
	}
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err == nil {
		os.WriteFile(filepath.Join(tmp, "etc/resolv.conf"), resolv, 0o644)
	}
	proc := filepath.Join(tmp, "proc")
	if err := unix.Mount("/proc", proc, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind /proc into the VM root: %v", err)
	}
	t.Logf("installing %s into the VM root (once; cached in %s)", strings.Join(vmKernelPackages, " "), root)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "chroot", tmp, "/bin/sh", "-c",
		"apt-get update -q && apt-get install -y -q --no-install-recommends "+strings.Join(vmKernelPackages, " "))
	cmd.Env = []string{"PATH=" + containerPath, "DEBIAN_FRONTEND=noninteractive", "LANG=C.UTF-8"}
	out, err := cmd.CombinedOutput()
	if uerr := unix.Unmount(proc, unix.MNT_DETACH); uerr != nil {
		t.Errorf("unmount %s: %v", proc, uerr)
	}
	if err != nil {
		os.RemoveAll(tmp)
		t.Fatalf("install a kernel into the VM root: %v\n%s", err, e2eutil.Tail(string(out), 30))
	}
	if err := os.WriteFile(filepath.Join(tmp, rootStampName), []byte(stamp), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, root); err != nil {
		t.Fatal(err)
	}
	return root
}
