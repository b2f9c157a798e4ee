package build

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzExtract feeds arbitrary uploads to Import. It must never panic; a
// refused upload must leave the builds directory empty, and an accepted one
// must be a read-only tree whose symlinks all stay inside it.
func FuzzExtract(f *testing.F) {
	seeds := [][]byte{
		mkTar(f, procfile, exe("bin/server", "#!/bin/sh\n"), symlink("s", "bin/server"), hardlink("h", "bin/server")),
		mkTar(f, procfile, file("berth.json", `{"processes":{"web":{"healthcheck":{"tcp":true}}}}`)),
		mkTar(f, procfile, file("../x", "x")),
		mkTar(f, procfile, dir("d"), symlink("d/y", ".."), symlink("x", "d/y/..")),
		mkTar(f, procfile, dir("real"), symlink("link", "real"), file("link/x", "x")),
		mkTar(f, procfile, ent{name: "null", typ: tar.TypeChar}),
		mkTar(f, procfile, file("f", "1"), file("f", "2")),
		mkTar(f, procfile, dir("a/b"), symlink("a/b/l", "../.."), symlink("x", "a/b/l/..")),
		mkTar(f, procfile, file(strings.Repeat("long/", 30)+"name", "pax path"), symlink("s", strings.Repeat("x", 120))),
		mkTar(f, file("Procfile", "web: a\nweb: b\n")),
		mkTar(f, ent{name: "Procfile", typ: tar.TypeReg, body: "web: x\n", mode: 0o7777, uid: 1}, hardlink("h", "Procfile"), dir("./")),
	}
	for _, s := range seeds[:2] {
		seeds = append(seeds, gz(f, s), zst(f, s))
	}
	for _, s := range seeds {
		f.Add(s)
	}
	limits := Limits{MaxBytes: 4 << 20, MaxEntries: 1000, MaxPathLen: 512, MaxDepth: 16}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := newStore(t, limits)
		b, err := s.Import(context.Background(), bytes.NewReader(data), "")
		if err != nil {
			if names := listDir(t, s.Dir()); len(names) != 0 {
				t.Fatalf("refused upload (%v) left %v", err, names)
			}
			if errors.Is(err, ErrUnsafeEntry) {
				var ue *UnsafeEntryError
				if !errors.As(err, &ue) || ue.Reason == "" {
					t.Fatalf("unsafe entry error without a reason: %v", err)
				}
			}
			return
		}
		if b.Digest != sum(data) {
			t.Fatalf("digest %s, want %s", b.Digest, sum(data))
		}
		checkTree(t, b.Dir)
	})
}

// checkTree asserts that the tree at dir is read-only and that no symlink
// in it resolves outside it.
func checkTree(t *testing.T, dir string) {
	t.Helper()
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch m := fi.Mode(); {
		case m.IsDir():
			if m.Perm() != 0o555 || m&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 {
				t.Errorf("%s: directory mode %v", p, m)
			}
		case m.IsRegular():
			if m.Perm() != 0o444 && m.Perm() != 0o555 || m&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 {
				t.Errorf("%s: file mode %v", p, m)
			}
		case m&os.ModeSymlink != 0:
			target, err := filepath.EvalSymlinks(p)
			if err != nil {
				return nil // dangling or a loop inside the tree
			}
			if target != real && !strings.HasPrefix(target, real+"/") {
				t.Errorf("%s resolves outside the build: %s", p, target)
			}
		default:
			t.Errorf("%s: unexpected file type %v", p, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// FuzzProcfile checks that ParseProcfile never panics and that what it
// accepts is well-formed and survives a round trip.
func FuzzProcfile(f *testing.F) {
	for _, s := range []string{
		"web: ./server\n",
		"# c\n\nweb: bundle exec puma -C config/puma.rb\r\nworker: sidekiq -q a:b\nrelease: ./migrate\n",
		"web: a\nweb: b\n",
		"web.1: a\n",
		": x\n",
		"web:\n",
		"  web  :  x  \n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p, err := ParseProcfile(strings.NewReader(in))
		if err != nil {
			if !errors.Is(err, ErrProcfile) {
				t.Fatalf("error %v does not wrap ErrProcfile", err)
			}
			return
		}
		var out strings.Builder
		seen := map[string]bool{}
		last := 0
		for _, e := range p.Entries {
			if !ValidProcessType(e.Type) || seen[e.Type] || e.Command == "" || e.Line <= last || strings.ContainsAny(e.Command, "\n\x00") {
				t.Fatalf("bad entry %+v", e)
			}
			seen[e.Type], last = true, e.Line
			out.WriteString(e.Type + ": " + e.Command + "\n")
		}
		again, err := ParseProcfile(strings.NewReader(out.String()))
		if err != nil {
			t.Fatalf("round trip of %q: %v", out.String(), err)
		}
		if !reflect.DeepEqual(again.Types(), p.Types()) {
			t.Fatalf("round trip types %v, want %v", again.Types(), p.Types())
		}
		for _, e := range p.Entries {
			if c, _ := again.Command(e.Type); c != e.Command {
				t.Fatalf("round trip command %q, want %q", c, e.Command)
			}
		}
	})
}

// FuzzManifest checks that ParseManifest never panics and that what it
// accepts marshals back to an equal manifest.
func FuzzManifest(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"processes": {"web": {"healthcheck": {"http": "/up", "interval": "2s", "timeout": "1s", "start_period": "30s", "retries": 3}, "socket_activation": true, "stop_signal": "SIGTERM", "stop_timeout": "30s"}}}`,
		`{"processes": {"worker": {"healthcheck": {"exec": "./check"}}, "release": {"stop_timeout": "1m"}}}`,
		`{"processes": {"web": {"healthcheck": {"tcp": true, "http": "/"}}}}`,
		`{"processes": {"web": {"stop_signal": "TERM"}}} x`,
		`{"processes": {"web": {"unknown": 1}}}`,
		`{"processes": {"web": {"restart": {"min_run": "1s", "settle": "5s", "backoff_initial": "100ms", "backoff_max": "30s"}}}}`,
		`{"processes": {"worker": {"restart": {}}, "clock": {"restart": {"settle": "1m"}}}}`,
		`{"processes": {"web": {"restart": {"backoff_initial": "1m", "backoff_max": "30s"}}}}`,
		`{"processes": {"web": {"restart": {"min_run": "10s", "settle": "5s", "delay": "1s"}}}}`,
		`{"processes": {"web": {"limits": {"memory_max": "256M", "memory_high": "200MiB", "cpus": 0.5, "tasks_max": 64}}}}`,
		`{"processes": {"web": {"limits": {"memory_max": 1048576, "cpus": 1e-3}}}}`,
		`{"processes": {"web": {"limits": {"memory_max": "1.5G", "swap": "1G"}}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := ParseManifest(in)
		if err != nil {
			if !errors.Is(err, ErrManifest) {
				t.Fatalf("error %v does not wrap ErrManifest", err)
			}
			return
		}
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseManifest(out)
		if err != nil {
			t.Fatalf("round trip of %s: %v", out, err)
		}
		if len(m.Processes) == 0 && len(again.Processes) == 0 {
			return
		}
		if !reflect.DeepEqual(again, m) {
			t.Fatalf("round trip %+v, want %+v", again, m)
		}
	})
}
