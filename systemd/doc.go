// Package systemd is berth's side of systemd: sd_notify, the watchdog,
// socket activation, the file descriptor store, cgroup containment, the
// journal, and rendering and installing the unit files.
//
// # Apps outlive the agent
//
// The unit has KillMode=process: systemd signals the agent only, never
// its apps. What happens to the apps on each event:
//
//	systemctl stop berth     SIGTERM; the agent finds a stop job
//	                         (WhyStopping) and stops every app with its
//	                         stop signal, then exits; systemd empties
//	                         the fd store.
//	systemctl restart berth  SIGTERM; the agent finds a restart job and
//	                         exits leaving its apps running; the next
//	                         agent gets their pipes and sockets back
//	                         from the fd store (Inherit) and adopts them.
//	crash, kill -9, watchdog the apps keep running; systemd restarts the
//	                         agent (Restart=always), which adopts them.
//	systemctl reload berth   ExecReload sends SIGUSR2: the agent sends
//	                         RELOADING=1, hands its apps over and
//	                         re-executes its binary (a new version at
//	                         the same path) in the same process, which
//	                         adopts them and sends READY=1.
//	host shutdown            SIGTERM while the system is stopping
//	                         (`systemctl is-system-running`): the apps
//	                         are stopped with their stop signal.
//
// The agent keeps each app process's output pipes and each listening
// socket it owns in the fd store (StoreFiles, FDPOLL=0 so a pipe whose
// writer died keeps its last lines) as soon as they exist, and removes
// them (RemoveFiles) once they are closed; FileDescriptorStoreMax= in
// the unit bounds them.
//
// It must not import other berth packages.
package systemd
