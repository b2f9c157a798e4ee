package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-dev/berth/agent"
	"github.com/berth-dev/berth/agent/api"
	"github.com/hashicorp/go-hclog"
)

// TestMain_ParseFlags ensures a flag beats the environment, which beats
// the env file, which beats the default, for every kind of setting.
func TestMain_ParseFlags(t *testing.T) {
	envFile := filepath.Join(t.TempDir(), "berth.env")
	os.WriteFile(envFile, []byte("# settings\nBERTH_BASE_PORT=7000\nBERTH_RETENTION=9\nexport BERTH_DEFAULT_USER='www-data'\nBERTH_LOG_MAX_SIZE=2M\n"), 0o644)
	env := map[string]string{
		"BERTH_ENV_FILE":     envFile,
		"BERTH_BASE_PORT":    "6000",
		"BERTH_STOP_TIMEOUT": "3s",
		"BERTH_ALLOW_ENV":    "HOME,USER",
		"BERTH_JOURNAL":      "true",
		"BERTH_LOG_FORMAT":   "json",
	}
	m := &Main{Getenv: func(k string) string { return env[k] }, Stderr: &bytes.Buffer{}}
	if err := m.ParseFlags([]string{"--base-port", "5500", "--data-dir", "/srv/berth", "--log-max-files", "3"}); err != nil {
		t.Fatal(err)
	}
	c := m.Config
	checks := []struct {
		name      string
		got, want any
	}{
		{"flag beats env", c.BasePort, 5500},
		{"flag", c.DataDir, "/srv/berth"},
		{"flag int", c.LogMaxFiles, 3},
		{"env duration", c.StopTimeout, 3 * time.Second},
		{"env list", strings.Join(c.AllowEnv, ","), "HOME,USER"},
		{"env bool", c.Journal, true},
		{"env file", c.Retention, 9},
		{"env file, quoted, export", c.DefaultUser, "www-data"},
		{"env file size", c.LogMaxSize, int64(2 << 20)},
		{"default", c.LockTimeout, time.Duration(0)},
		{"default level", m.LogLevel, "info"},
		{"env format", m.LogFormat, "json"},
		{"version", c.Version, version},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s: got %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}

// TestMain_ReloadBadLogLevel ensures a reload that reads a bad log level
// (here from the re-read env file) is refused whole, as ParseFlags refuses
// it: the error is logged and the level stays as it was.
func TestMain_ReloadBadLogLevel(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, "berth.env")
	if err := os.WriteFile(envFile, []byte("BERTH_LOG_LEVEL=debug\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	log := &lockedBuffer{}
	m := &Main{Getenv: func(string) string { return "" }, Stderr: log}
	if err := m.ParseFlags([]string{"--data-dir", filepath.Join(dir, "data"), "--env-file", envFile}); err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(m.Config, m.log)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(envFile, []byte("BERTH_LOG_LEVEL=loud\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.reload(a)
	if out := log.String(); !strings.Contains(out, "reload failed; keeping the current settings") || !strings.Contains(out, `bad log level \"loud\"`) {
		t.Errorf("reload with BERTH_LOG_LEVEL=loud logged:\n%s\nwant the reload refused for the bad level", out)
	}
	if got := m.log.GetLevel(); got != hclog.Debug {
		t.Errorf("log level after the refused reload: %v, want debug", got)
	}
}

// TestByteSize covers the size syntax of --log-max-size.
func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "10K": 10 << 10, "10KiB": 10 << 10, "3M": 3 << 20, "3MB": 3 << 20, "1g": 1 << 30} {
		var b byteSize
		if err := b.Set(in); err != nil || int64(b) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"", "-1", "K", "12Q", "1.5M", "99999999999G"} {
		var b byteSize
		if err := b.Set(in); err == nil || !strings.Contains(err.Error(), "bad size") {
			t.Errorf("Set(%q) = %d, %v; want a bad size error", in, b, err)
		}
	}
}

// TestUIDRange covers the syntax of --app-uids.
func TestUIDRange(t *testing.T) {
	var r uidRange
	if err := r.Set("61184-65519"); err != nil || r.Min != 61184 || r.Max != 65519 || r.String() != "61184-65519" {
		t.Errorf("Set(61184-65519) = %+v, %v", r, err)
	}
	for _, in := range []string{"", "5", "0-10", "10-5", "a-b", "1-4294967295"} {
		var r uidRange
		if err := r.Set(in); err == nil || !strings.Contains(err.Error(), "bad uid range") {
			t.Errorf("Set(%q) = %+v, %v; want a bad uid range error", in, r, err)
		}
	}
}

// TestMain_Run runs the agent in-process: it serves the socket, reloads
// on SIGHUP (a receive on Reload), and Close stops it with Run returning
// nil.
func TestMain_Run(t *testing.T) {
	dir, err := os.MkdirTemp("", "bm")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	log := &lockedBuffer{}
	reload := make(chan os.Signal, 1)
	m := &Main{Getenv: func(string) string { return "" }, Stderr: log, Reload: reload}
	if err := m.ParseFlags([]string{"--data-dir", filepath.Join(dir, "data"), "--socket", sock, "--log-level", "debug", "--lock-timeout", "100ms"}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var runErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		runErr = m.Run(context.Background())
	}()
	c := api.NewClient(sock)
	defer c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := c.Info(context.Background())
		if err == nil {
			if info.DataDir != filepath.Join(dir, "data") || info.PID != os.Getpid() {
				t.Errorf("info = %+v", info)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the in-process agent does not answer: %v\n%s", err, log)
		}
		time.Sleep(20 * time.Millisecond) // bounded poll of the socket
	}
	reload <- syscall.SIGHUP
	for !strings.Contains(log.String(), "reloading settings") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload logged:\n%s", log)
		}
		time.Sleep(10 * time.Millisecond) // bounded poll of the log
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if runErr != nil {
		t.Errorf("Run after Close: %v, want nil", runErr)
	}
	if _, err := c.Info(context.Background()); !errors.Is(err, api.ErrUnavailable) {
		t.Errorf("after Close the socket still answers: %v", err)
	}
}
