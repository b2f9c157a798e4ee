// Package procfs reads what the agent needs to know about processes and
// sockets from the kernel: a process's state, process group and start
// time (/proc/<pid>/stat), the walk of /proc, the sockets of
// /proc/net/tcp and tcp6, the NETLINK_SOCK_DIAG lookup of one TCP
// connection, and which process group holds a socket (/proc/<pid>/fd).
//
// Every parser takes bytes (or an io.Reader) apart from the function that
// reads the file or the socket, so that it can be tested and fuzzed on
// its own; the fuzz targets run with `make fuzz`.
//
// It is a leaf: it must not import any package of berth.
package procfs
