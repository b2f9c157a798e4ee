package build

import (
	"archive/tar"
	"bufio"
	"bytes"
	stdgzip "compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Benchmark tarball shape: ~200 MB in ~5,000 files.
const (
	benchFiles = 5000
	benchBytes = 200 << 20
)

// benchTarballs writes the benchmark's tar.gz and tar.zst into dir and
// returns their paths and the unpacked size. The content is text built
// from a random vocabulary with random numbers mixed in: it compresses
// about 3:1, like source, assets and binaries together.
func benchTarballs(b *testing.B, dir string) (gzPath, zstPath string, size int64) {
	b.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	vocab := make([]string, 4096)
	for i := range vocab {
		w := make([]byte, 3+rng.IntN(9))
		for j := range w {
			w[j] = byte('a' + rng.IntN(26))
		}
		vocab[i] = string(w)
	}
	gzPath, zstPath = filepath.Join(dir, "bench.tar.gz"), filepath.Join(dir, "bench.tar.zst")
	gf, err := os.Create(gzPath)
	if err != nil {
		b.Fatal(err)
	}
	zf, err := os.Create(zstPath)
	if err != nil {
		b.Fatal(err)
	}
	gw := gzip.NewWriter(gf) // level 6, as gzip(1) and tar -z write
	zw, err := zstd.NewWriter(zf)
	if err != nil {
		b.Fatal(err)
	}
	both := bufio.NewWriterSize(multiWriter{gw, zw}, 1<<20)
	tw := tar.NewWriter(both)
	write := func(h *tar.Header, body []byte) {
		if err := tw.WriteHeader(h); err != nil {
			b.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			b.Fatal(err)
		}
	}
	mt := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	write(&tar.Header{Name: "Procfile", Typeflag: tar.TypeReg, Mode: 0o644, Size: 14, ModTime: mt}, []byte("web: ./server\n"))
	size += 14
	var body strings.Builder
	avg := benchBytes / benchFiles
	for i := range benchFiles {
		if i%100 == 0 {
			write(&tar.Header{Name: fmt.Sprintf("app/d%02d/", i/100), Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mt}, nil)
		}
		n := avg/2 + rng.IntN(avg)
		body.Reset()
		for body.Len() < n {
			if rng.IntN(12) == 0 {
				fmt.Fprintf(&body, "%x ", rng.Uint64())
			} else {
				body.WriteString(vocab[rng.IntN(len(vocab))])
				body.WriteByte(" \n"[rng.IntN(2)])
			}
		}
		data := []byte(body.String()[:n])
		mode := int64(0o644)
		if i%10 == 0 {
			mode = 0o755
		}
		write(&tar.Header{Name: fmt.Sprintf("app/d%02d/f%04d", i/100, i), Typeflag: tar.TypeReg, Mode: mode, Size: int64(n), ModTime: mt}, data)
		size += int64(n)
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	if err := both.Flush(); err != nil {
		b.Fatal(err)
	}
	for _, c := range []interface{ Close() error }{gw, zw, gf, zf} {
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
	}
	return gzPath, zstPath, size
}

// multiWriter writes to both compressors.
type multiWriter [2]interface{ Write([]byte) (int, error) }

func (m multiWriter) Write(p []byte) (int, error) {
	for _, w := range m {
		if _, err := w.Write(p); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// BenchmarkImport imports a generated ~200 MB, ~5,000-file tarball (gzip
// and zstd) and, in the same run, extracts the same tarball with GNU tar
// into a fresh directory. It reports MB/s of unpacked data for both and the
// time ratio berth/tar. berth fsyncs the build (one syncfs) before it
// renames it into place; tar does not sync at all, so the run also reports
// the ratio against tar followed by `sync -f`.
func BenchmarkImport(b *testing.B) {
	dir := b.TempDir()
	gzPath, zstPath, size := benchTarballs(b, dir)
	for _, tc := range []struct {
		name, path string
		tarArgs    []string
	}{
		{"gzip", gzPath, []string{"-xzf"}},
		{"zstd", zstPath, []string{"--zstd", "-xf"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			fi, err := os.Stat(tc.path)
			if err != nil {
				b.Fatal(err)
			}
			var berthT, tarT, syncT time.Duration
			b.SetBytes(size)
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				s, err := Open(Config{Dir: filepath.Join(dir, fmt.Sprintf("builds-%s-%d", tc.name, i))}, hclog.NewNullLogger())
				if err != nil {
					b.Fatal(err)
				}
				f, err := os.Open(tc.path)
				if err != nil {
					b.Fatal(err)
				}
				syncAll(b) // start from a clean page cache state for both
				b.StartTimer()
				start := time.Now()
				bd, err := s.Import(context.Background(), f, "")
				berthT += time.Since(start)
				b.StopTimer()
				f.Close()
				if err != nil {
					b.Fatal(err)
				}
				if bd.Size != size {
					b.Fatalf("imported %d bytes, want %d", bd.Size, size)
				}
				if err := removeTree(s.Dir()); err != nil {
					b.Fatal(err)
				}

				out := filepath.Join(dir, fmt.Sprintf("tar-%s-%d", tc.name, i))
				if err := os.Mkdir(out, 0o755); err != nil {
					b.Fatal(err)
				}
				syncAll(b)
				start = time.Now()
				cmd := exec.Command("tar", append(tc.tarArgs, tc.path, "-C", out)...)
				if msg, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("tar: %v: %s", err, msg)
				}
				tarT += time.Since(start)
				if msg, err := exec.Command("sync", "-f", out).CombinedOutput(); err != nil {
					b.Fatalf("sync: %v: %s", err, msg)
				}
				syncT += time.Since(start)
				if err := os.RemoveAll(out); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.StopTimer()
			mb := float64(size) * float64(b.N) / 1e6
			b.ReportMetric(mb/berthT.Seconds(), "berth-MB/s")
			b.ReportMetric(mb/tarT.Seconds(), "tar-MB/s")
			b.ReportMetric(berthT.Seconds()/tarT.Seconds(), "berth/tar")
			b.ReportMetric(berthT.Seconds()/syncT.Seconds(), "berth/tar+sync")
			b.Logf("%s: %.0f MB in %d files, %.0f MB compressed: berth %.0f MB/s (with fsync), tar %.0f MB/s (no fsync), tar+sync %.0f MB/s; ratio berth/tar %.2f, berth/(tar+sync) %.2f",
				tc.name, float64(size)/1e6, benchFiles+1, float64(fi.Size())/1e6,
				mb/berthT.Seconds(), mb/tarT.Seconds(), mb/syncT.Seconds(), berthT.Seconds()/tarT.Seconds(), berthT.Seconds()/syncT.Seconds())
		})
	}
}

// syncAll flushes dirty pages so one measurement does not pay for the
// previous one's writeback.
func syncAll(b *testing.B) {
	if msg, err := exec.Command("sync").CombinedOutput(); err != nil {
		b.Fatalf("sync: %v: %s", err, msg)
	}
}

// BenchmarkDecompress compares the standard library's gzip reader with
// klauspost/compress's on the benchmark tarball, and reports zstd's speed,
// to justify the choice of decoder (MB/s of decompressed output).
func BenchmarkDecompress(b *testing.B) {
	gzPath, zstPath, size := benchTarballs(b, b.TempDir())
	gzData, err := os.ReadFile(gzPath)
	if err != nil {
		b.Fatal(err)
	}
	zstData, err := os.ReadFile(zstPath)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		open func() (io.Reader, func())
	}{
		{"gzip-stdlib", func() (io.Reader, func()) {
			r, err := stdgzip.NewReader(bytes.NewReader(gzData))
			if err != nil {
				b.Fatal(err)
			}
			return r, func() {}
		}},
		{"gzip-klauspost", func() (io.Reader, func()) {
			r, err := gzip.NewReader(bytes.NewReader(gzData))
			if err != nil {
				b.Fatal(err)
			}
			return r, func() {}
		}},
		{"zstd-klauspost", func() (io.Reader, func()) {
			r, err := zstd.NewReader(bytes.NewReader(zstData), zstd.WithDecoderMaxWindow(maxZstdWindow))
			if err != nil {
				b.Fatal(err)
			}
			return r, r.Close
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(size)
			for range b.N {
				r, done := tc.open()
				if _, err := io.Copy(io.Discard, r); err != nil {
					b.Fatal(err)
				}
				done()
			}
		})
	}
}
