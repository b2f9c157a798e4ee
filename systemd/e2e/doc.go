// Package e2e holds the `make e2e-systemd` suite (build tag e2e_systemd):
// it boots a real systemd with systemd-nspawn in a Debian 12 root made by
// debootstrap, installs bin/berth as a systemd service and checks that the
// agent and its apps come back after a reboot, a kill -9 of the agent or
// of an app, a frozen agent (watchdog) and a power cut in the middle of a
// deploy; that a stop leaves no process behind; and that socket
// activation holds the socket while the agent restarts.
//
// It needs root, debootstrap, systemd-container (systemd-nspawn) and
// nsenter, and Debian's mirror (the one apt uses here). The root is built
// once into .cache/nspawn-root (remove it to rebuild) and copied for each
// run. BERTH_E2E_BINARY points the suite at another berth binary.
//
// The power cut kills the container's PID 1 with SIGKILL: every process
// dies at once, with no shutdown. The container's files live on the host,
// so writes the kernel had cached are not lost as they would be on a real
// power cut (this kernel has no device-mapper for dm-flakey).
package e2e
