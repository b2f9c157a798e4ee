/*
Command berth is both the berth agent and the CLI that talks to it.

`berth agent` is the daemon (run by systemd): it serves the control socket
and keeps every app's active release running. Every other command talks to
the agent over its unix socket: --socket, else $BERTH_SOCKET, else
/run/berth/berth.sock as root or $XDG_RUNTIME_DIR/berth/berth.sock. App
commands take the app with -a APP, else $BERTH_APP.

	berth agent [flags]                 run the agent (berth agent --help lists its settings)
	berth apps                          list apps
	berth apps create NAME              create an app with nothing deployed
	berth apps destroy NAME --confirm NAME
	berth apps set-user NAME USER       run the app as USER ("" for the agent's default)
	berth deploy FILE [--digest D]      upload a tarball ("-" for stdin), release it, wait
	                                    until its processes are up (--wait: and through
	                                    the probation, which otherwise goes on in the
	                                    agent; also for rollback and config set/unset)
	berth releases                      list releases, newest first
	berth releases info vN              one release with its config and release-phase output
	berth rollback [vN]                 release vN's build and config again (default: the
	                                    release before the active one)
	berth config                        print the config as KEY=VALUE lines
	berth config get KEY
	berth config set KEY=VALUE...       new release with the vars set, processes restarted
	berth config unset KEY...           new release with the vars removed
	berth scale TYPE=N...               set instance counts; other instances keep running
	berth ps                            processes of the app (of every app without -a)
	berth restart [TYPE|INSTANCE]       restart all, one type (web) or one instance (web.1),
	                                    types at once, a type's instances one at a time, each up
	                                    before the next stops
	berth logs [-n N] [--since T] [--release vN] [-f] [INSTANCE]
	                                    the last N lines of stored output (across restarts
	                                    and releases, running or not), from T on, of vN
	                                    only; follow new lines with -f (skips told on stderr)
	berth events [-f] [-n N]            the last N events (of the app with -a), and follow
	berth version                       the CLI's and the agent's versions
	berth run [--] COMMAND [ARG...]     run a one-off command in the active release, its
	                                    output streamed; exit with its exit code
	berth systemd unit [flags]          print berth.service (and berth.socket with --socket-activation)
	berth systemd install [flags]       write the units, create the socket group, enable and start berth
	berth fleet deploy FILE [--via NODE] [--url URL]
	                                    fleet mode (etcd from --etcd or $BERTH_ETCD): upload
	                                    the tarball to one node and roll it out in waves
	berth fleet config set|unset ...    a new fleet release with the config changed, in waves
	berth fleet rollback [vN]           roll out vN's build and config again (default: the
	                                    fleet release before the current one)
	berth fleet status                  the fleet release, its rollout, each node's state
	berth fleet nodes                   the nodes registered in etcd
	berth fleet placement [--labels k=v,...] [--count N]
	                                    which nodes run the app (from its next rollout on)

The rollout commands take --wave-size N or --max-unavailable N (default: one
wave) and --wait (follow the rollout, which the agents drive, to its end;
exit 1 if it failed). A second rollout of an app while one runs is refused.

# Exit codes

0 success; 1 failure (the agent refused or failed the request, or cannot be
reached: the message says where the CLI looked and how to start the agent);
2 usage error (a bad flag, argument, app name, KEY=VALUE or TYPE=N, found
before the agent is asked). berth run exits with its command's exit code
(128+N when signal N killed it).

# Output

Human output is aligned tables with relative times ("3m ago", uptime
"2h5m"); steps of deploy, config and rollback are printed with their
timings as they happen, and an upload shows progress on stderr when stderr
is a terminal.

With --json, stdout carries the API's types (package
github.com/berth-dev/berth/agent/api, types.go) with their JSON tags, which
are stable within API version v1:

	apps                       []App
	apps create, set-user      App
	apps destroy               {"destroyed": NAME}
	deploy, rollback, config set/unset
	                           Release (the new active one, its probation "watching"
	                           or "passed"; progress is not printed)
	releases                   []Release (config_keys only)
	releases info              Release (with config and output)
	config                     {KEY: VALUE}
	config get                 {KEY: VALUE}
	scale, ps                  []Process
	restart                    {"app": APP, "target": TARGET}
	logs                       LogLine per line (NDJSON), also with -f; a line
	                           after some a follower skipped has "missed": N
	events                     Event per line (NDJSON), also with -f
	version                    {"cli": VERSION, "agent": AgentInfo, "error": MESSAGE}
	run                        the command's output as it is, then
	                           {"app": APP, "instance": "run.N", "exit": RunExit}
	fleet deploy, config, rollback
	                           fleet.Rollout (package agent/fleet): the rollout
	                           started, or with --wait the one that ended
	fleet status               fleet.AppStatus
	fleet nodes                []fleet.NodeInfo

Errors go to stderr as "berth: MESSAGE" in both modes.

# The agent

`berth agent` takes each setting as a flag or as a BERTH_* environment
variable (BERTH_DATA_DIR, BERTH_SOCKET, BERTH_SOCKET_GROUP,
BERTH_DEFAULT_USER, BERTH_BASE_PORT, BERTH_STOP_TIMEOUT, BERTH_RETENTION,
BERTH_LOG_MAX_SIZE, BERTH_LOG_MAX_FILES, BERTH_ALLOW_ENV,
BERTH_LOCK_TIMEOUT, BERTH_START_TIMEOUT, BERTH_SETTLE, BERTH_PROBATION, BERTH_RELEASE_TIMEOUT,
BERTH_INBOX_QUIET, BERTH_METRICS_LISTEN, BERTH_JOURNAL, BERTH_LOG_LEVEL, BERTH_LOG_FORMAT,
BERTH_ENV_FILE; fleet mode: BERTH_ETCD, BERTH_ETCD_CERT, BERTH_ETCD_KEY,
BERTH_ETCD_CA, BERTH_ETCD_USER, BERTH_ETCD_PREFIX, BERTH_NODE, BERTH_LABELS,
BERTH_FLEET_LISTEN, BERTH_FLEET_ADVERTISE, BERTH_FLEET_CERT, BERTH_FLEET_KEY,
BERTH_FLEET_CA, and from the environment only BERTH_ETCD_PASSWORD and
BERTH_FLEET_TOKEN). Without --etcd the agent uses no etcd. A flag wins over the environment, which wins over the
--env-file, which wins over the default. SIGINT and SIGTERM stop every app
gracefully and exit 0, except that under systemd a restart of the unit
leaves the apps running for the next agent to adopt; SIGHUP re-reads the
settings (the env file included) and applies those that can change at run
time; SIGUSR2 upgrades in place: the agent hands its apps over and
re-executes its binary (possibly a new version at the same path) in the
same process, which adopts them (`systemctl reload berth` sends it).
*/
package main
