package agent

import (
	"testing"

	"github.com/berth-dev/berth/agent/api"
	"github.com/berth-dev/berth/state"
)

// TestLimitsAgree ensures the API decoder bounds config keys at the
// store's limit: agent/api may not import state, so it keeps a copy.
func TestLimitsAgree(t *testing.T) {
	if api.MaxConfigKeyLen != state.MaxConfigKeyLen {
		t.Fatalf("api.MaxConfigKeyLen = %d, state.MaxConfigKeyLen = %d", api.MaxConfigKeyLen, state.MaxConfigKeyLen)
	}
}
