// Command berth-etcd runs a single-member etcd for developing and trying
// berth's fleet mode on one machine:
//
//	berth-etcd --data ./.etcd            # clients on http://127.0.0.1:2379
//	berth agent --etcd http://127.0.0.1:2379 --node n1 ...
//
// It is a separate binary so the agent never links etcd's server. It is
// not for production: run a real etcd cluster (three or five members,
// TLS, auth) there.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "berth-etcd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("berth-etcd", flag.ContinueOnError)
	data := fs.String("data", "", "data directory (required)")
	client := fs.String("listen-client", "http://127.0.0.1:2379", "client URL")
	peer := fs.String("listen-peer", "http://127.0.0.1:2380", "peer URL")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *data == "" {
		return errors.New("--data DIR is required")
	}
	cu, err := url.Parse(*client)
	if err != nil {
		return fmt.Errorf("--listen-client: %w", err)
	}
	pu, err := url.Parse(*peer)
	if err != nil {
		return fmt.Errorf("--listen-peer: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "berth-dev"
	cfg.Dir = *data
	cfg.LogLevel = "warn"
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(time.Minute):
		return errors.New("etcd not ready after a minute")
	}
	fmt.Fprintf(os.Stderr, "berth-etcd: serving clients on %s (data in %s); Ctrl-C stops it\n", cu, *data)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return err
	}
}
