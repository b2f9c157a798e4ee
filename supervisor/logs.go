package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Stored line format, one per line in the log files:
//
//	2026-11-26T13:43:46.123456Z stdout text of the line
//	2026-11-26T13:43:46.123456Z stderr+ first piece of a long line
//
// The time is UTC with microseconds (fixed width), the stream is stdout
// or stderr, and a "+" after it marks a piece that continues in the next
// piece of the same stream.
const (
	timeLayout   = "2006-01-02T15:04:05.000000Z"
	timeWidth    = len(timeLayout)
	lineOverhead = int64(timeWidth + len(" stdout+ ") + 1)
	readBufSize  = 1 << 20
	pipeSize     = 1 << 20
	maxQueued    = 8 << 20  // bytes of output that may wait for the disk per instance
	preallocMin  = 64 << 10 // writes at least this big allocate their blocks first
)

// pools holds the buffers of pipe readers, shared by all instances of a
// Supervisor: an idle pipe holds none.
type pools struct {
	bufs    sync.Pool // *[]byte of readBufSize: read buffers
	batches sync.Pool // *batch: formatted output of one read
}

func newPools() *pools {
	p := &pools{}
	p.bufs.New = func() any { b := make([]byte, readBufSize); return &b }
	p.batches.New = func() any { return &batch{} }
	return p
}

// batch is one chunk of output formatted for the file: out holds the
// stored lines, ends the end offset of each line in out. All lines of a
// batch come from one read of one pipe and share one timestamp, taken
// when the read returned: the prefix is formatted once per batch.
type batch struct {
	out  []byte
	ends []int
	// pre[:plain] is the prefix of a whole line, "TIME STREAM "; a piece
	// of a split line gets pre[:plain-1] and "+ ".
	pre   [timeWidth + len(" stdout+ ")]byte
	plain int
	now   time.Time
}

func (b *batch) reset(now time.Time, stream string) {
	b.out = b.out[:0]
	b.ends = b.ends[:0]
	b.now = now
	p := now.UTC().AppendFormat(b.pre[:0], timeLayout)
	p = append(p, ' ')
	p = append(p, stream...)
	p = append(p, ' ')
	b.plain = len(p)
}

func (b *batch) add(text []byte, split bool) {
	if split {
		b.out = append(b.out, b.pre[:b.plain-1]...)
		b.out = append(b.out, '+', ' ')
	} else {
		b.out = append(b.out, b.pre[:b.plain]...)
	}
	b.out = append(b.out, text...)
	b.out = append(b.out, '\n')
	b.ends = append(b.ends, len(b.out))
}

// line returns the i-th line of the batch.
func (b *batch) line(name string, i int) LogLine {
	start := 0
	if i > 0 {
		start = b.ends[i-1]
	}
	s := b.out[start+timeWidth+1 : b.ends[i]-1] // "stdout[+] text"
	l := LogLine{Name: name, Time: b.now, Stream: "stdout"}
	if s[3] == 'e' {
		l.Stream = "stderr"
	}
	s = s[6:]
	if s[0] == '+' {
		l.Split = true
		s = s[1:]
	}
	l.Text = string(s[1:])
	return l
}

// parseStored parses one stored line (without its newline).
func parseStored(s []byte) (LogLine, bool) {
	if len(s) < timeWidth+8 || s[timeWidth] != ' ' {
		return LogLine{Text: string(s)}, false
	}
	rest := s[timeWidth+1:]
	sp := bytes.IndexByte(rest, ' ')
	if sp < 0 {
		return LogLine{Text: string(s)}, false
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
		return LogLine{Text: string(s)}, false
	}
	t, err := time.Parse(timeLayout, string(s[:timeWidth]))
	if err != nil {
		return LogLine{Text: string(s)}, false
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
	if len(b.ends) == 0 {
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
	if cap(b.out) > 4*readBufSize {
		b.out, b.ends = nil, nil // do not keep a huge buffer in the pool
	}
	p.batches.Put(b)
}

// writeFile appends the batch to the log file, rotating at line
// boundaries so no file grows past MaxSize. Only the writer (see drain)
// calls it.
func (ls *logSink) writeFile(b *batch) {
	start := 0
	for start < len(b.out) {
		if ls.file == nil && !ls.open() {
			return
		}
		room := ls.cfg.MaxSize - ls.size
		end := len(b.out)
		if int64(end-start) > room {
			// The last line end that still fits.
			i := sort.Search(len(b.ends), func(i int) bool { return int64(b.ends[i]-start) > room })
			end = start
			if i > 0 && b.ends[i-1] > start {
				end = b.ends[i-1]
			}
		}
		if end > start {
			if end-start >= preallocMin && !ls.noPrealloc {
				ls.prealloc(end - start)
			}
			n, err := ls.file.Write(b.out[start:end])
			ls.size += int64(n)
			if err != nil {
				ls.fail("write log file", err)
				return
			}
			start = end
		}
		if start < len(b.out) {
			ls.rotate()
		}
	}
	ls.failed = false
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
	f, err := os.OpenFile(ls.cfg.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
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
	ls.file, ls.size = f, fi.Size()
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
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			ls.fail("rotate log file", err)
		}
		return
	}
	// Remove the oldest first, so no rename replaces an existing file:
	// ext4 flushes the data of a file renamed over another one
	// (auto_da_alloc), which would stall the writer on each rotation.
	oldest := fmt.Sprintf("%s.%d", p, ls.cfg.MaxFiles-1)
	if err := os.Remove(oldest); err != nil && !errors.Is(err, os.ErrNotExist) {
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

// close closes the file; later batches are dropped. Called once no pipe
// reader is left.
func (ls *logSink) close() {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for ls.writing {
		ls.cond.Wait()
	}
	ls.closed = true
	if ls.file != nil {
		ls.file.Close()
		ls.file = nil
	}
}

// segment is a copy of the last lines of a batch.
type segment struct {
	b batch // out, ends and now; pre unused
}

// remember keeps the last lines of b (at most m) in the ring and drops
// old segments no longer needed for m lines. Called with mu held.
func (ls *logSink) remember(b *batch, m int) {
	k := min(m, len(b.ends))
	start := 0
	if k < len(b.ends) {
		start = b.ends[len(b.ends)-k-1]
	}
	var seg segment
	// Reuse the oldest segment's buffers when it is no longer needed.
	if len(ls.ring) > 0 && ls.ringLines-len(ls.ring[0].b.ends)+k >= m {
		seg = ls.ring[0]
		ls.ringLines -= len(seg.b.ends)
		ls.ring[0] = segment{}
		ls.ring = ls.ring[1:]
	}
	seg.b.out = append(seg.b.out[:0], b.out[start:]...)
	seg.b.ends = seg.b.ends[:0]
	for _, e := range b.ends[len(b.ends)-k:] {
		seg.b.ends = append(seg.b.ends, e-start)
	}
	seg.b.now = b.now
	ls.ring = append(ls.ring, seg)
	ls.ringLines += k
	for len(ls.ring) > 1 && ls.ringLines-len(ls.ring[0].b.ends) >= m {
		ls.ringLines -= len(ls.ring[0].b.ends)
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
	out := make([]LogLine, n)
	i := n
	for si := len(ls.ring) - 1; si >= 0 && i > 0; si-- {
		seg := &ls.ring[si].b
		for li := len(seg.ends) - 1; li >= 0 && i > 0; li-- {
			i--
			out[i] = seg.line(ls.name, li)
		}
	}
	return out
}

// pipeReader turns the bytes of one pipe into stored lines.
type pipeReader struct {
	f       *os.File // read end, non-blocking, in the runtime poller
	stream  string   // "stdout" or "stderr"
	ls      *logSink
	maxLine int
	partial []byte // an unfinished line carried to the next chunk; nil when empty
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
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			if buf == nil {
				buf = p.ls.s.pools.bufs.Get().(*[]byte)
			}
			n, rerr = syscall.Read(int(fd), *buf)
			if rerr == syscall.EAGAIN {
				// Idle: wait in the runtime poller, holding no buffer.
				p.ls.s.pools.bufs.Put(buf)
				buf = nil
				return false
			}
			return true
		})
		if rerr == syscall.EINTR {
			continue
		}
		if err != nil || rerr != nil || n <= 0 {
			break
		}
		p.consume((*buf)[:n], time.Now())
	}
	if buf != nil {
		p.ls.s.pools.bufs.Put(buf)
	}
	p.flush(time.Now())
	p.f.Close()
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

// consume splits a chunk into lines and stores them as one batch.
func (p *pipeReader) consume(data []byte, now time.Time) {
	b := p.ls.s.pools.batches.Get().(*batch)
	b.reset(now, p.stream)
	// Pooled batches get room for a full read of 100-byte lines, so they
	// are rarely reallocated; shorter lines grow them by appending.
	if cap(b.out) == 0 {
		b.out = make([]byte, 0, readBufSize*3/2)
		b.ends = make([]int, 0, readBufSize/64)
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
	for {
		if data = p.formatLines(b, data); len(data) == 0 {
			break
		}
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

// formatLines adds the whole lines of up to maxLine bytes at the start
// of data to b, the common case kept tight: the batch's prefix, then the
// line with its newline. It returns the rest of data, which starts with
// a longer line or an unfinished one (or is empty).
func (p *pipeReader) formatLines(b *batch, data []byte) []byte {
	pre, out, ends := b.pre[:b.plain], b.out, b.ends
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 || i > p.maxLine {
			break
		}
		out = append(out, pre...)
		out = append(out, data[:i+1]...)
		ends = append(ends, len(out))
		data = data[i+1:]
	}
	b.out, b.ends = out, ends
	return data
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

// readStored parses the last n lines of one file (all if n <= 0),
// reading it backwards from the end so a short tail of a big file is
// cheap.
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
	const block = 64 << 10
	// Read blocks backwards, newest first, counting the newlines of each
	// block once, and join them once at the end.
	var chunks [][]byte
	size, newlines := 0, 0
	for off > 0 && (n <= 0 || newlines <= n) {
		k := min(off, block)
		if n <= 0 {
			k = off
		}
		off -= k
		chunk := make([]byte, k)
		if _, err := f.ReadAt(chunk, off); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read log %s: %w", path, err)
		}
		chunks = append(chunks, chunk)
		size += len(chunk)
		newlines += bytes.Count(chunk, []byte{'\n'})
	}
	var data []byte
	if len(chunks) == 1 {
		data = chunks[0]
	} else if len(chunks) > 1 {
		data = make([]byte, 0, size)
		for i := len(chunks) - 1; i >= 0; i-- {
			data = append(data, chunks[i]...)
		}
	}
	if off > 0 { // the first line is cut: drop it
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	data = bytes.TrimSuffix(data, []byte{'\n'})
	if len(data) == 0 {
		return nil, nil
	}
	raw := bytes.Split(data, []byte{'\n'})
	if n > 0 && len(raw) > n {
		raw = raw[len(raw)-n:]
	}
	lines := make([]LogLine, len(raw))
	for i, r := range raw {
		lines[i], _ = parseStored(r)
	}
	return lines, nil
}
