//go:build e2e_load

package load

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"time"
)

// bundle is the content of a release tarball, read from bin/hello.tar.gz.
type bundle struct {
	entries []bundleEntry
}

type bundleEntry struct {
	hdr  *tar.Header
	data []byte
}

// readBundle reads every entry of a gzipped tarball into memory.
func readBundle(file string) (*bundle, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	tr := tar.NewReader(zr)
	b := &bundle{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", file, err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			return nil, fmt.Errorf("read %s: %s: %w", file, hdr.Name, err)
		}
		b.entries = append(b.entries, bundleEntry{hdr, data})
	}
	return b, nil
}

// file returns the content of the entry at name ("berth.json" matches
// "./berth.json").
func (b *bundle) file(name string) ([]byte, bool) {
	for _, e := range b.entries {
		if path.Clean(e.hdr.Name) == name {
			return e.data, true
		}
	}
	return nil, false
}

// write packs the bundle into file with the given files replaced or added,
// as a gzipped tarball owned by root.
func (b *bundle) write(file string, replace map[string][]byte) error {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	done := map[string]bool{}
	for _, e := range b.entries {
		hdr := *e.hdr
		data := e.data
		if r, ok := replace[path.Clean(hdr.Name)]; ok && hdr.Typeflag == tar.TypeReg {
			data = r
			hdr.Size = int64(len(r))
			done[path.Clean(hdr.Name)] = true
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	for name, data := range replace {
		if done[name] {
			continue
		}
		hdr := &tar.Header{Name: "./" + name, Mode: 0o644, Size: int64(len(data)), ModTime: time.Now(), Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(file, buf.Bytes(), 0o644)
}

// bindManifest returns berth.json with socket_activation turned off for
// every process type, keeping everything else.
func bindManifest(manifest []byte) ([]byte, error) {
	var m map[string]any
	if err := json.Unmarshal(manifest, &m); err != nil {
		return nil, fmt.Errorf("berth.json: %w", err)
	}
	procs, ok := m["processes"].(map[string]any)
	if !ok || len(procs) == 0 {
		return nil, fmt.Errorf("berth.json has no processes: %s", manifest)
	}
	for name, p := range procs {
		pm, ok := p.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("berth.json: process %s is not an object", name)
		}
		pm["socket_activation"] = false
	}
	return json.Marshal(m)
}
