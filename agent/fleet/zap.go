package fleet

import "go.uber.org/zap"

// zapLogger silences the etcd client's own logger: fleet logs what
// matters through hclog, and the client would otherwise print every
// retry while etcd is down.
func zapLogger() *zap.Logger { return zap.NewNop() }
