// Package e2e is fleet mode's end-to-end suite (`make e2e-fleet`, build
// tag e2e_fleet): three agents, each in a network namespace of its own,
// follow one desired state in a real etcd (Debian's etcd-server package).
//
// Topology, all made by the suite and removed after it:
//
//	hub namespace:   bridge 10.201.0.1/24, etcd on 10.201.0.1:2379, the
//	                 load client and the CLI
//	node namespaces: n1, n2, n3 at 10.201.0.11-13, each on a veth pair to
//	                 the bridge, each with `berth agent --etcd ...`
//
// Nothing touches the host's own network: the bridge lives in the hub
// namespace. The suite checks a deploy in waves of one, a bad release
// rolled back fleet-wide before it reaches the second wave, and a 30 s
// etcd outage during which every app answers every request.
package e2e
