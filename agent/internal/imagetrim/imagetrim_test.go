package imagetrim

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const size = 4 << 20

// mapFile writes a file of size bytes of fill and returns it with its
// identity.
func mapFile(t *testing.T, fill byte) (*os.File, File) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image")
	if err := os.WriteFile(path, bytes.Repeat([]byte{fill}, size), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return f, File{Dev: uint64(st.Dev), Ino: st.Ino}
}

func segments(t *testing.T, file File) []Segment {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	segs, err := ParseSmaps(f, file)
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

// sink keeps the compiler from dropping a touch whose sum is unused.
var sink int

// touch reads every page of m and returns the sum of the bytes read.
func touch(m []byte) (sum int) {
	for i := 0; i < len(m); i += 4096 {
		sum += int(m[i])
	}
	return sum
}

// TestTrimFile_ReleasesReadOnlyMapping maps a file read-only and
// private, as the loader maps an executable's text, reads all of it,
// and trims it: none of it stays resident, and reading it again gives
// the same bytes (back from the page cache).
func TestTrimFile_ReleasesReadOnlyMapping(t *testing.T) {
	f, id := mapFile(t, 7)
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	want := touch(m)
	before := segments(t, id)
	if len(before) != 1 || before[0].Rss != size || before[0].Perms != "r--p" {
		t.Fatalf("before the trim: %+v", before)
	}
	released, segs, err := TrimFile(id)
	if err != nil {
		t.Fatal(err)
	}
	if released != size || len(segs) != 1 {
		t.Fatalf("released %d bytes of %+v, want %d", released, segs, size)
	}
	if after := segments(t, id); after[0].Rss != 0 {
		t.Fatalf("%d KiB still resident after the trim", after[0].Rss>>10)
	}
	if got := touch(m); got != want {
		t.Fatalf("the mapping reads %d after the trim, %d before", got, want)
	}
}

// TestTrimFile_KeepsPrivatePages ensures what MADV_DONTNEED would
// destroy is never trimmed: a writable mapping, and a read-only one
// that holds a copy-on-write page (written, then made read-only, as a
// dynamic loader does with relocations). Their contents survive.
func TestTrimFile_KeepsPrivatePages(t *testing.T) {
	f, id := mapFile(t, 1)
	rw, err := unix.Mmap(int(f.Fd()), 0, size/2, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(rw)
	relro, err := unix.Mmap(int(f.Fd()), size/2, size/2, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(relro)
	rw[0], relro[0] = 42, 43
	if err := unix.Mprotect(relro, unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	sink = touch(rw) + touch(relro)
	released, segs, err := TrimFile(id)
	if err != nil {
		t.Fatal(err)
	}
	if released != 0 || len(segs) != 2 {
		t.Fatalf("released %d bytes of %+v", released, segs)
	}
	for _, s := range segs {
		if Releasable(s) {
			t.Errorf("segment %+v counted releasable", s)
		}
	}
	if rw[0] != 42 || relro[0] != 43 {
		t.Fatalf("private pages lost: %d, %d", rw[0], relro[0])
	}
	if after := segments(t, id); after[0].Rss+after[1].Rss != size {
		t.Fatalf("resident after the trim: %+v", after)
	}
}

// TestTrim_OwnExecutable trims the test binary itself: its text and
// read-only data are found and trimmed, its writable data is not, and
// the program runs on.
func TestTrim_OwnExecutable(t *testing.T) {
	released, segs, err := Trim()
	if err != nil {
		t.Fatal(err)
	}
	var text, rodata, data bool
	for _, s := range segs {
		t.Logf("%x-%x %s rss %d KiB (anonymous %d KiB)", s.Start, s.End, s.Perms, s.Rss>>10, s.Anonymous>>10)
		switch {
		case s.Perms == "r-xp":
			text = Releasable(s)
		case s.Perms == "r--p":
			rodata = Releasable(s)
		case strings.Contains(s.Perms, "w"):
			data = true
			if Releasable(s) {
				t.Errorf("writable segment %s counted releasable", s.Perms)
			}
		}
	}
	if !text || !rodata || !data || released == 0 {
		t.Fatalf("text %v, rodata %v, data %v; released %d bytes", text, rodata, data, released)
	}
}

func TestParseSmaps(t *testing.T) {
	const smaps = `00400000-00d79000 r-xp 00000000 fe:00 10125917                           /usr/bin/berth
Size:               9700 kB
Rss:                8288 kB
Anonymous:             0 kB
00d79000-0182d000 r--p 00979000 fe:00 10125917                           /usr/bin/berth
Rss:                7756 kB
Anonymous:             4 kB
0182d000-018b0000 rw-p 0142d000 fe:00 10125917                           /usr/bin/berth
Rss:                 396 kB
Anonymous:           136 kB
7f0000000000-7f0000001000 r--p 00000000 fe:01 10125917                   /other/device
Rss:                   4 kB
7ffd0000-7ffd1000 rw-p 00000000 00:00 0                                  [stack]
Rss:                   4 kB
`
	segs, err := ParseSmaps(strings.NewReader(smaps), File{Dev: unix.Mkdev(0xfe, 0), Ino: 10125917})
	if err != nil {
		t.Fatal(err)
	}
	want := []Segment{
		{Start: 0x400000, End: 0xd79000, Perms: "r-xp", Rss: 8288 << 10},
		{Start: 0xd79000, End: 0x182d000, Perms: "r--p", Rss: 7756 << 10, Anonymous: 4 << 10},
		{Start: 0x182d000, End: 0x18b0000, Perms: "rw-p", Rss: 396 << 10, Anonymous: 136 << 10},
	}
	if len(segs) != len(want) {
		t.Fatalf("got %+v", segs)
	}
	for i := range want {
		if segs[i] != want[i] {
			t.Errorf("segment %d: got %+v, want %+v", i, segs[i], want[i])
		}
	}
	if !Releasable(segs[0]) || Releasable(segs[1]) || Releasable(segs[2]) {
		t.Errorf("releasable: %v %v %v", Releasable(segs[0]), Releasable(segs[1]), Releasable(segs[2]))
	}
	if _, err := ParseSmaps(strings.NewReader("zz-00 r--p 0 fe:00 1 /x\n"), File{Ino: 1}); err == nil {
		t.Error("a malformed mapping line was accepted")
	}
}
