// Package e2e holds the `make e2e-systemd` suite (build tag e2e_systemd):
// it boots a real systemd in systemd-nspawn, in a Debian root made by
// debootstrap, and checks that berth installed as a systemd service
// brings its apps back after crashes, a frozen agent, reboots and a power
// cut.
package e2e
