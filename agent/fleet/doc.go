// Package fleet is berth's fleet mode: many agents follow one desired
// state kept in etcd. An agent started with Config.Fleet (`berth agent
// --etcd ...`) registers as a node, watches the desired state, converges
// its apps onto it through the agent's own switch, reports what it runs,
// and drives the rollouts whose lock it holds. `berth fleet` (Client)
// changes the desired state.
//
// It depends on the agent only through Node (Apply, AppStatus, Stop,
// HasBuild, ImportBuild); it must not import package agent, bbolt or
// etcd's server (agent/deps_test.go checks it). Without Config.Fleet
// nothing here runs and the agent talks to no etcd.
//
// # Keys in etcd
//
// Under the prefix (default /berth/), one JSON record per key; etcd
// holds metadata only (records are capped at MaxValue, 1 MiB, under
// etcd's 1.5 MiB request limit), builds travel by digest:
//
//	apps/<app>/release            Release: the fleet version, build digest,
//	                              config, formation every placed node runs
//	apps/<app>/placement          Placement: labels, count (none: all nodes)
//	apps/<app>/rollout            Rollout: the last rollout, its wave under
//	                              way, state, driver and, when it failed, why
//	apps/<app>/plan               the rollout's waves, written once when it
//	                              starts (the record above, rewritten at
//	                              every step, stays small)
//	apps/<app>/releases/<v>       Release: the history, for rollback
//	nodes/<node>                  NodeInfo under the node's lease: address of
//	                              its build endpoint, labels, version
//	status/<app>/<node>           Status under the node's lease: active fleet
//	                              version, instances up, switching, last failure
//	locks/rollout/<app>/<lease>   the app's rollout lock (etcd mutex)
//
// Every node watches apps/, locks/ and nodes/; the statuses of an app are
// watched only by the node driving its rollout, while it drives it. So a
// rollout costs etcd O(N) events, not N² (SCALE.md has the figures).
//
// # What a node runs
//
// Target is a pure function of those records: a node that a running
// rollout has reached (its wave or an earlier one) runs the rollout's
// release; every other node the placement includes runs the app's
// release. A node converges by comparing, per app, the target's version
// with the fleet version its active local release records ("Fleet vN:"
// in the description) and, where they differ, fetching the build if it
// lacks it and calling Node.Apply, which makes a local release and runs
// the same switch as a deploy: release phase, health checks, probation,
// local rollback. Converging twice does nothing. A version that failed
// on the node is reported (Status.Failed, Status.Error) and not retried
// until the target changes, also after a restart (the failed local
// release says so). A build no node can give yet is tried again, backing
// off to a minute.
//
// A node that the placement leaves out (no target) stops an app it runs
// as a fleet app (its active local release is a fleet release) at once,
// through Node.Stop: every process type scaled to 0, recorded in the
// agent's store so a restart keeps it stopped; its local releases and
// builds stay. It then deletes its status record for the app, so `fleet
// status` and a rollout's waves no longer count it. Placed again, or
// reached by a rollout, it converges as usual: Apply starts the app again
// with its release's formation (switching first if the target is newer).
// Only a node whose own record is in the view stops anything: a node cut
// off from etcd, or not registered yet, keeps its view and what it runs.
// The desired state wins: a local deploy, config change or rollback of an
// app the fleet places on the node (through its socket) is replaced by
// the fleet's release at the next change of the view; apps the fleet
// does not know are the node's own and left alone.
//
// # Builds
//
// `berth fleet deploy` uploads the tarball once, to one node's build
// endpoint (PUT /v1/builds/<sha256>, TLS with Config.PeerTLS and a
// bearer token), which keeps it in Config.Dir and imports it. A node
// that lacks a build fetches it from the release's sources, then the
// other nodes, then the release's URL, and verifies its SHA-256 before
// it keeps or imports it.
//
// # A rollout
//
// A client starts a rollout with one transaction that succeeds only if
// the rollout and release records are unchanged since it read them and
// no rollout is running (so a second one is refused). The waves are the
// placed live nodes in name order, WaveSize (or MaxUnavailable) per wave.
// From then on the agents drive it: the app's rollout lock (a mutex
// under the holder's lease) says who. Trying it writes to etcd, so a node
// tries only while nobody holds it: the preferred node (rendezvous hash
// of the app over the live nodes) at once, any other after the rollout
// went a lease's time without a holder. The holder records itself as the driver and
// moves the rollout on, each step a transaction on the rollout record's
// revision that also requires the lock. The CLI may exit; if the driver
// dies its lease ends and another agent takes the lock and goes on from
// the recorded wave.
//
//	       start (txn: none running)
//	            |
//	            v
//	+-----> running, wave i ----- a node of wave i failed v ------> failed
//	|           |                 (Status.Failed), or wave i        (Reason; the
//	|           |                 not up within WaveTimeout          app's release
//	|           | every live node of wave i                          stays the
//	|           | reports v up (past its probation)                  previous one:
//	+-- i+1 ----+                                                    nodes of
//	            | it was the last wave                               waves 0..i
//	            v                                                    go back to it)
//	       succeeded (txn: the app's release := v, history v)
//
// A node of the wave that left the fleet (its lease ended) is not waited
// for; it runs the app's release when it returns.
//
// # When etcd is unreachable
//
// Nothing stops. The node keeps its view of the desired state as it was
// and runs what it runs; the agent restarts crashed processes as always.
// The watch resumes from the last revision it saw when etcd returns (and
// lists again if that revision was compacted); a lost lease is replaced
// by a new one and the node registers again and rewrites its statuses.
// Meanwhile its lease may end: the node drops out of nodes/ and new
// rollouts leave it out, and a rollout it drove passes to another agent.
package fleet
