// Command benchsup is a minimal supervising process for the supervisor
// benchmarks: it runs idle instances under a Supervisor so that the
// memory and CPU time of supervision can be measured from outside,
// without the test harness in the same process.
//
// It starts -n instances of -cmd, prints "ready", then for each line
// "grow N" on stdin starts more up to N in total and prints "ready"
// again. At EOF on stdin it stops everything and exits.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/berth-dev/berth/supervisor"
	"github.com/hashicorp/go-hclog"
)

func main() {
	n := flag.Int("n", 100, "instances to start")
	cmd := flag.String("cmd", "sleep 100000", "command of each instance")
	logDir := flag.String("logdir", os.TempDir(), "directory of the instances' log files")
	flag.Parse()

	s := supervisor.New(supervisor.Config{Subreaper: true}, hclog.New(&hclog.LoggerOptions{Output: os.Stderr, Level: hclog.Warn}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	running := 0
	grow := func(to int) {
		var wg sync.WaitGroup
		next := make(chan int)
		for w := 0; w < 8; w++ {
			wg.Go(func() {
				for i := range next {
					name := fmt.Sprintf("bench/idle.%d", i)
					err := s.Start(supervisor.Spec{Name: name, Command: *cmd, Env: []string{"PATH=/usr/bin:/bin"},
						Log: supervisor.LogConfig{Path: filepath.Join(*logDir, fmt.Sprintf("idle.%d.log", i))}})
					if err != nil {
						fmt.Fprintln(os.Stderr, "benchsup:", err)
						os.Exit(1)
					}
				}
			})
		}
		for i := running; i < to; i++ {
			next <- i
		}
		close(next)
		wg.Wait()
		running = max(running, to)
		fmt.Println("ready")
	}
	grow(*n)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var to int
		if _, err := fmt.Sscanf(strings.TrimSpace(sc.Text()), "grow %d", &to); err == nil {
			grow(to)
		}
	}
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, "benchsup:", err)
		os.Exit(1)
	}
}
