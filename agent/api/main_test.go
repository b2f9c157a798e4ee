package api

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain verifies that no test leaks a goroutine, and doubles as the
// socket client that TestServer_PeerCheck runs as another user.
func TestMain(m *testing.M) {
	if sock := os.Getenv("BERTH_API_TEST_PEER_SOCKET"); sock != "" {
		os.Exit(peerClientMain(sock))
	}
	if os.Getenv("BERTH_API_TEST_PATHS") != "" {
		fmt.Printf("%s\n%s\n", DefaultSocketPath(), DefaultDataDir())
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// peerClientMain does GET /v1/info (or $BERTH_API_TEST_PEER_PATH) on sock
// and prints the status and body, as curl would.
func peerClientMain(sock string) int {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 30 * time.Second}
	path := os.Getenv("BERTH_API_TEST_PEER_PATH")
	if path == "" {
		path = "/v1/info"
	}
	resp, err := c.Get("http://berth" + path)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Printf("%d %s", resp.StatusCode, b)
	return 0
}
