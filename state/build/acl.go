package build

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// Private builds. With Config.Private (the agent runs as root and each
// app as a user of its own) builds/ is 0711, so no app can list the
// digests, and each build's top directory is 0500, owned by the agent,
// with a POSIX access ACL naming the uids that may enter it (r-x): the
// users of the apps that run the build. The files inside stay 0444/0555:
// what keeps another app out is that it cannot get past the top
// directory. A build shared by two apps (the same digest) is entered by
// both through the same directory, so an ACL is the simplest sound way to
// give each of them, and no one else, access; no copies, no mounts, no
// external tools. The ACL is written as the system.posix_acl_access
// extended attribute; the file system of the data dir must support it
// (ext4, xfs, btrfs and tmpfs do).

// The on-disk encoding of a POSIX ACL (linux/posix_acl_xattr.h): a
// little-endian version, then entries of tag, permissions and id, sorted
// by tag and, for named users, by id.
const (
	aclXattr     = "system.posix_acl_access"
	aclVersion   = 2
	aclUserObj   = 0x01
	aclUser      = 0x02
	aclGroupObj  = 0x04
	aclMask      = 0x10
	aclOther     = 0x20
	aclRead      = 0x04
	aclExecute   = 0x01
	aclUndefined = 0xffffffff
)

// aclMu serializes changes to the ACLs of builds (read, add or remove a
// uid, write back), so two concurrent grants never lose one another.
var aclMu sync.Mutex

// ErrNoACL is returned by Grant when the file system of the builds does
// not support POSIX ACLs, so builds cannot be private to their apps.
var ErrNoACL = errors.New("the file system of the builds does not support POSIX ACLs")

// Grant lets uid enter build d (a private store only; otherwise, or for
// uid 0, it does nothing). A uid once granted keeps its access until
// Prune removes it.
func (s *Store) Grant(d string, uid int) error {
	if !s.private || uid == 0 {
		return nil
	}
	if err := ValidateDigest(d); err != nil {
		return err
	}
	aclMu.Lock()
	defer aclMu.Unlock()
	p := filepath.Join(s.dir, d)
	uids, err := readACLUsers(p)
	if err != nil {
		return fmt.Errorf("grant uid %d access to build %s: %w", uid, d, err)
	}
	if slices.Contains(uids, uid) {
		return nil
	}
	if err := writeACL(p, append(uids, uid)); err != nil {
		return fmt.Errorf("grant uid %d access to build %s: %w", uid, d, err)
	}
	return nil
}

// Prune takes away access to every build from the uids for which keep
// returns false, and makes builds published before the store was private
// private (mode 0500 plus the ACL). The agent runs it at start and after
// an app is deleted, so that a uid handed to a new app never inherits the
// builds of the app that held it before.
func (s *Store) Prune(keep func(uid int) bool) error {
	if !s.private {
		return nil
	}
	digests, err := s.List()
	if err != nil {
		return err
	}
	aclMu.Lock()
	defer aclMu.Unlock()
	for _, d := range digests {
		p := filepath.Join(s.dir, d)
		uids, err := readACLUsers(p)
		if err != nil {
			return fmt.Errorf("prune access to build %s: %w", d, err)
		}
		kept := slices.DeleteFunc(slices.Clone(uids), func(uid int) bool { return !keep(uid) })
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("prune access to build %s: %w", d, err)
		}
		want := os.FileMode(0o500)
		if len(kept) > 0 {
			want = 0o550
		}
		if len(kept) == len(uids) && fi.Mode().Perm() == want {
			continue // private already, and no one to remove
		}
		if err := writeACL(p, kept); err != nil {
			return fmt.Errorf("prune access to build %s: %w", d, err)
		}
	}
	return nil
}

// readACLUsers returns the named users of the access ACL of p.
func readACLUsers(p string) ([]int, error) {
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(p, aclXattr, buf)
	if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ACL of %s: %w", p, err)
	}
	buf = buf[:n]
	if len(buf) < 4 || binary.LittleEndian.Uint32(buf) != aclVersion || (len(buf)-4)%8 != 0 {
		return nil, fmt.Errorf("read ACL of %s: malformed (%d bytes)", p, len(buf))
	}
	var uids []int
	for e := buf[4:]; len(e) >= 8; e = e[8:] {
		if binary.LittleEndian.Uint16(e) == aclUser {
			uids = append(uids, int(binary.LittleEndian.Uint32(e[4:])))
		}
	}
	return uids, nil
}

// writeACL gives p the access ACL owner r-x, the named uids r-x, no one
// else anything; with no uids, plain mode 0500.
func writeACL(p string, uids []int) error {
	if len(uids) == 0 {
		// Chmod alone would leave the named entries, masked; remove them.
		if err := unix.Removexattr(p, aclXattr); err != nil && !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("remove ACL of %s: %w", p, err)
		}
		return os.Chmod(p, 0o500)
	}
	uids = slices.Clone(uids)
	slices.Sort(uids)
	uids = slices.Compact(uids)
	rx := uint16(aclRead | aclExecute)
	buf := binary.LittleEndian.AppendUint32(nil, aclVersion)
	entry := func(tag, perm uint16, id uint32) {
		buf = binary.LittleEndian.AppendUint16(buf, tag)
		buf = binary.LittleEndian.AppendUint16(buf, perm)
		buf = binary.LittleEndian.AppendUint32(buf, id)
	}
	entry(aclUserObj, rx, aclUndefined)
	for _, uid := range uids {
		entry(aclUser, rx, uint32(uid))
	}
	entry(aclGroupObj, 0, aclUndefined)
	entry(aclMask, rx, aclUndefined)
	entry(aclOther, 0, aclUndefined)
	// Setting the ACL sets the mode bits from it too (0550: owner r-x,
	// mask r-x as the group bits, other none).
	if err := unix.Setxattr(p, aclXattr, buf, 0); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("%w (%s): run the agent with --default-user to share one user, or move the data dir", ErrNoACL, p)
		}
		return fmt.Errorf("write ACL of %s: %w", p, err)
	}
	return nil
}
