package procfs

import (
	"os"
	"strconv"
)

// GroupHolds reports whether a process of the process group pgid (its
// leader first, then any worker it forked) has the socket inode among its
// open files.
func GroupHolds(pgid int, inode uint64) bool {
	if pgid <= 0 || inode == 0 {
		return false
	}
	return PIDHolds(pgid, inode) || AnyInGroup(pgid, func(pid int, _ Stat) bool { return pid != pgid && PIDHolds(pid, inode) })
}

// PIDHolds reports whether one of pid's open files (/proc/<pid>/fd) is
// the socket inode.
func PIDHolds(pid int, inode uint64) bool {
	link := "socket:[" + strconv.FormatUint(inode, 10) + "]"
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if l, err := os.Readlink(dir + e.Name()); err == nil && l == link {
			return true
		}
	}
	return false
}
