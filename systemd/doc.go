// Package systemd is berth's side of systemd: sd_notify, the watchdog,
// socket activation, cgroup containment, the journal, and rendering and
// installing the unit files.
//
// It must not import other berth packages.
package systemd
