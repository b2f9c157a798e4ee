package build

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// format is a detected archive format.
type format int

const (
	formatTar format = iota + 1
	formatGzip
	formatZstd
)

func (f format) String() string {
	switch f {
	case formatTar:
		return "tar"
	case formatGzip:
		return "tar.gz"
	case formatZstd:
		return "tar.zst"
	}
	return "unknown"
}

// ratioSlack is how many decompressed bytes are allowed before the ratio
// cap applies, so small archives with one very compressible file pass.
const ratioSlack = 16 << 20

// maxZstdWindow bounds the memory a zstd frame may ask for (zstd --ultra
// -22 uses 128 MiB).
const maxZstdWindow = 128 << 20

// inputBufSize is the read-ahead on the raw upload.
const inputBufSize = 1 << 20

// meter counts the raw bytes read and checks the decompression ratio. The
// raw count is written by whichever goroutine reads the upload, so it is
// atomic.
type meter struct {
	raw      atomic.Int64
	maxRatio int64
}

// check returns a *LimitError if out unpacked bytes are more than maxRatio
// times the raw bytes read so far (after a fixed slack).
func (m *meter) check(out int64) *LimitError {
	if out <= ratioSlack {
		return nil
	}
	if raw := m.raw.Load(); raw <= 0 || (out-ratioSlack)/raw >= m.maxRatio {
		return &LimitError{Limit: "MaxRatio", Max: m.maxRatio}
	}
	return nil
}

// hashReader hashes and counts every byte read from the upload, and stops
// reading once ctx is done.
type hashReader struct {
	ctx context.Context
	r   io.Reader
	h   hash.Hash
	m   *meter
}

func (h *hashReader) Read(p []byte) (int, error) {
	if err := h.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := h.r.Read(p)
	if n > 0 {
		h.h.Write(p[:n])
		h.m.raw.Add(int64(n))
	}
	return n, err
}

// countReader checks the ratio cap on decompressed bytes as they are read,
// so a bomb stops early even where nothing is written (padding, trailing
// zeros).
type countReader struct {
	r io.Reader
	m *meter
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if n > 0 {
		if lerr := c.m.check(c.n); lerr != nil {
			return n, lerr
		}
	}
	return n, err
}

// stream is an opened upload: the decompressed tar stream, plus what is
// needed to finish reading the upload and get its digest.
type stream struct {
	format format
	tar    io.Reader     // decompressed bytes, ratio-checked
	in     *bufio.Reader // raw bytes after detection, hashed
	hash   hash.Hash
	closer func()
}

// openStream detects the upload's format from its first bytes and sets up
// hashing, decompression and the ratio check.
func openStream(ctx context.Context, r io.Reader, m *meter) (*stream, error) {
	s := &stream{hash: sha256.New(), closer: func() {}}
	s.in = bufio.NewReaderSize(&hashReader{ctx: ctx, r: r, h: s.hash, m: m}, inputBufSize)
	head, err := s.in.Peek(512)
	if err != nil && len(head) == 0 {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty upload", ErrCorrupt)
		}
		return nil, err
	}
	var dec io.Reader
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		s.format = formatGzip
		zr, err := gzip.NewReader(s.in)
		if err != nil {
			return nil, corrupt(ctx, err, "gzip stream")
		}
		dec = zr
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}) ||
		len(head) >= 4 && head[0]&0xf0 == 0x50 && bytes.Equal(head[1:4], []byte{0x2a, 0x4d, 0x18}):
		s.format = formatZstd
		zr, err := zstd.NewReader(s.in, zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(maxZstdWindow))
		if err != nil {
			return nil, corrupt(ctx, err, "zstd stream")
		}
		s.closer = zr.Close
		dec = zr
	case isTarHeader(head):
		s.format = formatTar
		dec = s.in
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return nil, fmt.Errorf("%w: xz compression is not supported (use gzip or zstd)", ErrCorrupt)
	case bytes.HasPrefix(head, []byte("BZh")):
		return nil, fmt.Errorf("%w: bzip2 compression is not supported (use gzip or zstd)", ErrCorrupt)
	default:
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		// Never the bytes themselves: an error must not echo a file's
		// content.
		return nil, fmt.Errorf("%w: not a tar, tar.gz or tar.zst archive (unknown magic bytes)", ErrCorrupt)
	}
	s.tar = &countReader{r: dec, m: m}
	return s, nil
}

// isTarHeader reports whether b starts with a tar header: the ustar magic,
// or (for old v7 archives) a valid header checksum.
func isTarHeader(b []byte) bool {
	if len(b) < 512 {
		return false
	}
	if bytes.Equal(b[257:262], []byte("ustar")) {
		return true
	}
	var sum int64
	for i, c := range b[:512] {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int64(c)
	}
	field := bytes.Trim(b[148:156], " \x00")
	if len(field) == 0 {
		return false
	}
	var want int64
	for _, c := range field {
		if c < '0' || c > '7' {
			return false
		}
		want = want*8 + int64(c-'0')
	}
	return want == sum
}

// corrupt classifies an error met while reading or unpacking the
// upload. A limit (*LimitError) and the caller's cancel pass through as
// they are; anything else means the input is corrupt, and the error says
// where it was found: what is the stream or entry ("gzip stream",
// `entry "bin/app"`), or "" for the tar archive as a whole.
func corrupt(ctx context.Context, err error, what string) error {
	var le *LimitError
	if errors.As(err, &le) {
		return err
	}
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = errors.New("truncated")
	}
	if what == "" {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return fmt.Errorf("%w: %s: %v", ErrCorrupt, what, err)
}

// maxTrailing bounds the decompressed bytes accepted after the end of the
// tar archive (tar pads to its record size, 10 KiB by default).
const maxTrailing = 16 << 20

// finish reads the rest of the upload after the tar end-of-archive marker:
// the rest of the decompressed stream dec (so gzip and zstd verify their
// checksums, and tar record padding is consumed) and then the rest of the
// raw input, so the digest covers every uploaded byte. It returns the hex
// digest.
func (s *stream) finish(ctx context.Context, dec io.Reader) (string, error) {
	n, err := io.Copy(io.Discard, io.LimitReader(dec, maxTrailing+1))
	if err != nil {
		return "", corrupt(ctx, err, s.format.String()+" stream")
	}
	if n > maxTrailing {
		return "", fmt.Errorf("%w: more than %d bytes after the end of the tar archive", ErrCorrupt, maxTrailing)
	}
	n, err = io.Copy(io.Discard, io.LimitReader(s.in, maxTrailing+1))
	if err != nil {
		return "", corrupt(ctx, err, s.format.String()+" stream")
	}
	if n > maxTrailing {
		return "", fmt.Errorf("%w: more than %d bytes after the end of the %s stream", ErrCorrupt, maxTrailing, s.format)
	}
	return fmt.Sprintf("%x", s.hash.Sum(nil)), nil
}

// close releases the decompressor.
func (s *stream) close() { s.closer() }

// asyncReader reads src in a goroutine into a few large buffers, so
// decompression and hashing overlap with writing files. close stops the
// goroutine and waits for it.
type asyncReader struct {
	full chan []byte
	free chan []byte
	stop chan struct{}
	wg   sync.WaitGroup
	err  error // set by the goroutine before it closes full
	cur  []byte
	last []byte // buffer being consumed, returned to free when used up
}

func newAsyncReader(src io.Reader, bufs, size int) *asyncReader {
	a := &asyncReader{
		full: make(chan []byte, bufs),
		free: make(chan []byte, bufs),
		stop: make(chan struct{}),
	}
	for range bufs {
		a.free <- make([]byte, size)
	}
	a.wg.Add(1)
	go a.loop(src)
	return a
}

func (a *asyncReader) loop(src io.Reader) {
	defer a.wg.Done()
	defer close(a.full)
	for {
		var buf []byte
		select {
		case buf = <-a.free:
		case <-a.stop:
			a.err = errors.New("reader closed")
			return
		}
		n, err := fill(src, buf[:cap(buf)])
		if n > 0 {
			select {
			case a.full <- buf[:n]:
			case <-a.stop:
				a.err = errors.New("reader closed")
				return
			}
		}
		if err != nil {
			a.err = err
			return
		}
	}
}

// fill reads into buf until it is full or src fails, returning src's error
// unchanged (unlike io.ReadFull, which turns a short read before io.EOF into
// io.ErrUnexpectedEOF).
// A source that keeps returning nothing without an error gets
// io.ErrNoProgress, as bufio does.
func fill(src io.Reader, buf []byte) (int, error) {
	n, empty := 0, 0
	for n < len(buf) {
		m, err := src.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
		if m == 0 {
			if empty++; empty >= 100 {
				return n, io.ErrNoProgress
			}
		}
	}
	return n, nil
}

func (a *asyncReader) Read(p []byte) (int, error) {
	if len(a.cur) == 0 {
		if a.last != nil {
			a.free <- a.last
			a.last = nil
		}
		buf, ok := <-a.full
		if !ok {
			return 0, a.err
		}
		a.cur, a.last = buf, buf
	}
	n := copy(p, a.cur)
	a.cur = a.cur[n:]
	return n, nil
}

// close stops the goroutine and waits for it to return.
func (a *asyncReader) close() {
	close(a.stop)
	a.wg.Wait()
}
