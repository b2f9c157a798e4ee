package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Stored format of the log files: one record per line, each with the
// time, the tag (the agent's release), the stream and the text, so grep,
// tail -f and sort show each line whole with its time:
//
//	2026-12-02T23:10:00.123456Z v3 out hello world
//	2026-12-02T23:10:00.123456Z v3 err+ first piece of a long line
//	2026-12-02T23:10:00.123456Z v3 err its last piece
//	2026-12-02T23:10:01.000020Z v3 out% output that ended without a newline
//
// Fields are separated by one space:
//
//   - TIME: UTC with microseconds, fixed width: when the read that got
//     the line returned (the lines of one read share it).
//   - TAG: LogConfig.Tag, "-" when empty; never holds a space.
//   - STREAM: "out" or "err", then perhaps one flag: "+" marks a piece of
//     a line longer than LogConfig.MaxLine, which continues in the next
//     record of that stream ("+" pieces, then one without it); "%" marks
//     the last line of an output that did not end with a newline, stored
//     when the pipe closed.
//   - TEXT: the app's bytes as written, up to the newline, which is the
//     record's end. Nothing is escaped: the text holds no newline, and
//     the fields before it have a fixed shape, so any bytes (invalid
//     UTF-8, control characters, a forged prefix) read back as the app's.
//
// Records are only ever appended, whole lines per write. A record cut by
// a crash or a full disk (a file that does not end with a newline) gets
// its newline from the next writer before anything else, so the records
// after it start on lines of their own; readers skip a last line with no
// newline yet (it may still be being written) and return a stored line
// that does not parse as a record as text with no time or stream.
//
// Files are rotated by size at record boundaries (path, path.1 newest,
// ...), so every file reads on its own. Files of earlier versions (a
// header line per read that starts with the ASCII record separator, or
// "TIME stdout text" lines) still read.
const (
	recordSep    = 0x1e // starts a header line of the earlier format
	timeLayout   = "2006-01-02T15:04:05.000000Z"
	timeWidth    = len(timeLayout)
	prefixMax    = timeWidth + len(" ") + MaxTagLen + len(" out+ ")
	lineOverhead = int64(prefixMax + 2) // a prefix, a newline, and a torn record's newline
	shortLine    = 128                  // lines up to this long are copied as a fixed-size block
	flagSplit    = '+'
	flagPartial  = '%'
	readBufSize  = 1 << 20
	// pipeSize is the capacity of an output pipe. The kernel allocates a
	// pipe's pages as it fills: an idle pipe holds none, and only output
	// the reader has not caught up with holds memory. Room for a few
	// milliseconds of a fast writer lets the app run on while the reader
	// is off the CPU: on a loaded 2-core host, the peer harness's 200 MB
	// capture took a median of 0.16 s with 4 MiB against 0.35 s with
	// 1 MiB (alternating runs). pipeSizeUser is what an agent not run as
	// root may have.
	pipeSize     = 4 << 20
	pipeSizeUser = 1 << 20
	maxQueued    = 8 << 20  // bytes of output that may wait for the disk per instance
	preallocMin  = 64 << 10 // writes at least this big allocate their blocks first
)

// checkTag reports why tag cannot be a LogConfig.Tag.
func checkTag(tag string) error {
	if len(tag) > MaxTagLen {
		return fmt.Errorf("must be at most %d bytes", MaxTagLen)
	}
	for i := 0; i < len(tag); i++ {
		if c := tag[i]; c <= ' ' || c >= 0x7f {
			return errors.New("must be printable ASCII without spaces")
		}
	}
	switch strings.TrimSuffix(tag, "+") {
	case "stdout", "stderr":
		return errors.New("must not be a stream name")
	}
	return nil
}

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

// batch is one chunk of output in the stored format: the records of the
// lines of one read of one pipe, which share one time, taken when the
// read returned.
type batch struct {
	out  []byte
	time time.Time
	// stamp is the prefix of a record of a whole line, "TIME TAG out ";
	// a flagged one is stamp without its last space, the flag and a
	// space.
	stamp [prefixMax]byte
	plain int // len of the prefix in stamp
}

func (b *batch) reset(now time.Time, tag, word string) {
	b.out = b.out[:0]
	b.time = now
	p := now.UTC().AppendFormat(b.stamp[:0], timeLayout)
	p = append(p, ' ')
	if tag == "" {
		tag = "-"
	}
	p = append(p, tag...)
	p = append(p, ' ')
	p = append(p, word...)
	p = append(p, ' ')
	b.plain = len(p)
}

// add stores one record: a line (or piece) of text with a flag (0 for
// none).
func (b *batch) add(text []byte, flag byte) {
	if flag == 0 {
		b.out = append(b.out, b.stamp[:b.plain]...)
	} else {
		b.out = append(b.out, b.stamp[:b.plain-1]...)
		b.out = append(b.out, flag, ' ')
	}
	b.out = append(b.out, text...)
	b.out = append(b.out, '\n')
}

// addLines stores the whole lines at the start of data, up to the first
// one longer than maxLine or the last newline, and returns how many
// bytes of data they took. This is the common case and the hot loop of
// capture: per line one vector scan for its end and two copies, the
// prefix and the line, into the batch's buffer, grown (rarely: a pooled
// buffer has room for a read of 100-byte lines) only when a record does
// not fit.
func (b *batch) addLines(data []byte, maxLine int) int {
	stamp := b.stamp[:b.plain]
	out := b.out
	if cap(out)-len(out) < len(data)+len(data)/2 {
		out = slices.Grow(out, len(data)+len(data)/2)
	}
	done := 0
	for {
		i := bytes.IndexByte(data[done:], '\n')
		if i < 0 || i > maxLine {
			break
		}
		k := len(out)
		n := k + len(stamp) + i + 1
		if n+shortLine > cap(out) {
			out = slices.Grow(out, shortLine+len(stamp)+i+1+len(data)-done)
		}
		// The prefix as one fixed-size copy of the whole stamp (a few
		// vector moves, no call); the line overwrites its unused end.
		*(*[prefixMax]byte)(out[k : k+prefixMax]) = b.stamp
		if p := k + len(stamp); i < shortLine && done+shortLine <= len(data) {
			// A short line likewise, with the bytes after it, which the
			// next record overwrites.
			*(*[shortLine]byte)(out[p : p+shortLine]) = *(*[shortLine]byte)(data[done : done+shortLine])
		} else {
			copy(out[p:n], data[done:done+i+1])
		}
		out = out[:n]
		done += i + 1
	}
	b.out = out
	return done
}

// each calls fn with each record of the batch as a LogLine, without
// parsing the time and tag it knows.
func (b *batch) each(name, tag string, fn func(LogLine)) {
	stream := "stdout"
	if b.stamp[b.plain-4] == 'e' {
		stream = "stderr"
	}
	for out := b.out; len(out) > 0; {
		i := bytes.IndexByte(out, '\n')
		rec := out[:i]
		out = out[i+1:]
		l := LogLine{Name: name, Time: b.time, Tag: tag, Stream: stream}
		if rec[b.plain-1] != ' ' { // flagged
			l.Split, l.Partial = rec[b.plain-1] == flagSplit, rec[b.plain-1] == flagPartial
			rec = rec[b.plain+1:]
		} else {
			rec = rec[b.plain:]
		}
		l.Text = string(rec)
		fn(l)
	}
}

// parseRecord parses one stored line (without its newline) as a record
// of the current format; tag is a previous line's tag, reused when this
// line has the same one.
func parseRecord(s []byte, tag *string) (LogLine, bool) {
	if len(s) < timeWidth+len(" - out ") || s[timeWidth] != ' ' {
		return LogLine{}, false
	}
	rest := s[timeWidth+1:]
	sp := bytes.IndexByte(rest, ' ')
	if sp <= 0 || sp > MaxTagLen {
		return LogLine{}, false
	}
	t, rest := rest[:sp], rest[sp+1:]
	if len(rest) < 4 {
		return LogLine{}, false
	}
	var l LogLine
	switch string(rest[:3]) {
	case "out":
		l.Stream = "stdout"
	case "err":
		l.Stream = "stderr"
	default:
		return LogLine{}, false
	}
	switch rest[3] {
	case ' ':
		rest = rest[4:]
	case flagSplit, flagPartial:
		if len(rest) < 5 || rest[4] != ' ' {
			return LogLine{}, false
		}
		l.Split, l.Partial = rest[3] == flagSplit, rest[3] == flagPartial
		rest = rest[5:]
	default:
		return LogLine{}, false
	}
	if checkTag(string(t)) != nil {
		return LogLine{}, false // perhaps "TIME stdout text" of an earlier version
	}
	at, err := time.Parse(timeLayout, string(s[:timeWidth]))
	if err != nil {
		return LogLine{}, false
	}
	switch {
	case string(t) == "-":
	case string(t) == *tag:
		l.Tag = *tag
	default:
		l.Tag = string(t)
		*tag = l.Tag
	}
	l.Time, l.Text = at, string(rest)
	return l, true
}

// lineParser reads stored lines in order: records, and the lines of
// earlier formats, for which it keeps the header in force.
type lineParser struct {
	name   string
	tag    string // the last tag read, reused by the next record with it
	have   bool   // a header of the earlier format has been read
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

// line parses one stored line without its newline: a record, or a line
// of an earlier format (a header is taken in, ok false). A line that is
// none of these is text with no time or stream.
func (p *lineParser) line(s []byte) (LogLine, bool) {
	if l, ok := parseRecord(s, &p.tag); ok {
		l.Name = p.name
		return l, true
	}
	if len(s) > 0 && s[0] == recordSep {
		if len(s) > 1 && s[1] == recordSep {
			s = s[1:]
		} else if p.header(s) {
			return LogLine{}, false
		}
		// An unreadable header is kept as text.
	}
	if !p.have {
		if l, ok := parseLegacy(s); ok {
			l.Name = p.name
			return l, true
		}
		return LogLine{Name: p.name, Text: string(s)}, true
	}
	return LogLine{Name: p.name, Time: p.time, Stream: p.stream, Split: p.split, Text: string(s)}, true
}

// header takes in a header line of the earlier format (without its
// newline) if it is one.
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
// shape of a header of the earlier format; header parses the time.
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

// parseLegacy parses one line in the format of early versions, with a
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
	// write, a crash): the next write starts with one, so its first
	// record starts a line.
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
	// settled counts the batches store has finished with: written to the
	// file, or not to be (no file, closed). entered counts those store
	// was given; it is read without mu (Supervisor.SettleLogs).
	settled uint64
	entered atomic.Uint64
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
	// Counted before the followers are looked at: a follower that
	// subscribes after this either gets the batch or finds it counted
	// and waits for it to settle (SettleLogs).
	ls.entered.Add(1)
	if ls.s.nfollow.Load() > 0 || ls.s.cfg.Sink != nil {
		ls.s.deliverLines(ls, b)
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.closed {
		ls.s.pools.releaseBatch(b)
		ls.settle(1)
		return
	}
	if m := ls.cfg.Memory; m > 0 {
		ls.remember(b, m)
	}
	if ls.cfg.Path == "" {
		ls.s.pools.releaseBatch(b)
		ls.settle(1)
		return
	}
	ls.queue = append(ls.queue, b)
	ls.queued += len(b.out)
	if !ls.writing {
		// This reader writes until the queue is empty: the batch it has
		// just formatted is still in the CPU's cache (a writer goroutine
		// on another core costs a quarter more CPU in all, measured with
		// BenchmarkLogCapture), and no goroutine is handed work. A reader
		// that finds another one writing (the other stream) queues its
		// batch and returns to its pipe.
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
		ls.settle(len(q))
	}
	ls.writing = false
	ls.cond.Broadcast()
}

// settle counts n batches done with and wakes the waiters. Called with
// mu held.
func (ls *logSink) settle(n int) {
	ls.settled += uint64(n)
	ls.cond.Broadcast()
}

func (p *pools) releaseBatch(b *batch) {
	if cap(b.out) > 4*readBufSize {
		b.out = nil // do not keep a huge buffer in the pool
	}
	b.out = b.out[:0]
	p.batches.Put(b)
}

// writeFile appends the batch to the log file, rotating at record
// boundaries so no file grows past MaxSize. Only the writer (see drain)
// calls it.
func (ls *logSink) writeFile(b *batch) {
	out := b.out
	for start := 0; start < len(out); {
		if ls.file == nil && !ls.open() {
			return
		}
		if ls.torn && !ls.put([]byte{'\n'}) { // end the cut record first
			return
		}
		room := ls.cfg.MaxSize - ls.size
		end := len(out)
		if int64(end-start) > room {
			// The last record end that still fits.
			end = start
			if room > 0 {
				end += bytes.LastIndexByte(out[start:start+int(room)], '\n') + 1
			}
			if end == start && ls.size == 0 {
				// Validate keeps a record within an empty file; never loop.
				end += bytes.IndexByte(out[start:], '\n') + 1
			}
		}
		if end > start {
			if n := end - start; n >= preallocMin && !ls.noPrealloc {
				ls.prealloc(n)
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

// segment is a copy of the last records of a batch.
type segment struct {
	out   []byte
	lines int // records in out
}

// remember keeps the last records of b (at least m of them, or all) in
// the ring and drops old segments no longer needed for m lines. Called
// with mu held. It copies the smallest power-of-two tail (from 16 KiB)
// that holds m records, found with vector counts of newlines, rather
// than walking back line by line: at most twice the bytes, few
// instructions.
func (ls *logSink) remember(b *batch, m int) {
	start, k := 0, 0
	for w := 16 << 10; ; w *= 2 {
		if w >= len(b.out) {
			k = bytes.Count(b.out, []byte{'\n'})
			break
		}
		if c := bytes.Count(b.out[len(b.out)-w:], []byte{'\n'}); c > m {
			start = len(b.out) - w
			start += bytes.IndexByte(b.out[start:], '\n') + 1 // the first whole record
			k = c - 1
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
	if need := len(b.out) - start; cap(seg.out) < need {
		if cap(ls.spare) >= need {
			seg.out, ls.spare = ls.spare, nil
		} else {
			// Sizes vary with every read: grow to a power of two, so
			// a reused buffer rarely needs growing again.
			seg.out = make([]byte, 0, 1<<bits.Len(uint(need)))
		}
	}
	seg.out = append(seg.out[:0], b.out[start:]...)
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
	p := lineParser{name: ls.name}
	for _, seg := range ls.ring[si:] {
		p.parse(seg.out, func(l LogLine) { out = append(out, l) })
	}
	return out[len(out)-n:]
}

// pipeReader turns the bytes of one pipe into stored records.
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

// word is the stream as records name it.
func (p *pipeReader) word() string {
	if p.stream == "stderr" {
		return "err"
	}
	return "out"
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
			n, eof, rerr = readChunks(int(fd), *buf)
			if n == 0 && rerr == syscall.EAGAIN {
				// Idle: wait in the runtime poller, holding no buffer.
				p.ls.s.pools.bufs.Put(buf)
				buf = nil
				return false
			}
			return true
		})
		if n > 0 {
			p.consume((*buf)[:n], time.Now())
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

// newBatch returns an empty batch stamped with now.
func (p *pipeReader) newBatch(now time.Time) *batch {
	b := p.ls.s.pools.batches.Get().(*batch)
	b.reset(now, p.ls.cfg.Tag, p.word())
	return b
}

// flush stores the trailing partial line, if any, at the end of output,
// marked as such.
func (p *pipeReader) flush(now time.Time) {
	if len(p.partial) > 0 {
		b := p.newBatch(now)
		b.add(p.partial, flagPartial)
		p.ls.store(b)
		p.partial = nil
	}
}

// consume splits a chunk into lines and stores them as one batch.
func (p *pipeReader) consume(data []byte, now time.Time) {
	b := p.newBatch(now)
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
		data = data[b.addLines(data, p.maxLine):]
		if len(data) == 0 {
			break
		}
		// A line longer than maxLine, or an unfinished one.
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

// emit adds a whole line, split into marked pieces if it is too long.
func (p *pipeReader) emit(b *batch, line []byte) {
	for len(line) > p.maxLine {
		b.add(line[:p.maxLine], flagSplit)
		line = line[p.maxLine:]
	}
	b.add(line, 0)
}

// carry keeps an unfinished line for the next chunk; pieces beyond
// maxLine are stored already, marked split.
func (p *pipeReader) carry(b *batch, data []byte) {
	p.partial = append(p.partial, data...)
	for len(p.partial) > p.maxLine {
		b.add(p.partial[:p.maxLine], flagSplit)
		p.partial = append(p.partial[:0], p.partial[p.maxLine:]...)
	}
}

// LogQuery says which stored lines ReadLogs returns.
type LogQuery struct {
	// N is how many of the last matching lines to return; 0 means all.
	N int
	// Since, if not zero, leaves out lines stored before it (and lines
	// with no time).
	Since time.Time
	// Tag, if not "", leaves out lines of other tags.
	Tag string
}

func (q LogQuery) match(l LogLine) bool {
	if !q.Since.IsZero() && l.Time.Before(q.Since) {
		return false
	}
	return q.Tag == "" || l.Tag == q.Tag
}

// ReadLogFile returns the last n lines (all if n <= 0) stored in the log
// file at path and its rotated predecessors, oldest first: ReadLogs with
// LogQuery{N: n}.
func ReadLogFile(path string, n int) ([]LogLine, error) {
	return ReadLogs(path, LogQuery{N: max(n, 0)})
}

// ReadLogs returns the lines stored in the log file at path and its
// rotated predecessors path.1, path.2, ... that match q, oldest first.
// It reads files the instance may be writing at the same time (a last
// line without its newline yet is left out), and reads a file from its
// end backwards only as far as q needs. The lines carry no Name. A line
// that does not parse is returned whole as Text with no Time or Stream
// (unless q filters by time or tag). A missing path with no rotated
// files is an error wrapping os.ErrNotExist.
func ReadLogs(path string, q LogQuery) ([]LogLine, error) {
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
	var parts [][]LogLine // newest file first
	have := 0
	// A rotation while the files are read renames them: a file read
	// under one name is not read again under the next.
	seen := map[fileID]bool{}
	for _, p := range files {
		need := 0
		if q.N > 0 {
			need = q.N - have
		}
		lines, older, err := readStored(p, q, need, seen)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, errSeen) {
			continue // rotated away, or read already under its former name
		}
		if err != nil {
			return nil, err
		}
		parts = append(parts, lines)
		have += len(lines)
		if older || (q.N > 0 && have >= q.N) {
			break
		}
	}
	out := make([]LogLine, 0, have)
	for i := len(parts) - 1; i >= 0; i-- {
		out = append(out, parts[i]...)
	}
	return out, nil
}

// fileID identifies a file across renames: device and inode.
type fileID struct{ dev, ino uint64 }

// errSeen is readStored's answer for a file read before.
var errSeen = errors.New("read already")

// readStored returns the lines stored in one file that match q: the last
// need of them (all if need is 0). It reads the file backwards in
// growing blocks, until they hold need lines or reach back to lines
// older than q.Since (older reports that), so the tail of a big file is
// cheap.
func readStored(path string, q LogQuery, need int, seen map[fileID]bool) (lines []LogLine, older bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, fmt.Errorf("read log %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, false, fmt.Errorf("read log %s: %w", path, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id := fileID{uint64(st.Dev), st.Ino}
		if seen[id] {
			return nil, false, errSeen
		}
		seen[id] = true
	}
	off := fi.Size()
	var data []byte
	for block := int64(64 << 10); ; block *= 2 {
		k := off
		if need > 0 || !q.Since.IsZero() {
			k = min(off, block)
		}
		off -= k
		buf := make([]byte, int(k)+len(data))
		if _, err := f.ReadAt(buf[:k], off); err != nil && !errors.Is(err, io.EOF) {
			return nil, false, fmt.Errorf("read log %s: %w", path, err)
		}
		copy(buf[k:], data)
		data = buf
		// Whole lines only: not the last one if it has no newline yet,
		// nor the first one of a block that starts mid-file.
		region := data[:bytes.LastIndexByte(data, '\n')+1]
		if off > 0 {
			i := bytes.IndexByte(region, '\n')
			if i < 0 {
				continue
			}
			region = region[i+1:]
		}
		lines, older = lines[:0], false
		p := lineParser{}
		p.parse(region, func(l LogLine) {
			if !q.Since.IsZero() && !l.Time.IsZero() && l.Time.Before(q.Since) {
				older = true
			}
			if q.match(l) {
				lines = append(lines, l)
			}
		})
		if off > 0 && !older && (need == 0 || len(lines) < need) {
			continue
		}
		if need > 0 && len(lines) > need {
			lines = lines[len(lines)-need:]
		}
		return lines, older, nil
	}
}
