package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Stored format of the log files. A header line, which starts with the
// ASCII record separator (0x1E, shown here as ␞), gives the time and the
// stream of the lines that follow it, up to the next header; the lines
// themselves are stored as the app wrote them:
//
//	␞2026-11-26T13:43:46.123456Z stdout
//	text of a line
//	another line from the same read
//	␞2026-11-26T13:43:46.130001Z stderr+
//	first piece of a long line
//	␞2026-11-26T13:43:46.130001Z stderr
//	its last piece
//
// The time is UTC with microseconds (fixed width): when the read that
// got the lines returned, so the lines of one read share one header. A
// "+" after the stream marks lines that are pieces of a longer line,
// each continued in the next. A line the app started with the record
// separator is stored with one more in front, so it never reads as a
// header. Every file starts with a header and can be read on its own.
//
// The format keeps the file a plain text file (grep, less and tail -f
// show the app's lines) and costs a header per read, not a prefix per
// line: a file holds a third more of 100-byte lines than with a stamp on
// each, and capture writes that much less.
const (
	recordSep    = 0x1e
	timeLayout   = "2006-01-02T15:04:05.000000Z"
	timeWidth    = len(timeLayout)
	headerMax    = len("\x1e") + timeWidth + len(" stdout+\n")
	lineOverhead = int64(headerMax + 2) // a header, an escape and a newline
	readBufSize  = 1 << 20
	headroom     = 4 << 10 // before the read data in a read buffer (see consumeBuf)
	pipeSize     = 1 << 20
	maxQueued    = 8 << 20  // bytes of output that may wait for the disk per instance
	preallocMin  = 64 << 10 // writes at least this big allocate their blocks first
)

// pools holds the buffers of pipe readers, shared by all instances of a
// Supervisor: an idle pipe holds none.
type pools struct {
	bufs    sync.Pool // *[]byte of headroom+readBufSize: read buffers
	batches sync.Pool // *batch: formatted output of one read
}

func newPools() *pools {
	p := &pools{}
	p.bufs.New = func() any { b := make([]byte, headroom+readBufSize); return &b }
	p.batches.New = func() any { return &batch{} }
	return p
}

// batch is one chunk of output in the stored format: the lines of one
// read of one pipe, which share one timestamp, taken when the read
// returned. out starts with a header; hdrs holds the offset of each
// header line in out (a second one appears only around pieces of a long
// line).
type batch struct {
	out  []byte
	hdrs []int
	// own is the batch's buffer; out is own[:n], or a view of read, a
	// read buffer the batch has taken over (see consumeBuf).
	own  []byte
	read *[]byte
	// stamp is the header of whole lines, "␞TIME STREAM\n"; a header of
	// pieces is stamp without its newline, then "+\n".
	stamp [headerMax]byte
	plain int  // len of the header in stamp
	split int8 // the split flag of the last header in out; -1 for none
}

func (b *batch) reset(now time.Time, stream string) {
	b.out = b.own[:0]
	b.hdrs = b.hdrs[:0]
	b.split = -1
	p := append(b.stamp[:0], recordSep)
	p = now.UTC().AppendFormat(p, timeLayout)
	p = append(p, ' ')
	p = append(p, stream...)
	p = append(p, '\n')
	b.plain = len(p)
}

// header starts lines with the given split flag, adding a header unless
// the last one has that flag.
func (b *batch) header(split bool) {
	var f int8
	if split {
		f = 1
	}
	if b.split == f {
		return
	}
	b.split = f
	b.hdrs = append(b.hdrs, len(b.out))
	if split {
		b.out = append(b.out, b.stamp[:b.plain-1]...)
		b.out = append(b.out, '+', '\n')
	} else {
		b.out = append(b.out, b.stamp[:b.plain]...)
	}
}

// add stores one line (or piece) of text, escaping a leading separator.
func (b *batch) add(text []byte, split bool) {
	b.header(split)
	if len(text) > 0 && text[0] == recordSep {
		b.out = append(b.out, recordSep)
	}
	b.out = append(b.out, text...)
	b.out = append(b.out, '\n')
}

// addLines stores whole lines, each with its newline, that need no
// escape and no split (see plainLines): one copy for all of them.
func (b *batch) addLines(lines []byte) {
	b.header(false)
	b.out = append(b.out, lines...)
}

// headerAt returns the header line in force at offset off of out, and
// its offset.
func (b *batch) headerAt(off int) (int, []byte) {
	i := sort.SearchInts(b.hdrs, off+1) - 1 // the last header at or before off
	h := b.hdrs[i]
	return h, b.out[h : h+bytes.IndexByte(b.out[h:], '\n')+1]
}

// lineParser reads stored lines in order, keeping the header in force.
type lineParser struct {
	name   string
	legacy bool // lines before the first header may be in the old format
	have   bool // a header has been read
	time   time.Time
	stream string
	split  bool
}

// parse reads stored lines (each ending in a newline but perhaps the
// last) and calls fn with each line of output, in order.
func (p *lineParser) parse(data []byte, fn func(LogLine)) {
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			i = len(data)
		}
		if l, ok := p.line(data[:i]); ok {
			fn(l)
		}
		data = data[min(i+1, len(data)):]
	}
}

// line parses one stored line without its newline: a header is taken in
// (ok false), anything else is a line of output. Lines before the first
// header have no time or stream, unless they are in the one-line format
// of earlier versions (legacy) and the reader is at a file's start.
func (p *lineParser) line(s []byte) (LogLine, bool) {
	if len(s) > 0 && s[0] == recordSep {
		if len(s) > 1 && s[1] == recordSep {
			s = s[1:]
		} else if p.header(s) {
			return LogLine{}, false
		}
		// An unreadable header is kept as text.
	}
	if !p.have {
		if p.legacy {
			if l, ok := parseLegacy(s); ok {
				l.Name = p.name
				return l, true
			}
		}
		return LogLine{Name: p.name, Text: string(s)}, true
	}
	return LogLine{Name: p.name, Time: p.time, Stream: p.stream, Split: p.split, Text: string(s)}, true
}

// header takes in a header line (without its newline) if it is one.
func (p *lineParser) header(s []byte) bool {
	if !isHeader(s) {
		return false
	}
	t, err := time.Parse(timeLayout, string(s[1:1+timeWidth]))
	if err != nil {
		return false
	}
	p.have, p.time = true, t
	p.stream, p.split = "stdout", s[len(s)-1] == '+'
	if s[2+timeWidth+3] == 'e' {
		p.stream = "stderr"
	}
	return true
}

// isHeader reports whether a stored line (without its newline) has the
// shape of a header; header parses the time.
func isHeader(s []byte) bool {
	if len(s) < 1+timeWidth+7 || s[0] != recordSep || s[1] == recordSep || s[1+timeWidth] != ' ' {
		return false
	}
	st := s[2+timeWidth:]
	if st[len(st)-1] == '+' {
		st = st[:len(st)-1]
	}
	return string(st) == "stdout" || string(st) == "stderr"
}

// parseLegacy parses one line in the format of earlier versions, with a
// stamp on each line: "TIME STREAM[+] text".
func parseLegacy(s []byte) (LogLine, bool) {
	if len(s) < timeWidth+8 || s[timeWidth] != ' ' {
		return LogLine{}, false
	}
	rest := s[timeWidth+1:]
	sp := bytes.IndexByte(rest, ' ')
	if sp < 0 {
		return LogLine{}, false
	}
	stream, split := rest[:sp], false
	if n := len(stream); n > 0 && stream[n-1] == '+' {
		stream, split = stream[:n-1], true
	}
	var l LogLine
	switch string(stream) {
	case "stdout":
		l.Stream = "stdout"
	case "stderr":
		l.Stream = "stderr"
	default:
		return LogLine{}, false
	}
	t, err := time.Parse(timeLayout, string(s[:timeWidth]))
	if err != nil {
		return LogLine{}, false
	}
	l.Time, l.Split, l.Text = t, split, string(rest[sp+1:])
	return l, true
}

// logSink is where all output of one instance goes, across restarts: the
// log file, the in-memory ring, followers and Config.Sink.
type logSink struct {
	s    *Supervisor
	name string
	cfg  LogConfig

	// file, size and failed belong to the writer: the one pipe reader
	// at a time that has set writing (see drain); close takes them over
	// once it has finished.
	file   *os.File // nil until the first line, or after a failed open
	size   int64
	failed bool // the last open or write failed: logged once
	// noPrealloc is set once the file system refused fallocate.
	noPrealloc bool
	// torn is set when the file may not end with a newline (a failed
	// write, a crash): the next write starts with one, so its header
	// starts a line.
	torn bool
	// reclaim tracks the goroutines giving back the blocks of rotated-out
	// files (see discard); close waits for them.
	reclaim sync.WaitGroup

	mu      sync.Mutex // guards the fields below; taken by pipe readers per chunk
	cond    *sync.Cond // on mu: signals queue progress and the writer's end
	queue   []*batch   // formatted batches waiting for the writer
	queued  int        // bytes in queue
	writing bool       // a pipe reader is writing queued batches (drain)
	// ring keeps the most recent lines for Tail as copies of formatted
	// batches (one copy per chunk read, not one allocation per line):
	// segments are dropped from the front once the rest hold Memory lines.
	ring      []segment
	ringLines int
	spare     []byte // the buffer of the last segment dropped, for the next one
	closed    bool
}

func newLogSink(s *Supervisor, name string, cfg LogConfig) *logSink {
	ls := &logSink{s: s, name: name, cfg: cfg}
	ls.cond = sync.NewCond(&ls.mu)
	return ls
}

// store hands a formatted batch to the ring, the followers, the sink and
// the file, and takes ownership of b. It never blocks on a reader of the
// output. The calling pipe reader writes the file itself unless the
// other stream's reader is writing; then it queues b and waits only when
// more than maxQueued bytes are waiting for the disk. Either way a disk
// slower than the app slows the app down instead of losing lines.
func (ls *logSink) store(b *batch) {
	if len(b.out) == 0 {
		ls.s.pools.releaseBatch(b)
		return
	}
	if ls.s.nfollow.Load() > 0 || ls.s.cfg.Sink != nil {
		ls.s.deliverLines(ls, b)
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.closed {
		ls.s.pools.releaseBatch(b)
		return
	}
	if m := ls.cfg.Memory; m > 0 {
		ls.remember(b, m)
	}
	if ls.cfg.Path == "" {
		ls.s.pools.releaseBatch(b)
		return
	}
	ls.queue = append(ls.queue, b)
	ls.queued += len(b.out)
	if !ls.writing {
		// This reader writes until the queue is empty: the batch it has
		// just formatted is still in the CPU's cache, and no goroutine
		// is handed work. A reader that finds another one writing (the
		// other stream) queues its batch and returns to its pipe.
		ls.writing = true
		ls.drain()
		return
	}
	for ls.queued > maxQueued && !ls.closed {
		ls.cond.Wait()
	}
}

// drain writes queued batches to the file until the queue is empty.
// Called with mu held and writing set by the caller, which becomes the
// writer; mu is released while writing and held again on return.
func (ls *logSink) drain() {
	for len(ls.queue) > 0 {
		q := ls.queue
		ls.queue = nil
		ls.mu.Unlock()
		n := 0
		for _, b := range q {
			ls.writeFile(b)
			n += len(b.out)
			ls.s.pools.releaseBatch(b)
		}
		ls.mu.Lock()
		ls.queued -= n
		ls.cond.Broadcast()
	}
	ls.writing = false
	ls.cond.Broadcast()
}

func (p *pools) releaseBatch(b *batch) {
	if b.read != nil {
		p.bufs.Put(b.read)
		b.read = nil
	} else {
		b.own = b.out[:0] // keep what appends grew
	}
	if cap(b.own) > 4*readBufSize {
		b.own, b.hdrs = nil, nil // do not keep a huge buffer in the pool
	}
	b.out = nil
	p.batches.Put(b)
}

// writeFile appends the batch to the log file, rotating at line
// boundaries so no file grows past MaxSize; a file started in the middle
// of the batch gets the header in force there first. Only the writer
// (see drain) calls it.
func (ls *logSink) writeFile(b *batch) {
	out := b.out
	for start := 0; start < len(out); {
		if ls.file == nil && !ls.open() {
			return
		}
		var hdr []byte
		if at, h := b.headerAt(start); at != start {
			hdr = h
		}
		if ls.torn {
			hdr = append([]byte{'\n'}, hdr...)
		}
		room := ls.cfg.MaxSize - ls.size - int64(len(hdr))
		end := len(out)
		if int64(end-start) > room {
			// The last line end that still fits.
			end = start
			if room > 0 {
				end += bytes.LastIndexByte(out[start:start+int(room)], '\n') + 1
			}
			if end == start && ls.size == 0 {
				// Validate keeps a line within an empty file; never loop.
				end += bytes.IndexByte(out[start:], '\n') + 1
			}
		}
		if end > start {
			if n := len(hdr) + end - start; n >= preallocMin && !ls.noPrealloc {
				ls.prealloc(n)
			}
			if len(hdr) > 0 && !ls.put(hdr) {
				return
			}
			if !ls.put(out[start:end]) {
				return
			}
			start = end
		}
		if start < len(out) {
			ls.rotate()
		}
	}
	ls.failed = false
}

// put appends p to the file.
func (ls *logSink) put(p []byte) bool {
	n, err := ls.file.Write(p)
	ls.size += int64(n)
	if err != nil {
		if n > 0 {
			ls.torn = true
		}
		ls.fail("write log file", err)
		return false
	}
	ls.torn = false
	return true
}

// prealloc allocates the n bytes the next write appends, without
// changing the file's size, so the write fills allocated (unwritten)
// blocks: on ext4 that costs a third less CPU than a delayed-allocation
// write of the same bytes, which reserves and maps every page. Nothing
// is allocated beyond what is written next, so an idle instance's file
// holds no spare blocks. Best effort: a file system without fallocate
// is not asked again, and any other error leaves it to the write.
func (ls *logSink) prealloc(n int) {
	err := unix.Fallocate(int(ls.file.Fd()), unix.FALLOC_FL_KEEP_SIZE, ls.size, int64(n))
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		ls.noPrealloc = true
	}
}

func (ls *logSink) fail(op string, err error) {
	if !ls.failed {
		ls.s.log.Warn("log output lost", "instance", ls.name, "op", op, "error", err)
	}
	ls.failed = true
}

func (ls *logSink) open() bool {
	if err := os.MkdirAll(filepath.Dir(ls.cfg.Path), 0o750); err != nil {
		ls.fail("create log directory", err)
		return false
	}
	f, err := os.OpenFile(ls.cfg.Path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		ls.fail("open log file", err)
		return false
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		ls.fail("stat log file", err)
		return false
	}
	ls.file, ls.size, ls.torn = f, fi.Size(), false
	if ls.size > 0 {
		// A crash may have cut the last line (and a full disk a write).
		var last [1]byte
		if _, err := f.ReadAt(last[:], ls.size-1); err != nil || last[0] != '\n' {
			ls.torn = true
		}
	}
	return true
}

// rotate shifts path.N-2 to path.N-1, ..., path to path.1. The next
// write opens a fresh path.
func (ls *logSink) rotate() {
	if ls.file != nil {
		ls.file.Close()
		ls.file = nil
	}
	p := ls.cfg.Path
	if ls.cfg.MaxFiles <= 1 {
		if err := ls.discard(p); err != nil {
			ls.fail("rotate log file", err)
		}
		return
	}
	// Remove the oldest first, so no rename replaces an existing file:
	// ext4 flushes the data of a file renamed over another one
	// (auto_da_alloc), which would stall the writer on each rotation.
	if err := ls.discard(fmt.Sprintf("%s.%d", p, ls.cfg.MaxFiles-1)); err != nil {
		ls.fail("rotate log file", err)
	}
	for i := ls.cfg.MaxFiles - 1; i >= 2; i-- {
		if err := os.Rename(fmt.Sprintf("%s.%d", p, i-1), fmt.Sprintf("%s.%d", p, i)); err != nil && !errors.Is(err, os.ErrNotExist) {
			ls.fail("rotate log file", err)
		}
	}
	if err := os.Rename(p, p+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		ls.fail("rotate log file", err)
	}
}

// discard removes the file at path (absent is fine) and leaves freeing
// its blocks and page cache to another goroutine: the kernel frees them
// at the last close of an unlinked file, so the writer unlinks while it
// holds the file open and a goroutine closes it. Freeing a 10 MiB file
// costs as much CPU as writing a few MiB, which would otherwise stall the
// writer, and with it the app, at every rotation. A crash in between
// loses nothing: the kernel closes the descriptor and frees the file.
func (ls *logSink) discard(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		// Not openable (a dangling link, no permission): unlink it here.
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
		unix.Close(fd)
		return &os.PathError{Op: "remove", Path: path, Err: err}
	}
	ls.reclaim.Go(func() { unix.Close(fd) })
	return nil
}

// close closes the file; later batches are dropped. Called once no pipe
// reader is left. It returns once rotated-out files are freed.
func (ls *logSink) close() {
	ls.mu.Lock()
	for ls.writing {
		ls.cond.Wait()
	}
	ls.closed = true
	if ls.file != nil {
		ls.file.Close()
		ls.file = nil
	}
	ls.mu.Unlock()
	ls.reclaim.Wait()
}

// segment is a copy of the last lines of a batch in the stored format,
// starting with a header.
type segment struct {
	out   []byte
	lines int // lines of output in out
}

// remember keeps the last lines of b (at least m of them, or all) in the
// ring and drops old segments no longer needed for m lines. Called with
// mu held. It copies the smallest power-of-two tail (from 64 KiB) that
// holds m lines, found with vector counts of newlines, rather than
// walking back line by line: at most twice the bytes, few instructions.
func (ls *logSink) remember(b *batch, m int) {
	start, k := 0, 0
	for w := 64 << 10; ; w *= 2 {
		if w >= len(b.out) {
			k = bytes.Count(b.out, []byte{'\n'}) - len(b.hdrs)
			break
		}
		// Enough whole lines of output even if all headers are in it.
		if c := bytes.Count(b.out[len(b.out)-w:], []byte{'\n'}); c > m+len(b.hdrs) {
			start = len(b.out) - w
			start += bytes.IndexByte(b.out[start:], '\n') + 1 // the first whole line
			k = c - 1
			for _, h := range b.hdrs {
				if h >= start {
					k--
				}
			}
			break
		}
	}
	var seg segment
	// Reuse the oldest segment's buffer when it is no longer needed.
	if len(ls.ring) > 0 && ls.ringLines-ls.ring[0].lines+k >= m {
		seg = ls.ring[0]
		ls.ringLines -= seg.lines
		ls.ring[0] = segment{}
		ls.ring = ls.ring[1:]
	}
	var h []byte
	if at, hdr := b.headerAt(start); at != start {
		h = hdr
	}
	if need := len(h) + len(b.out) - start; cap(seg.out) < need {
		if cap(ls.spare) >= need {
			seg.out, ls.spare = ls.spare, nil
		} else {
			// Sizes vary with every read: grow to a power of two, so
			// a reused buffer rarely needs growing again.
			seg.out = make([]byte, 0, 1<<bits.Len(uint(need)))
		}
	}
	seg.out = append(seg.out[:0], h...)
	seg.out = append(seg.out, b.out[start:]...)
	seg.lines = k
	ls.ring = append(ls.ring, seg)
	ls.ringLines += k
	for len(ls.ring) > 1 && ls.ringLines-ls.ring[0].lines >= m {
		ls.ringLines -= ls.ring[0].lines
		if cap(ls.ring[0].out) > cap(ls.spare) {
			ls.spare = ls.ring[0].out
		}
		ls.ring[0] = segment{}
		ls.ring = ls.ring[1:]
	}
}

// tail returns the last n lines kept in memory (all if n <= 0), oldest
// first.
func (ls *logSink) tail(n int) []LogLine {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	total := min(ls.ringLines, ls.cfg.Memory)
	if n <= 0 || n > total {
		n = total
	}
	// The newest segments that hold n lines, parsed in order.
	si, have := len(ls.ring), 0
	for si > 0 && have < n {
		si--
		have += ls.ring[si].lines
	}
	out := make([]LogLine, 0, have)
	for _, seg := range ls.ring[si:] {
		p := lineParser{name: ls.name}
		p.parse(seg.out, func(l LogLine) { out = append(out, l) })
	}
	return out[len(out)-n:]
}

// pipeReader turns the bytes of one pipe into stored lines.
type pipeReader struct {
	f       *os.File // read end, non-blocking, in the runtime poller
	stream  string   // "stdout" or "stderr"
	ls      *logSink
	maxLine int
	partial []byte // an unfinished line carried to the next chunk; nil when empty
	// detach, once set (and the read deadline passed, to wake the
	// reader), ends run after the read in progress without closing f:
	// the pipe is handed to the next supervisor (Detach).
	detach atomic.Bool
}

// run reads until EOF or until f is closed under it, then stores the
// trailing partial line. A read buffer is held only while data flows.
func (p *pipeReader) run() {
	rc, err := p.f.SyscallConn()
	if err != nil {
		p.f.Close()
		return
	}
	var buf *[]byte
	first := true
	for eof := false; !eof && !p.detach.Load(); {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			if first {
				// Most pipes are idle at start: ask before taking a
				// buffer, so starting many instances does not pass
				// a read buffer through each of them.
				first = false
				if !pipeReady(int(fd)) {
					return false
				}
			}
			if buf == nil {
				buf = p.ls.s.pools.bufs.Get().(*[]byte)
			}
			n, eof, rerr = readChunks(int(fd), (*buf)[headroom:])
			if n == 0 && rerr == syscall.EAGAIN {
				// Idle: wait in the runtime poller, holding no buffer.
				p.ls.s.pools.bufs.Put(buf)
				buf = nil
				return false
			}
			return true
		})
		if n > 0 && p.consumeBuf(buf, n, time.Now()) {
			buf = nil // a batch has it now
		}
		if err != nil || (rerr != nil && rerr != syscall.EAGAIN) {
			break
		}
	}
	if buf != nil {
		p.ls.s.pools.bufs.Put(buf)
	}
	p.flush(time.Now())
	if !p.detach.Load() {
		p.f.Close()
	}
}

// pipeReady reports whether a read of the pipe fd would not block: it
// holds data, or its write end is closed. Without an answer (an error)
// it reports true, and the read itself tells.
func pipeReady(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, 0)
	return err != nil || n > 0
}

// readChunk is the most one read takes from a pipe: the kernel holds the
// pipe's lock while it copies, and the app cannot write meanwhile, so a
// full buffer is filled by several shorter reads.
const readChunk = 128 << 10

// readChunks fills buf from the pipe fd in reads of at most readChunk
// bytes, until buf is full, the pipe has no more (a short read, or
// EAGAIN), or end of file (eof). EINTR is retried.
func readChunks(fd int, buf []byte) (n int, eof bool, err error) {
	for n < len(buf) {
		want := min(len(buf), n+readChunk)
		k, err := syscall.Read(fd, buf[n:want])
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			return n, false, err
		case k == 0:
			return n, true, nil
		}
		n += k
		if n < want {
			return n, false, nil
		}
	}
	return n, false, nil
}

// flush stores the trailing partial line, if any, at the end of output.
func (p *pipeReader) flush(now time.Time) {
	if len(p.partial) > 0 {
		b := p.ls.s.pools.batches.Get().(*batch)
		b.reset(now, p.stream)
		b.add(p.partial, false)
		p.ls.store(b)
		p.partial = nil
	}
}

// consumeBuf stores the n bytes read into (*buf)[headroom:], like
// consume. In the common case, whole lines that need no escape or split
// (and perhaps the end of a line begun in the last read), it copies
// nothing: it puts the header and the line's beginning in the headroom
// before the data, and the batch takes the buffer over (it reports
// true; the caller gets another).
func (p *pipeReader) consumeBuf(buf *[]byte, n int, now time.Time) bool {
	data := (*buf)[headroom : headroom+n]
	first := 0 // length of the line that ends one begun in the last read
	if len(p.partial) > 0 {
		first = bytes.IndexByte(data, '\n') + 1
		if first == 0 || len(p.partial)+first-1 > p.maxLine || p.partial[0] == recordSep ||
			len(p.partial)+headerMax > headroom {
			p.consume(data, now)
			return false
		}
	}
	end := first + p.plainLines(data[first:])
	if end == 0 || bytes.LastIndexByte(data, '\n')+1 != end || len(data)-end > p.maxLine {
		p.consume(data, now) // a line to split or escape
		return false
	}
	b := p.ls.s.pools.batches.Get().(*batch)
	b.reset(now, p.stream)
	start := headroom - len(p.partial)
	copy((*buf)[start:], p.partial)
	start -= b.plain
	copy((*buf)[start:], b.stamp[:b.plain])
	b.out, b.read = (*buf)[start:headroom+end], buf
	b.hdrs = append(b.hdrs, 0)
	b.split = 0
	p.partial = nil
	if end < len(data) {
		p.carry(nil, data[end:]) // shorter than maxLine: nothing to store
	}
	p.ls.store(b)
	return true
}

// consume splits a chunk into lines and stores them as one batch.
func (p *pipeReader) consume(data []byte, now time.Time) {
	b := p.ls.s.pools.batches.Get().(*batch)
	b.reset(now, p.stream)
	// Pooled batches get room for a full read and a few headers, so
	// they are rarely reallocated.
	if cap(b.out) == 0 {
		b.own = make([]byte, 0, readBufSize+4<<10)
		b.out = b.own
	}
	if len(p.partial) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			p.carry(b, data)
			p.ls.store(b)
			return
		}
		p.partial = append(p.partial, data[:i]...)
		p.emit(b, p.partial)
		p.partial = nil
		data = data[i+1:]
	}
	for len(data) > 0 {
		if n := p.plainLines(data); n > 0 {
			b.addLines(data[:n])
			data = data[n:]
			continue
		}
		// A line to split or escape, or an unfinished one.
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			p.carry(b, data)
			break
		}
		p.emit(b, data[:i])
		data = data[i+1:]
	}
	p.ls.store(b)
}

// plainLines returns the length of the longest start of data made of
// whole lines that are stored as they are: none longer than maxLine,
// none starting with the record separator. This is the common case, and
// it looks at few bytes per line: one vector scan for the separator, and
// per maxLine bytes of output one backward scan for the last newline
// (every maxLine+1 bytes from a line start hold a newline unless that
// line is too long).
func (p *pipeReader) plainLines(data []byte) int {
	data = data[:bytes.LastIndexByte(data, '\n')+1]
	for from := 0; ; {
		i := bytes.IndexByte(data[from:], recordSep)
		if i < 0 {
			break
		}
		if i += from; i == 0 || data[i-1] == '\n' {
			data = data[:i]
			break
		}
		from = i + 1
	}
	for start := 0; start < len(data); {
		q := bytes.LastIndexByte(data[start:min(len(data), start+p.maxLine+1)], '\n')
		if q < 0 {
			return start // the line at start is too long
		}
		start += q + 1
	}
	return len(data)
}

// emit adds a whole line, split into marked pieces if it is too long.
func (p *pipeReader) emit(b *batch, line []byte) {
	for len(line) > p.maxLine {
		b.add(line[:p.maxLine], true)
		line = line[p.maxLine:]
	}
	b.add(line, false)
}

// carry keeps an unfinished line for the next chunk; pieces beyond
// maxLine are stored already, marked split.
func (p *pipeReader) carry(b *batch, data []byte) {
	p.partial = append(p.partial, data...)
	for len(p.partial) > p.maxLine {
		b.add(p.partial[:p.maxLine], true)
		p.partial = append(p.partial[:0], p.partial[p.maxLine:]...)
	}
}

// ReadLogFile returns the last n lines (all if n <= 0) stored in the log
// file at path and its rotated predecessors path.1, path.2, ..., oldest
// first. It is meant for instances no longer running. The lines carry no
// Name. A line that does not parse is returned whole as Text with no
// Stream.
func ReadLogFile(path string, n int) ([]LogLine, error) {
	var files []string
	if _, err := os.Stat(path); err == nil {
		files = append(files, path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read log %s: %w", path, err)
	}
	for i := 1; ; i++ {
		p := fmt.Sprintf("%s.%d", path, i)
		if _, err := os.Stat(p); err != nil {
			break
		}
		files = append(files, p)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("read log %s: %w", path, os.ErrNotExist)
	}
	var out []LogLine // newest file first, reversed at the end
	for _, p := range files {
		lines, err := readStored(p, n-len(out))
		if err != nil {
			return nil, err
		}
		for i := len(lines) - 1; i >= 0; i-- {
			out = append(out, lines[i])
			if n > 0 && len(out) == n {
				break
			}
		}
		if n > 0 && len(out) == n {
			break
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// readStored returns the last n lines of output stored in one file (all
// if n <= 0). For a tail it reads the file backwards in growing blocks
// until they hold n lines and the header before them, so the tail of a
// big file is cheap.
func readStored(path string, n int) ([]LogLine, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read log %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read log %s: %w", path, err)
	}
	off := fi.Size()
	var data []byte
	for block := int64(64 << 10); ; block *= 2 {
		k := off
		if n > 0 {
			k = min(off, block)
		}
		off -= k
		buf := make([]byte, int(k)+len(data))
		if _, err := f.ReadAt(buf[:k], off); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read log %s: %w", path, err)
		}
		copy(buf[k:], data)
		data = buf
		region := data
		if off > 0 { // the first line may be cut: drop it
			i := bytes.IndexByte(region, '\n')
			if i < 0 {
				continue
			}
			region = region[i+1:]
		}
		var lines []LogLine
		keep := func(l LogLine) { lines = append(lines, l) }
		p := lineParser{legacy: off == 0}
		if n > 0 {
			if hdr, from, ok := tailStart(region, n); ok {
				p.parse(region[hdr:hdr+bytes.IndexByte(region[hdr:], '\n')+1], keep)
				region = region[from:]
			} else if off > 0 {
				continue
			}
		}
		p.parse(region, keep)
		if n > 0 && len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		return lines, nil
	}
}

// tailStart finds, in whole stored lines, where the last n lines of
// output start (from) and the header in force there (hdr). ok is false
// if they are not all there or no header comes before them.
func tailStart(region []byte, n int) (hdr, from int, ok bool) {
	r := bytes.TrimSuffix(region, []byte{'\n'})
	count := 0
	for e := len(r); ; {
		s := bytes.LastIndexByte(r[:e], '\n') + 1
		if isHeader(r[s:e]) {
			if count >= n {
				return s, from, true
			}
		} else if count < n {
			count++
			from = s
		}
		if s == 0 {
			return 0, 0, false
		}
		e = s - 1
	}
}
