package supervisor

// Escaped processes are those an instance started that left its process
// group (setsid, setpgid): a signal to the group misses them. Stop,
// Restart, RestartUnhealthy and the clean-up after an exit find them in
// /proc and stop them with the group, so nothing an instance started
// outlives it, with or without a Container.
//
// A process is the instance's when it is a descendant of this process
// (with Config.Subreaper, orphans are reparented here, so every process an
// instance started stays one) and either
//
//   - its chain of parents leads to the instance's running process (found
//     while that process is still alive, before it is signalled), or
//   - its environment holds every one of the spec's Markers with the
//     value Spec.Env gives it (an orphan whose parents are gone).
//
// Each one found is held by a pidfd opened while its start time is
// checked again, so a signal never reaches a process that took a reused
// pid.

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pstat is what escape detection reads of /proc/<pid>/stat.
type pstat struct {
	ppid, pgid int
	start      uint64 // start time, clock ticks after boot
	zombie     bool
}

// readStat parses /proc/<pid>/stat.
func readStat(pid int) (pstat, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return pstat{}, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return pstat{}, false
	}
	// After the command: state ppid pgrp session tty tpgid flags minflt
	// cminflt majflt cmajflt utime stime cutime cstime priority nice
	// num_threads itrealvalue starttime.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return pstat{}, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	pgid, err2 := strconv.Atoi(f[2])
	start, err3 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return pstat{}, false
	}
	return pstat{ppid: ppid, pgid: pgid, start: start, zombie: f[0] == "Z"}, true
}

// markerValues returns the "KEY=value" entries of env named by markers,
// nil if a marker is not in env (then nothing can match).
func markerValues(env, markers []string) []string {
	if len(markers) == 0 {
		return nil
	}
	out := make([]string, 0, len(markers))
	for _, m := range markers {
		found := ""
		for _, kv := range env {
			if k, _, _ := strings.Cut(kv, "="); k == m {
				found = kv // the last one wins, as for getenv
			}
		}
		if found == "" {
			return nil
		}
		out = append(out, found)
	}
	return out
}

// environHas reports whether the initial environment of pid holds every
// entry of want.
func environHas(pid int, want []string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	have := make(map[string]string, len(want))
	for kv := range bytes.SplitSeq(b, []byte{0}) {
		k, v, ok := bytes.Cut(kv, []byte{'='})
		if ok {
			have[string(k)] = string(v)
		}
	}
	for _, kv := range want {
		k, v, _ := strings.Cut(kv, "=")
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// descendants returns the stat of every descendant of root, found by
// walking down the /proc/<pid>/task/<tid>/children lists, without
// entering the subtree of a process skip names (it is listed itself)
// and without reading a process passed names at all (it is not listed).
// Only this process's descendants are read, not every process of the
// host. ok is false when the kernel has no children lists. The kernel
// may miss a child forked or reparented during the read: Stop looks
// again once the group is gone (stopEscaped).
func descendants(root int, pass func(pid int) bool, skip func(pid int, st pstat) bool) (map[int]pstat, bool) {
	stats := map[int]pstat{}
	queue, ok := children(root)
	if !ok {
		return nil, false
	}
	for len(queue) > 0 {
		pid := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if _, seen := stats[pid]; seen || (pass != nil && pass(pid)) {
			continue
		}
		st, ok := readStat(pid)
		if !ok {
			continue // gone
		}
		stats[pid] = st
		if skip(pid, st) {
			continue
		}
		kids, _ := children(pid)
		queue = append(queue, kids...)
	}
	return stats, true
}

// children returns the pids of pid's children, from the children list
// of each of its threads; ok is false when the kernel has none, or pid
// is gone.
func children(pid int) ([]int, bool) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil, false
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(dir + t.Name() + "/children")
		if errors.Is(err, os.ErrNotExist) {
			if _, serr := os.Stat(dir + t.Name()); serr == nil {
				return nil, false // no CONFIG_PROC_CHILDREN
			}
			continue // the thread is gone
		}
		for f := range strings.FieldsSeq(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out, true
}

// allProcs is descendants' fallback: the stat of every process but
// self, from a walk of /proc.
func allProcs(self int) (map[int]pstat, bool) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, false
	}
	stats := make(map[int]pstat, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if st, ok := readStat(pid); ok {
			stats[pid] = st
		}
	}
	return stats, true
}

// escapee is a process found to be an instance's, held by its pidfd.
type escapee struct {
	pid int
	fd  int
}

// findEscaped returns the live processes outside process group leader
// (0: no process runs) that are the instance's by ancestry through
// leader or by its markers (see the top of this file). leaderExited is
// checked after the walk: if the leader was reaped meanwhile its pid may
// have been reused, and the ancestry found through it is dropped.
// The caller closes the escapees with closeEscapees.
//
// started reports whether a pid is a process the supervisor started and
// has not reaped (an instance's or a command's): a process in the group
// of another one is that one's, and its environment is not read, so a
// stop costs little however many instances run.
func findEscaped(leader int, leaderExited <-chan struct{}, markers []string, started func(pid int) bool) []escapee {
	if leader == 0 && len(markers) == 0 {
		return nil
	}
	self := os.Getpid()
	ownGroup := syscall.Getpgrp()
	// The subtree of another instance's process is that instance's: it is
	// not walked (what escaped from it stays its child until it dies).
	other := func(pid int, st pstat) bool {
		return pid != leader && st.pgid != leader && started != nil && started(st.pgid)
	}
	// Another instance's running process itself (a child of this process
	// the supervisor started) is not even read: walking from this
	// process, a stop would otherwise read the stat of every instance's
	// process, and a restart of all n instances n times n of them. It
	// would not be a candidate either: it leads its own group, or
	// left it, and either way what it is and starts is its instance's.
	otherLeader := func(pid int) bool {
		return pid != leader && started != nil && started(pid)
	}
	// Without markers only the leader's subtree can hold its escapees
	// (an orphan is known by its markers alone): the agent's other
	// children are not looked at.
	root := self
	if len(markers) == 0 {
		root = leader
	}
	stats, ok := descendants(root, otherLeader, other)
	if ok && root == leader {
		if st, found := readStat(leader); found {
			stats[leader] = st
		}
	}
	if !ok && root == leader {
		if _, alive := readStat(leader); !alive {
			return nil // gone: without markers there is nothing to go by
		}
	}
	if !ok {
		stats, ok = allProcs(self)
		if !ok {
			return nil
		}
	}
	// via reports whether pid descends from self, and whether its chain
	// passes through leader on the way.
	via := func(pid int) (ours, throughLeader bool) {
		for range 4096 { // bounded: a pid chain cannot be longer than pid_max, but be safe
			st, ok := stats[pid]
			if !ok {
				return false, false
			}
			if st.ppid == self {
				return true, throughLeader
			}
			if st.ppid == leader && leader != 0 {
				throughLeader = true
			}
			pid = st.ppid
		}
		return false, false
	}
	type cand struct {
		pid       int
		start     uint64
		chainOnly bool // found through leader, not by markers
	}
	var cands []cand
	for pid, st := range stats {
		if st.zombie || st.pgid == ownGroup || (leader != 0 && st.pgid == leader) || pid == leader {
			continue // the group's members are signalled through the group
		}
		if started != nil && started(st.pgid) {
			continue // in the group of another process the supervisor runs
		}
		ours, chain := via(pid)
		if !ours {
			continue
		}
		marked := len(markers) > 0 && environHas(pid, markers)
		if chain || marked {
			cands = append(cands, cand{pid, st.start, !marked})
		}
	}
	leaderGone := false
	if leaderExited != nil {
		select {
		case <-leaderExited:
			leaderGone = true
		default:
		}
	}
	var out []escapee
	for _, c := range cands {
		if c.chainOnly && leaderGone {
			continue // found only through a pid that may have been reused
		}
		fd, err := unix.PidfdOpen(c.pid, 0)
		if err != nil {
			continue // gone
		}
		if st, ok := readStat(c.pid); !ok || st.start != c.start || st.zombie {
			unix.Close(fd) // another process took the pid
			continue
		}
		out = append(out, escapee{pid: c.pid, fd: fd})
	}
	return out
}

// signalEscapees sends sig (and SIGCONT after a catchable one) to each.
func signalEscapees(es []escapee, sig syscall.Signal) {
	for _, e := range es {
		unix.PidfdSendSignal(e.fd, sig, nil, 0)
		if sig != syscall.SIGKILL && sig != syscall.SIGCONT {
			unix.PidfdSendSignal(e.fd, syscall.SIGCONT, nil, 0)
		}
	}
}

// waitEscapees waits until every escapee has exited, SIGKILLs those left
// at deadline, and returns once all are gone (bounded: a process in
// uninterruptible sleep may outlive a SIGKILL for a while, so it gives up
// killAfter past the deadline with an error). ctx ending kills them at
// once and returns its error.
func waitEscapees(ctx context.Context, es []escapee, deadline time.Time) error {
	const killAfter = 10 * time.Second
	killed := false
	for {
		left := es[:0:0]
		pfds := make([]unix.PollFd, 0, len(es))
		for _, e := range es {
			pfds = append(pfds, unix.PollFd{Fd: int32(e.fd), Events: unix.POLLIN})
		}
		if len(pfds) > 0 {
			if _, err := unix.Poll(pfds, 0); err != nil && !errors.Is(err, unix.EINTR) {
				return err
			}
		}
		for i, e := range es {
			if pfds[i].Revents == 0 {
				left = append(left, e)
			}
		}
		es = left
		if len(es) == 0 {
			return nil
		}
		if ctx.Err() != nil {
			signalEscapees(es, syscall.SIGKILL)
			return ctx.Err()
		}
		now := time.Now()
		if !killed && !now.Before(deadline) {
			signalEscapees(es, syscall.SIGKILL)
			killed = true
		}
		if killed && now.After(deadline.Add(killAfter)) {
			return errors.New(strconv.Itoa(len(es)) + " process(es) that left the group did not exit after SIGKILL")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func closeEscapees(es []escapee) {
	for _, e := range es {
		unix.Close(e.fd)
	}
}

// stopEscaped finds the instance's processes that left its group (by
// markers only: its own process has exited), SIGKILLs them and waits
// until they are gone. It is the clean-up after an exit, before the
// restart, and the final sweep of a stop (for what an escaped process
// forked while being stopped).
func (in *instance) stopEscaped(ctx context.Context) {
	if len(in.markers) == 0 {
		return
	}
	es := findEscaped(0, nil, in.markers, in.s.r.known)
	defer closeEscapees(es)
	if len(es) == 0 {
		return
	}
	in.s.log.Warn("killing processes that left the instance's process group", "instance", in.spec.Name, "count", len(es))
	signalEscapees(es, syscall.SIGKILL)
	if err := waitEscapees(ctx, es, time.Now()); err != nil {
		in.s.log.Warn("processes that left the group", "instance", in.spec.Name, "error", err)
	}
}
