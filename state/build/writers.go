package build

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Creating a file is the expensive part of an import: the kernel holds the
// directory's lock while it allocates the inode (on ext4 without a journal,
// after a large tree was removed, it scans every recently freed inode of
// the block group for each new file). The tar stream can only be read in
// order, so the extractor reads small files into memory and hands them to
// a pool of writer goroutines; each directory belongs to one writer
// (directories are dealt out in the order they first hold a file), so the
// writers create files in different directories at the same time and the
// files of one directory are still created in archive order.
const (
	// maxQueuedFile is the largest file handed to a writer; larger ones
	// are streamed by the extractor itself.
	maxQueuedFile = 128 << 10
	// queuedBytes bounds the memory held by queued files (each counts
	// its size plus jobOverhead). The extractor must be able to read
	// ahead past a whole directory for the next writer to get work.
	queuedBytes = 64 << 20
	jobOverhead = 512
	// writerQueue is how many files may wait for each writer.
	writerQueue = 4096
	// maxWriters caps the pool; more writers than CPUs gain nothing.
	maxWriters = 4
)

// numWriters is the size of the writer pool.
func numWriters() int {
	return min(runtime.GOMAXPROCS(0), maxWriters)
}

// fileJob is one small file for a writer: the entry's content is already
// read and checked.
type fileJob struct {
	entry string // the tar entry name, for errors
	dir   string // clean relative directory, "" for the root
	base  string
	mode  fs.FileMode
	mtime time.Time
	data  []byte
}

// writers is the pool of writer goroutines of one extraction. The
// extractor is the only sender; stop closes the queues and waits for every
// writer.
type writers struct {
	ctx     context.Context
	root    *os.Root
	queues  []chan fileJob
	wg      sync.WaitGroup // the writer goroutines
	pending sync.WaitGroup // queued files not yet done

	mu     sync.Mutex
	err    error // the first write error
	queued int64 // bytes held by queued files
	room   *sync.Cond
}

func startWriters(ctx context.Context, root *os.Root, n int) *writers {
	w := &writers{ctx: ctx, root: root, queues: make([]chan fileJob, n)}
	w.room = sync.NewCond(&w.mu)
	for i := range w.queues {
		q := make(chan fileJob, writerQueue)
		w.queues[i] = q
		w.wg.Add(1)
		go w.loop(q)
	}
	return w
}

// loop writes the files of one queue until it is closed. After an error it
// only drains the queue.
func (w *writers) loop(q <-chan fileJob) {
	defer w.wg.Done()
	sub := dirRoots{root: w.root}
	defer sub.close()
	for j := range q {
		if w.failed() == nil {
			if err := w.write(&sub, j); err != nil {
				w.fail(err)
			}
		}
		w.mu.Lock()
		w.queued -= int64(len(j.data)) + jobOverhead
		w.room.Signal()
		w.mu.Unlock()
		w.pending.Done()
	}
}

// write creates j's file with its final mode and mtime, in the directory
// sub holds or opens.
func (w *writers) write(sub *dirRoots, j fileJob) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	r, err := sub.get(j.dir)
	if err != nil {
		return fmt.Errorf("entry %q: %w", j.entry, err)
	}
	f, err := r.OpenFile(j.base, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, j.mode)
	if err != nil {
		return fmt.Errorf("entry %q: %w", j.entry, err)
	}
	if len(j.data) > 0 {
		if _, err = f.Write(j.data); err != nil {
			err = fmt.Errorf("entry %q: %w", j.entry, err)
		}
	}
	return closeFile(f, j.entry, j.mode, j.mtime, err)
}

// fail records err if it is the first.
func (w *writers) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

// failed returns the first write error, if any.
func (w *writers) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// queue hands j to writer lane, first waiting while the queued files hold
// too much memory. The writers always drain their queues, so the wait
// ends.
func (w *writers) queue(lane int, j fileJob) {
	n := int64(len(j.data)) + jobOverhead
	w.mu.Lock()
	for w.queued > 0 && w.queued+n > queuedBytes {
		w.room.Wait()
	}
	w.queued += n
	w.mu.Unlock()
	w.pending.Add(1)
	w.queues[lane] <- j
}

// wait blocks until every queued file is written and returns the first
// write error.
func (w *writers) wait() error {
	w.pending.Wait()
	return w.failed()
}

// stop closes the queues and waits for the writers to finish.
func (w *writers) stop() {
	for _, q := range w.queues {
		close(q)
	}
	w.wg.Wait()
}

// queueFile reads a small file's content (checking the limits as copy
// does) and queues it for the writer that owns its directory.
func (x *extractor) queueFile(ctx context.Context, tr *tar.Reader, hdr *tar.Header, name, dir, base string, mode fs.FileMode) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	data := make([]byte, hdr.Size)
	n, err := io.ReadFull(tr, data)
	x.written += int64(n)
	if n > 0 {
		if err := x.meter.check(x.written); err != nil {
			err.Entry = hdr.Name
			return err
		}
	}
	if err != nil {
		return x.readErr(ctx, err, hdr.Name)
	}
	lane, ok := x.lanes[dir]
	if !ok {
		lane = len(x.lanes) % len(x.w.queues)
		x.lanes[dir] = lane
	}
	x.entries[name] = kindFile
	x.nFiles++
	x.w.queue(lane, fileJob{entry: hdr.Name, dir: dir, base: base, mode: mode, mtime: hdr.ModTime, data: data})
	return nil
}
