// Package imagetrim gives back the pages of the agent's own executable
// that only its start-up and its rare operations touched.
//
// A Go binary runs every package's init function before main, and those
// functions are spread over the whole text segment. The kernel maps file
// pages around each fault (fault-around, 64 KiB by default), so once
// the agent has started, most of its executable (16 MiB of a 30 MiB
// binary) stays mapped in its page tables for good, although an idle
// agent runs a fraction of a megabyte of it. That is what a reading of
// its PSS then shows.
//
// Trim removes the agent's mappings of those pages with
// madvise(MADV_DONTNEED) on the executable's read-only, file-backed
// segments (text, rodata, pclntab). The pages stay in the page cache:
// the code the agent runs afterwards comes back as minor faults, with no
// disk read, and the kernel can reclaim the rest like any cached file. A
// segment holding a private (copy-on-write) page is left alone, since
// MADV_DONTNEED would discard that page; writable segments are never
// touched.
package imagetrim

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Segment is one mapping of the executable that Trim considered.
type Segment struct {
	Start, End uint64
	Perms      string
	Rss        uint64 // bytes resident before the trim
	Anonymous  uint64 // private (copy-on-write) bytes; > 0 means skipped
}

// Trim releases the agent's mappings of its executable's read-only
// segments and returns the segments it found and the bytes it released.
func Trim() (released uint64, segs []Segment, err error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/exe", &st); err != nil {
		return 0, nil, fmt.Errorf("stat own executable: %w", err)
	}
	return TrimFile(File{Dev: uint64(st.Dev), Ino: st.Ino})
}

// TrimFile releases this process's mappings of file's releasable
// segments (see Releasable).
func TrimFile(file File) (released uint64, segs []Segment, err error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, nil, err
	}
	segs, err = ParseSmaps(f, file)
	f.Close()
	if err != nil {
		return 0, nil, err
	}
	for _, s := range segs {
		if !Releasable(s) {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(s.Start), uintptr(s.End-s.Start), unix.MADV_DONTNEED); errno != 0 {
			return released, segs, fmt.Errorf("madvise %x-%x: %w", s.Start, s.End, errno)
		}
		released += s.Rss
	}
	return released, segs, nil
}

// Releasable says whether Trim may drop a segment's mappings: it is
// read-only and private, and holds no copy-on-write page.
func Releasable(s Segment) bool {
	return len(s.Perms) == 4 && s.Perms[0] == 'r' && s.Perms[1] == '-' && s.Perms[3] == 'p' && s.Anonymous == 0
}

// File names a file by device and inode, as stat(2) gives them.
type File struct{ Dev, Ino uint64 }

// ParseSmaps returns the mappings of file listed in a /proc/<pid>/smaps
// file.
func ParseSmaps(r io.Reader, file File) ([]Segment, error) {
	dev := fmt.Sprintf("%02x:%02x", unix.Major(file.Dev), unix.Minor(file.Dev))
	var segs []Segment
	var cur *Segment
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		f := bytes.Fields(line)
		if len(f) >= 5 && bytes.IndexByte(f[0], '-') > 0 && !bytes.HasSuffix(f[0], []byte(":")) {
			// A mapping header: "start-end perms offset dev inode [path]".
			cur = nil
			lo, hi, _ := bytes.Cut(f[0], []byte("-"))
			start, err1 := strconv.ParseUint(string(lo), 16, 64)
			end, err2 := strconv.ParseUint(string(hi), 16, 64)
			n, err3 := strconv.ParseUint(string(f[4]), 10, 64)
			if err1 != nil || err2 != nil || err3 != nil || end <= start {
				return nil, fmt.Errorf("malformed smaps mapping line %q", line)
			}
			if n == file.Ino && file.Ino != 0 && string(f[3]) == dev {
				segs = append(segs, Segment{Start: start, End: end, Perms: string(f[1])})
				cur = &segs[len(segs)-1]
			}
			continue
		}
		if cur == nil || len(f) != 3 || string(f[2]) != "kB" {
			continue
		}
		var dst *uint64
		switch string(f[0]) {
		case "Rss:":
			dst = &cur.Rss
		case "Anonymous:":
			dst = &cur.Anonymous
		default:
			continue
		}
		kb, err := strconv.ParseUint(string(f[1]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("malformed smaps line %q", line)
		}
		*dst = kb << 10
	}
	return segs, sc.Err()
}
