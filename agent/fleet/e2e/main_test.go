//go:build e2e_fleet

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e-fleet needs root (network namespaces)")
		os.Exit(1)
	}
	for _, tool := range []string{"ip", "etcd"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "e2e-fleet needs %s (.ci/run installs iproute2 and etcd-server)\n", tool)
			os.Exit(1)
		}
	}
	goleak.VerifyTestMain(m)
}
