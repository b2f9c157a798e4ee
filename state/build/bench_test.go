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
	"slices"
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
			var ratios, syncRatios []float64
			b.SetBytes(size * benchRounds)
			b.ResetTimer()
			for i := range b.N {
				// The machine is shared: alternate which goes first and
				// report the median ratio of several pairs.
				for round := range benchRounds {
					b.StopTimer()
					var bt, tt, st time.Duration
					if round%2 == 0 {
						bt = benchBerth(b, dir, tc.path, size, i, round)
						tt, st = benchTar(b, dir, tc.path, tc.tarArgs)
					} else {
						tt, st = benchTar(b, dir, tc.path, tc.tarArgs)
						bt = benchBerth(b, dir, tc.path, size, i, round)
					}
					berthT, tarT, syncT = berthT+bt, tarT+tt, syncT+st
					ratios = append(ratios, bt.Seconds()/tt.Seconds())
					syncRatios = append(syncRatios, bt.Seconds()/st.Seconds())
				}
			}
			b.StopTimer()
			mb := float64(size) * float64(b.N*benchRounds) / 1e6
			ratio, syncRatio := median(ratios), median(syncRatios)
			b.ReportMetric(mb/berthT.Seconds(), "berth-MB/s")
			b.ReportMetric(mb/tarT.Seconds(), "tar-MB/s")
			b.ReportMetric(ratio, "berth/tar")
			b.ReportMetric(syncRatio, "berth/tar+sync")
			b.Logf("%s: %.0f MB in %d files, %.0f MB compressed, %d rounds: berth %.0f MB/s (with fsync), tar %.0f MB/s (no fsync), tar+sync %.0f MB/s; median ratio berth/tar %.2f, berth/(tar+sync) %.2f (per round %.2f)",
				tc.name, float64(size)/1e6, benchFiles+1, float64(fi.Size())/1e6, b.N*benchRounds,
				mb/berthT.Seconds(), mb/tarT.Seconds(), mb/syncT.Seconds(), ratio, syncRatio, ratios)
		})
	}
}

// benchRounds is how many berth/tar pairs each benchmark iteration runs.
const benchRounds = 3

// benchBerth imports the tarball at path into a fresh store and returns how
// long Import took (the benchmark timer runs only during Import).
func benchBerth(b *testing.B, dir, path string, size int64, i, round int) time.Duration {
	s, err := Open(Config{Dir: filepath.Join(dir, fmt.Sprintf("builds-%d-%d", i, round))}, hclog.NewNullLogger())
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	syncAll(b) // start from clean page cache state
	b.StartTimer()
	start := time.Now()
	bd, err := s.Import(context.Background(), f, "")
	d := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if bd.Size != size {
		b.Fatalf("imported %d bytes, want %d", bd.Size, size)
	}
	if err := removeTree(s.Dir()); err != nil {
		b.Fatal(err)
	}
	return d
}

// benchTar extracts the tarball at path with GNU tar into a fresh
// directory and returns how long tar took, and tar plus `sync -f`.
func benchTar(b *testing.B, dir, path string, args []string) (tarT, syncT time.Duration) {
	out, err := os.MkdirTemp(dir, "tar-")
	if err != nil {
		b.Fatal(err)
	}
	syncAll(b)
	start := time.Now()
	if msg, err := exec.Command("tar", append(args, path, "-C", out)...).CombinedOutput(); err != nil {
		b.Fatalf("tar: %v: %s", err, msg)
	}
	tarT = time.Since(start)
	if msg, err := exec.Command("sync", "-f", out).CombinedOutput(); err != nil {
		b.Fatalf("sync: %v: %s", err, msg)
	}
	syncT = time.Since(start)
	if err := os.RemoveAll(out); err != nil {
		b.Fatal(err)
	}
	return tarT, syncT
}

// median returns the median of xs.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
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
