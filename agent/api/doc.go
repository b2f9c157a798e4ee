// Package api is berth's control API: the wire types, the HTTP server that
// serves them on the agent's unix socket under /v1, and the Go client the
// CLI uses. It maps error kinds to HTTP statuses; nothing else does.
//
// It must not import package agent (the agent implements Backend).
package api
