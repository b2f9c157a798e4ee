//go:build e2e_systemd

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(clientEnv) != "" {
		// The load client, run inside the container (adopt_test.go).
		os.Exit(runClient())
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e-systemd needs root (debootstrap, systemd-nspawn, nsenter)")
		os.Exit(1)
	}
	for _, tool := range []string{"debootstrap", "systemd-nspawn", "nsenter", "cp"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "e2e-systemd needs %s (.ci/run installs debootstrap and systemd-container)\n", tool)
			os.Exit(1)
		}
	}
	start := time.Now()
	code := m.Run()
	fmt.Printf("e2e-systemd: suite took %s; boot to serving after a reboot %s\n",
		time.Since(start).Round(time.Second), bootToServing.Round(time.Millisecond))
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
