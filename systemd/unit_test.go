package systemd

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"os/user"

	"github.com/hashicorp/go-hclog"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (run with -update if intended):\n--- got\n%s--- want\n%s", name, got, want)
	}
}

func goldenConfigs() map[string]UnitConfig {
	return map[string]UnitConfig{
		"default": {BinaryPath: "/usr/local/bin/berth"},
		"custom": {
			BinaryPath:       "/opt/berth 2/bin/berth",
			DataDir:          "/srv/berth",
			SocketPath:       "/run/berth/ctl.sock",
			SocketGroup:      "deploy",
			StopTimeout:      30 * time.Second,
			WatchdogSec:      5500 * time.Millisecond,
			Env:              map[string]string{"BERTH_JOURNAL": "1", "BERTH_BASE_PORT": "7000", "BERTH_ALLOW_ENV": `A "quoted" 100% \ value`},
			SocketActivation: true,
		},
	}
}

// TestRenderService_Golden pins the rendered units.
func TestRenderService_Golden(t *testing.T) {
	for name, c := range goldenConfigs() {
		if err := c.Validate(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		golden(t, name+".service", RenderService(c))
		if c.SocketActivation {
			golden(t, name+".socket", RenderSocket(c))
		}
	}
}

// TestRenderService_Settings ensures the settings the issue asks for are in
// the unit, and TimeoutStopSec exceeds the apps' stop timeout.
func TestRenderService_Settings(t *testing.T) {
	unit := RenderService(UnitConfig{BinaryPath: "/usr/bin/berth", StopTimeout: 40 * time.Second})
	for _, line := range []string{
		"Type=notify", "Restart=always", "KillMode=process", "FileDescriptorStoreMax=4096", "TimeoutStopSec=55s", "WatchdogSec=30s",
		"NotifyAccess=main", "StateDirectory=berth", "RuntimeDirectory=berth", "RuntimeDirectoryPreserve=yes",
		"Delegate=yes", "WantedBy=multi-user.target", "ExecStart=/usr/bin/berth agent",
		"ExecReload=/bin/kill -USR2 $MAINPID", "EnvironmentFile=-/etc/default/berth",
		`Environment="BERTH_DATA_DIR=/var/lib/berth"`, `Environment="BERTH_SOCKET=/run/berth/berth.sock"`,
		`Environment="BERTH_STOP_TIMEOUT=40s"`,
	} {
		if !strings.Contains(unit, "\n"+line+"\n") {
			t.Errorf("unit lacks %q:\n%s", line, unit)
		}
	}
}

// TestRenderService_SystemdAnalyzeVerify runs systemd's own checker on the
// rendered units (systemd-analyze from Debian's systemd package), with a
// real executable as the binary, and on what systemd parses back from the
// quoting: the escaped path and environment.
func TestRenderService_SystemdAnalyzeVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found (install Debian's systemd package): %v", err)
	}
	for name, c := range goldenConfigs() {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			bin := filepath.Join(dir, "bin dir", "berth%d")
			if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			c.BinaryPath = bin
			files := []string{filepath.Join(dir, "berth.service")}
			if err := os.WriteFile(files[0], []byte(RenderService(c)), 0o644); err != nil {
				t.Fatal(err)
			}
			if c.SocketActivation {
				files = append(files, filepath.Join(dir, "berth.socket"))
				if err := os.WriteFile(files[1], []byte(RenderSocket(c)), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command(analyze, append([]string{"verify", "--man=no"}, files...)...)
			cmd.Env = append(os.Environ(), "SYSTEMD_LOG_LEVEL=notice")
			out, err := cmd.CombinedOutput()
			if err != nil || len(bytes.TrimSpace(out)) > 0 {
				t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
			}
		})
	}
}

// TestUnitConfig_Validate ensures each bad setting is refused with an
// error naming the field and value (but never an Env value).
func TestUnitConfig_Validate(t *testing.T) {
	ok := UnitConfig{BinaryPath: "/usr/bin/berth"}
	for _, tc := range []struct {
		name string
		mod  func(*UnitConfig)
		want string
	}{
		{"no binary", func(c *UnitConfig) { c.BinaryPath = "" }, "BinaryPath"},
		{"relative binary", func(c *UnitConfig) { c.BinaryPath = "bin/berth" }, `BinaryPath "bin/berth": must be an absolute path`},
		{"newline in binary", func(c *UnitConfig) { c.BinaryPath = "/usr/bin/berth\nExecStartPre=/bin/evil" }, "control character"},
		{"unclean data dir", func(c *UnitConfig) { c.DataDir = "/var/lib/../berth" }, `DataDir "/var/lib/../berth"`},
		{"long socket", func(c *UnitConfig) { c.SocketPath = "/run/" + strings.Repeat("s", 110) }, "longer than a unix socket path"},
		{"bad group", func(c *UnitConfig) { c.SocketGroup = "Ops Team" }, `SocketGroup "Ops Team"`},
		{"negative stop", func(c *UnitConfig) { c.StopTimeout = -time.Second }, `StopTimeout "-1s"`},
		{"tiny watchdog", func(c *UnitConfig) { c.WatchdogSec = 100 * time.Millisecond }, `WatchdogSec "100ms"`},
		{"bad env name", func(c *UnitConfig) { c.Env = map[string]string{"BERTH-X": "1"} }, `Env "BERTH-X"`},
		{"env clash", func(c *UnitConfig) { c.Env = map[string]string{EnvSocket: "/x"} }, "Env[BERTH_SOCKET]: is set by its own field"},
		{"env newline", func(c *UnitConfig) { c.Env = map[string]string{"BERTH_TOKEN": "s3cret\nExecStart=/bin/sh"} }, "Env[BERTH_TOKEN]: value contains a line break"},
	} {
		c := ok
		tc.mod(&c)
		err := c.Validate()
		var ue *UnitConfigError
		if !errors.Is(err, ErrInvalidUnit) || !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrInvalidUnit containing %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: error shows an Env value: %v", tc.name, err)
		}
	}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
}

// fakeInstaller returns an installer writing to a temp unit dir whose
// systemctl and groupadd are shell scripts that log their arguments, and
// the path of that log.
func fakeInstaller(t *testing.T, groupExists bool, failing string) (installer, string) {
	return fakeInstallerActive(t, groupExists, failing, false)
}

// fakeInstallerActive is fakeInstaller whose systemctl says berth.service
// is active or not.
func fakeInstallerActive(t *testing.T, groupExists bool, failing string, active bool) (installer, string) {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "commands.log")
	script := func(name string) string {
		p := filepath.Join(dir, name)
		body := "#!/bin/sh\necho \"" + name + " $*\" >> " + log + "\n"
		if name == "systemctl" {
			rc := "3"
			if active {
				rc = "0"
			}
			body += "if [ \"$1\" = is-active ]; then exit " + rc + "; fi\n"
		}
		if name == failing {
			body += "echo \"" + name + ": boom\" >&2\nexit 3\n"
		}
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	units := filepath.Join(dir, "units")
	if err := os.Mkdir(units, 0o755); err != nil {
		t.Fatal(err)
	}
	return installer{
		unitDir:   units,
		systemctl: script("systemctl"),
		groupadd:  script("groupadd"),
		lookupGroup: func(name string) error {
			if groupExists {
				return nil
			}
			return user.UnknownGroupError(name)
		},
	}, log
}

func readLog(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(data)
}

// TestInstall_WritesAndEnables ensures Install creates a missing group,
// writes both units with their rendered content, reloads and enables them,
// in that order, and leaves no temp files.
func TestInstall_WritesAndEnables(t *testing.T) {
	in, log := fakeInstaller(t, false, "")
	c := UnitConfig{BinaryPath: "/bin/sh", SocketGroup: "ops", SocketActivation: true}
	if err := in.install(context.Background(), c, hclog.NewNullLogger()); err != nil {
		t.Fatal(err)
	}
	want := "groupadd --system ops\nsystemctl daemon-reload\nsystemctl is-active --quiet berth.service\n" +
		"systemctl enable --now berth.socket berth.service\n"
	if got := readLog(t, log); got != want {
		t.Errorf("commands:\n%s\nwant:\n%s", got, want)
	}
	for name, body := range map[string]string{"berth.service": RenderService(c), "berth.socket": RenderSocket(c)} {
		data, err := os.ReadFile(filepath.Join(in.unitDir, name))
		if err != nil || string(data) != body {
			t.Errorf("%s: %v, content matches: %v", name, err, string(data) == body)
		}
		if fi, err := os.Stat(filepath.Join(in.unitDir, name)); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s mode: %v %v", name, fi.Mode(), err)
		}
	}
	entries, _ := os.ReadDir(in.unitDir)
	if len(entries) != 2 {
		t.Errorf("unit dir holds %d entries, want the 2 units", len(entries))
	}

	// Again without socket activation, with the group present: the old
	// socket unit is disabled and removed.
	os.Remove(log)
	c.SocketActivation = false
	in.lookupGroup = func(string) error { return nil }
	if err := in.install(context.Background(), c, hclog.NewNullLogger()); err != nil {
		t.Fatal(err)
	}
	want = "systemctl disable --now berth.socket\nsystemctl daemon-reload\nsystemctl enable --now berth.service\n"
	if got := readLog(t, log); got != want {
		t.Errorf("commands:\n%s\nwant:\n%s", got, want)
	}
	if _, err := os.Stat(filepath.Join(in.unitDir, "berth.socket")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("berth.socket still there: %v", err)
	}
}

// TestInstall_BadInputChangesNothing ensures an invalid setting or a
// binary that is not executable is refused before any file or command.
func TestInstall_BadInputChangesNothing(t *testing.T) {
	for _, c := range []UnitConfig{
		{BinaryPath: "relative/berth"},
		{BinaryPath: "/nonexistent/berth"},
		{BinaryPath: "/etc/passwd"},
		{BinaryPath: "/bin/sh", SocketGroup: "Bad Group"},
	} {
		in, log := fakeInstaller(t, false, "")
		err := in.install(context.Background(), c, hclog.NewNullLogger())
		if err == nil || !strings.Contains(err.Error(), c.BinaryPath) && !strings.Contains(err.Error(), "Bad Group") {
			t.Errorf("%+v: err = %v, want one naming the bad value", c, err)
		}
		entries, _ := os.ReadDir(in.unitDir)
		if len(entries) != 0 || readLog(t, log) != "" {
			t.Errorf("%+v: wrote %d files, ran %q", c, len(entries), readLog(t, log))
		}
	}
}

// TestInstall_CommandFails ensures a failing systemctl is an error carrying
// its output.
func TestInstall_CommandFails(t *testing.T) {
	in, _ := fakeInstaller(t, true, "systemctl")
	err := in.install(context.Background(), UnitConfig{BinaryPath: "/bin/sh"}, hclog.NewNullLogger())
	if err == nil || !strings.Contains(err.Error(), "daemon-reload") || !strings.Contains(err.Error(), "systemctl: boom") {
		t.Fatalf("err = %v, want the failing command and its output", err)
	}
}

// TestInstall_SwitchToSocketActivation ensures a running agent is stopped
// before the socket unit starts (systemd refuses to start a socket whose
// service runs), and only when the socket unit is new.
func TestInstall_SwitchToSocketActivation(t *testing.T) {
	in, log := fakeInstallerActive(t, true, "", true)
	c := UnitConfig{BinaryPath: "/bin/sh", SocketActivation: true}
	if err := in.install(context.Background(), c, hclog.NewNullLogger()); err != nil {
		t.Fatal(err)
	}
	want := "systemctl daemon-reload\nsystemctl is-active --quiet berth.service\nsystemctl stop berth.service\n" +
		"systemctl enable --now berth.socket berth.service\n"
	if got := readLog(t, log); got != want {
		t.Errorf("commands:\n%s\nwant:\n%s", got, want)
	}
	// Installed again with the socket in place: nothing is stopped.
	os.Remove(log)
	if err := in.install(context.Background(), c, hclog.NewNullLogger()); err != nil {
		t.Fatal(err)
	}
	want = "systemctl daemon-reload\nsystemctl enable --now berth.socket berth.service\n"
	if got := readLog(t, log); got != want {
		t.Errorf("commands:\n%s\nwant:\n%s", got, want)
	}
}

// TestInstall_UpgradesOldUnit ensures installing over a unit of an older
// berth (apps killed with the agent: KillMode=mixed, reload by SIGHUP)
// replaces it with one where apps outlive the agent, and reloads systemd.
func TestInstall_UpgradesOldUnit(t *testing.T) {
	in, log := fakeInstaller(t, true, "")
	old := "[Service]\nType=notify\nExecStart=/bin/sh agent\nExecReload=/bin/kill -HUP $MAINPID\nKillMode=mixed\n"
	if err := os.WriteFile(filepath.Join(in.unitDir, "berth.service"), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	c := UnitConfig{BinaryPath: "/bin/sh"}
	if err := in.install(context.Background(), c, hclog.NewNullLogger()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(in.unitDir, "berth.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(data)
	for _, line := range []string{"KillMode=process", "FileDescriptorStoreMax=4096", "ExecReload=/bin/kill -USR2 $MAINPID"} {
		if !strings.Contains(unit, "\n"+line+"\n") {
			t.Errorf("upgraded unit lacks %q:\n%s", line, unit)
		}
	}
	if strings.Contains(unit, "KillMode=mixed") {
		t.Errorf("upgraded unit still kills the apps with the agent:\n%s", unit)
	}
	if got := readLog(t, log); !strings.HasPrefix(got, "systemctl daemon-reload\n") {
		t.Errorf("commands:\n%s\nwant a daemon-reload first", got)
	}
}
