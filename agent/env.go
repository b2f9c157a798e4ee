package agent

import (
	"fmt"
	"maps"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/berth-dev/berth/state"
	"golang.org/x/sys/unix"
)

// passEnv names the variables of the agent's own environment that every
// app process gets; Config.AllowEnv adds more.
var passEnv = []string{"PATH", "LANG", "TZ"}

// envParams is everything a process environment is made of.
type envParams struct {
	Config   map[string]string // the release's config
	App      string
	Version  int
	Instance string // web.1
	Build    string // digest
	Port     int    // 0: no PORT (the release phase)
	TmpDir   string
	Allow    []string                    // names allowed from the agent's env besides passEnv
	Host     func(string) (string, bool) // the agent's env; os.LookupEnv
}

// processEnv builds the environment of one app process: variables passed
// through from the agent's environment, then the release's config, then
// what berth sets itself (PORT, BERTH_*, TMPDIR). HOME defaults to the
// writable TMPDIR unless the config sets it. The result is sorted.
func processEnv(p envParams) []string {
	env := map[string]string{}
	host := p.Host
	if host == nil {
		host = os.LookupEnv
	}
	for _, name := range slices.Concat(passEnv, p.Allow) {
		if v, ok := host(name); ok {
			env[name] = v
		}
	}
	maps.Copy(env, p.Config)
	if _, ok := p.Config["HOME"]; !ok {
		env["HOME"] = p.TmpDir
	}
	env["TMPDIR"] = p.TmpDir
	if p.Port > 0 {
		env["PORT"] = strconv.Itoa(p.Port)
	} else {
		delete(env, "PORT") // the release phase serves nothing
	}
	env["BERTH_APP"] = p.App
	env["BERTH_RELEASE"] = "v" + strconv.Itoa(p.Version)
	env["BERTH_PROCESS"] = p.Instance
	env["BERTH_BUILD"] = p.Build
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// reservedEnv reports whether a config var name is set by berth itself
// and so cannot be configured.
func reservedEnv(name string) bool {
	return name == "PORT" || name == "TMPDIR" || strings.HasPrefix(name, "BERTH_")
}

// runAs is the identity app processes run with.
type runAs struct {
	Name string
	Cred *syscall.Credential // nil: the agent's own identity
	UID  int
	GID  int
	Own  bool // the app's own uid from Config.AppUIDs
}

// identity returns the identity app's processes run as. As root, an app
// without a user of its own (apps set-user) and with no
// Config.DefaultUser runs as its own uid, allocated once from
// Config.AppUIDs (skipping uids and gids the host knows) and kept in the
// store until the app is destroyed, with the same number as its gid and
// no supplementary groups. Otherwise resolveUser decides.
func (a *Agent) identity(cfg Config, app state.App) (runAs, error) {
	if app.User != "" || cfg.DefaultUser != "" || os.Geteuid() != 0 {
		return resolveUser(app.User, cfg.DefaultUser)
	}
	uid, err := a.store.AppUID(app.Name, cfg.AppUIDs, hostHasID)
	if err != nil {
		return runAs{}, err
	}
	return runAs{
		Name: strconv.Itoa(uid),
		// Groups empty: setgroups(0), none of the agent's groups.
		Cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}},
		UID:  uid, GID: uid, Own: true,
	}, nil
}

// hostHasID reports whether a user or a group of the host has the id, so
// that an app never gets the uid of a real user nor the gid of a group.
func hostHasID(id int) bool {
	s := strconv.Itoa(id)
	if _, err := user.LookupId(s); err == nil {
		return true
	}
	_, err := user.LookupGroupId(s)
	return err == nil
}

// liveUIDs returns every uid an app's processes may run as now: the
// apps' own uids and the users set for them (or the default user).
func (a *Agent) liveUIDs() (map[int]bool, error) {
	cfg := a.config()
	apps, err := a.store.Apps()
	if err != nil {
		return nil, err
	}
	own, err := a.store.AppUIDs()
	if err != nil {
		return nil, err
	}
	live := map[int]bool{}
	for _, uid := range own {
		live[uid] = true
	}
	for _, app := range apps {
		if app.User == "" && cfg.DefaultUser == "" {
			continue
		}
		if who, err := resolveUser(app.User, cfg.DefaultUser); err == nil {
			live[who.UID] = true
		}
	}
	return live, nil
}

// resolveUser turns an app's user ("" for the default) into the identity
// its processes run as. As root, the app's user or defaultUser is looked
// up with os/user (uid, gid and supplementary groups); root itself only
// when the app's user is explicitly "root". Not as root, processes run as
// the agent's own user, and any other user is an error.
func resolveUser(appUser, defaultUser string) (runAs, error) {
	name := appUser
	if name == "" {
		name = defaultUser
	}
	if os.Geteuid() != 0 {
		self, err := user.Current()
		if err != nil {
			return runAs{}, fmt.Errorf("look up the agent's own user: %w", err)
		}
		if name != "" && name != self.Username && name != self.Uid {
			return runAs{}, fmt.Errorf("user %q: the agent runs as %q (not root) and can only run apps as itself", name, self.Username)
		}
		return runAs{Name: self.Username, UID: os.Geteuid(), GID: os.Getegid()}, nil
	}
	if name == "root" && appUser != "root" {
		return runAs{}, fmt.Errorf("default user %q: apps run as root only when an app's user is set to root explicitly", name)
	}
	u, err := lookupUser(name)
	if err != nil {
		return runAs{}, err
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return runAs{}, fmt.Errorf("user %q has a non-numeric uid %q or gid %q", name, u.Uid, u.Gid)
	}
	if uid == 0 && appUser != "root" {
		return runAs{}, fmt.Errorf("user %q has uid 0: apps run as root only when an app's user is set to root explicitly", name)
	}
	var groups []uint32
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil && g != gid {
				groups = append(groups, uint32(g))
			}
		}
	}
	return runAs{
		Name: u.Username,
		Cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups},
		UID:  int(uid),
		GID:  int(gid),
	}, nil
}

// lookupUser finds a user by name or numeric uid.
func lookupUser(name string) (*user.User, error) {
	u, err := user.Lookup(name)
	if err == nil {
		return u, nil
	}
	if _, perr := strconv.Atoi(name); perr == nil {
		if u, err := user.LookupId(name); err == nil {
			return u, nil
		}
	}
	return nil, fmt.Errorf("user %q does not exist on this host: %w", name, err)
}

// lookupGroup resolves a socket group: a name or a numeric gid; "" means
// the group "berth" if it exists (and, when the agent is not root, the
// agent is a member, so it may give the socket to it), else the agent's
// primary group.
func lookupGroup(name string) (int, error) {
	if name == "" {
		if g, err := user.LookupGroup("berth"); err == nil {
			if gid, err := strconv.Atoi(g.Gid); err == nil && (os.Geteuid() == 0 || inGroup(gid)) {
				return gid, nil
			}
		}
		return os.Getegid(), nil
	}
	if gid, err := strconv.Atoi(name); err == nil && gid >= 0 {
		return gid, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("socket group %q: %w", name, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("socket group %q has a non-numeric gid %q", name, g.Gid)
	}
	return gid, nil
}

// parseSignal turns "SIGTERM", "TERM" or "15" into a signal; "" is SIGTERM.
func parseSignal(s string) (syscall.Signal, error) {
	if s == "" {
		return syscall.SIGTERM, nil
	}
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown stop signal %q", s)
}

// inGroup reports whether the agent's process is in the group.
func inGroup(gid int) bool {
	if os.Getegid() == gid {
		return true
	}
	groups, err := os.Getgroups()
	return err == nil && slices.Contains(groups, gid)
}
