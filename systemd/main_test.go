package systemd

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// helperEnv selects a helper mode when the test binary is re-executed as a
// child process (the way os/exec's own tests do it).
const helperEnv = "BERTH_SYSTEMD_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Unsetenv(helperEnv)
		code := 0
		if err := runHelper(mode); err != nil {
			fmt.Fprintf(os.Stderr, "helper %s: %v\n", mode, err)
			code = 1
		}
		os.Exit(code)
	}
	goleak.VerifyTestMain(m)
}

func runHelper(mode string) error {
	switch mode {
	case "listeners":
		return helperListeners()
	case "cgroups":
		return helperCgroups()
	case "cgroupbench":
		return helperCgroupBench()
	case "journal":
		return helperJournal()
	case "underjournal":
		fmt.Println(UnderJournal())
		return nil
	}
	return fmt.Errorf("unknown helper mode %q", mode)
}

// helperEnviron is the environment of a helper child in the given mode.
// GORACE drops the race detector's one-second pause at exit.
func helperEnviron(mode string, extra ...string) []string {
	return append(os.Environ(), append([]string{helperEnv + "=" + mode, "GORACE=atexit_sleep_ms=0"}, extra...)...)
}
