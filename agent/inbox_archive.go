package agent

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// errIncomplete says an inbox file reads as an archive cut short: most
// likely one still being written.
var errIncomplete = errors.New("archive ends early (unexpected EOF)")

// archiveComplete reads the inbox file rel to its end and returns
// errIncomplete (wrapped) when it is an archive cut short: empty, a
// gzip or zstd stream without its end, a tar without its end-of-archive
// marker. Anything else returns nil, including a file that is no archive
// at all or not a regular file: the deploy then says what is wrong with
// it. The file is opened as openInboxFile opens it.
func archiveComplete(dir, rel string) error {
	f, err := openInboxFile(dir, rel)
	if err != nil {
		return nil // the deploy gives the reason
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	head, err := br.Peek(512)
	if len(head) == 0 {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("empty file: %w", errIncomplete)
		}
		return nil
	}
	var r io.Reader
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return truncated(err)
		}
		r = zr
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderMaxMemory(64<<20),
			zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil
		}
		defer zr.Close()
		r = zr
	case len(head) < 512:
		// Shorter than a tar header: the start of a compressed stream
		// or of a tar header (a name, then NULs) still being written;
		// anything else is no archive, for the deploy to say so.
		if bytes.HasPrefix([]byte{0x1f, 0x8b}, head) || bytes.HasPrefix([]byte{0x28, 0xb5, 0x2f, 0xfd}, head) ||
			bytes.IndexByte(head, 0) >= 0 {
			return fmt.Errorf("%d bytes: %w", len(head), errIncomplete)
		}
		return nil
	default:
		r = br
	}
	// The tar: every entry read through, up to the end-of-archive
	// marker (two zero blocks), which archive/tar does not require.
	tail := &lastBytes{r: r}
	tr := tar.NewReader(tail)
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return truncated(err)
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return truncated(err)
		}
	}
	if !tail.zeroBlock() {
		return fmt.Errorf("tar without its end-of-archive marker: %w", errIncomplete)
	}
	// The compressed stream's own end (gzip's checksum, zstd's frame).
	if _, err := io.Copy(io.Discard, r); err != nil {
		return truncated(err)
	}
	return nil
}

// truncated maps an error that says the data ended early to
// errIncomplete; other errors (a corrupt archive) are the deploy's to
// report, so nil.
func truncated(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %v", errIncomplete, err)
	}
	return nil
}

// lastBytes remembers the last 512 bytes read through it.
type lastBytes struct {
	r    io.Reader
	last [512]byte
	n    int64
}

func (l *lastBytes) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if n >= len(l.last) {
		copy(l.last[:], p[n-len(l.last):n])
	} else if n > 0 {
		copy(l.last[:], l.last[n:])
		copy(l.last[len(l.last)-n:], p[:n])
	}
	l.n += int64(n)
	return n, err
}

// zeroBlock reports whether the last block read was all zeros (the end
// of a tar).
func (l *lastBytes) zeroBlock() bool {
	return l.n >= 1024 && l.last == [512]byte{}
}
