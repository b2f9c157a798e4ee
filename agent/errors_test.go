package agent

import (
	"fmt"
	"testing"

	"github.com/berth-dev/berth/agent/api"
)

// Ensures a release that failed (its release phase, or its health after a
// switch) goes over the socket as a conflict, not as an internal error:
// the request was valid and carried out.
func TestFailedReleaseErrors_APIKind(t *testing.T) {
	for _, err := range []error{
		&SwitchError{App: "hello", Version: 2, RolledBackTo: 1, Reason: "unhealthy", Err: ErrUnhealthy},
		&ReleasePhaseError{App: "hello", Version: 2, Reason: "exit 1"},
	} {
		wrapped := fmt.Errorf("deploy hello: %w", err)
		if k := api.KindOf(wrapped); k != api.KindConflict {
			t.Errorf("KindOf(%T) = %q, want %q", err, k, api.KindConflict)
		}
	}
}
