package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// berthBinary builds the berth binary once per test run (the first test
// that needs it pays for the build) into a temp dir that user nobody can
// read, so a test can run it as another user.
func berthBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "berth-bin")
		if binErr != nil {
			return
		}
		if binErr = os.Chmod(binDir, 0o755); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "berth")
		cmd := exec.Command("go", "build", "-o", binPath, "-ldflags", "-X main.version=e2e", ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			binErr = &buildError{err: err, out: string(out)}
		}
	})
	if binErr != nil {
		t.Fatalf("build berth: %v", binErr)
	}
	return binPath
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// cleanupBinary removes the binary's temp dir, if one was made.
func cleanupBinary() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}
