package build

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// TestStore_PrivateBuilds ensures that in a private store a build is
// entered only by the uids granted access (and root), that builds/ cannot
// be listed, and that Prune takes a uid's access away. It runs processes
// as other uids, so it needs root.
func TestStore_PrivateBuilds(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it runs processes as other uids (skipped because euid != 0)")
	}
	top := t.TempDir()
	for d := top; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil { // t.TempDir makes 0700 dirs
			t.Fatal(err)
		}
	}
	s, err := Open(Config{Dir: filepath.Join(top, "builds"), Private: true}, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	b, err := importBytes(t, s, mkTar(t, procfile, file("secret.txt", "s3cret")))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(b.Dir); err != nil || fi.Mode().Perm() != 0o500 {
		t.Fatalf("new private build: %v, %v; want mode 0500", fi.Mode(), err)
	}
	const granted, other = 61301, 61302
	// as runs cat or ls as uid with no groups, and reports whether it worked.
	as := func(uid int, args ...string) error {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return errors.New(string(out))
		}
		return nil
	}
	secret := filepath.Join(b.Dir, "secret.txt")
	if err := as(granted, "cat", secret); err == nil {
		t.Fatal("uid not granted yet read the build")
	}
	if err := s.Grant(b.Digest, granted); err != nil {
		t.Fatal(err)
	}
	if err := s.Grant(b.Digest, granted); err != nil { // twice is once
		t.Fatal(err)
	}
	if err := as(granted, "cat", secret); err != nil {
		t.Errorf("granted uid cannot read its build: %v", err)
	}
	if err := as(other, "cat", secret); err == nil {
		t.Error("another uid read the build")
	}
	if err := as(other, "ls", s.Dir()); err == nil {
		t.Error("another uid listed builds/")
	}
	if uids, err := readACLUsers(b.Dir); err != nil || !slices.Equal(uids, []int{granted}) {
		t.Errorf("ACL users = %v, %v", uids, err)
	}

	// Reopened, the build keeps its ACL; Prune removes what keep refuses.
	if err := s.Grant(b.Digest, other); err != nil {
		t.Fatal(err)
	}
	if err := s.Prune(func(uid int) bool { return uid == other }); err != nil {
		t.Fatal(err)
	}
	if err := as(granted, "cat", secret); err == nil {
		t.Error("pruned uid still reads the build")
	}
	if err := as(other, "cat", secret); err != nil {
		t.Errorf("kept uid lost access: %v", err)
	}
	if err := s.Prune(func(int) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(b.Dir); err != nil || fi.Mode().Perm() != 0o500 {
		t.Errorf("build with no uid left: %v, %v; want mode 0500", fi.Mode(), err)
	}
	if err := as(other, "cat", secret); err == nil {
		t.Errorf("uid %s still reads the build after pruning everyone", strconv.Itoa(other))
	}
}

// TestStore_PrivateMakesOldBuildsPrivate ensures a store opened private
// over builds published before (0555) makes them private at Prune, and
// that a store that is not private grants nothing.
func TestStore_PrivateMakesOldBuildsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "builds")
	s, err := Open(Config{Dir: dir}, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	b, err := importBytes(t, s, mkTar(t, procfile))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Grant(b.Digest, 61301); err != nil {
		t.Fatal(err)
	}
	if uids, _ := readACLUsers(b.Dir); len(uids) != 0 {
		t.Errorf("a store that is not private wrote an ACL: %v", uids)
	}
	s, err = Open(Config{Dir: dir, Private: true}, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Prune(func(int) bool { return true }); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(b.Dir); err != nil || fi.Mode().Perm() != 0o500 {
		t.Errorf("old build: %v, %v; want mode 0500", fi.Mode(), err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("builds/: %v, %v; want mode 0711", fi.Mode(), err)
	}
}
