// Package steer decides which listening socket gets each new TCP
// connection to a port, with no proxy in the data path: an eBPF sk_lookup
// program (Linux 5.9+, as Cloudflare's tubular does) attached to the
// network namespace looks the connection's destination port up in a map
// of groups and hands the connection to one of the group's sockets, held
// in a sockmap. The kernel runs it when a SYN finds no established
// socket, before its own listener lookup; a port with no group, or a
// group whose sockets are all closed, falls through to that lookup.
//
// Maps:
//
//	ports    hash, port (host order, u32) -> group {base, count u32}
//	sockets  sockmap, slot (u32) -> listening socket
//
// A group is count consecutive slots from base. The program picks slot
// base + hash(client address and port) % count, and the next ones in
// turn if that socket is gone (a closed socket leaves the sockmap by
// itself). Set changes a group by filling fresh slots and then
// replacing the ports' map values, one atomic update per port: a
// connection is steered by the old group or by the new one, never by a
// half-written one. Sockets already accepted, or queued in an old
// listener, stay where they are.
//
// It is a leaf: it must not import any package of berth.
package steer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// MaxGroup is the number of sockets a group can hold: the program tries
// at most this many slots of a group for one connection.
const MaxGroup = 32

// maxSlots is the size of the sockmap: every group of every port, with
// room for the fresh slots of a Set while the old ones still exist.
const maxSlots = 4096

// maxPorts bounds the ports map.
const maxPorts = 1024

// ErrUnsupported is returned by Open when the kernel cannot run the
// program (no BPF, no sk_lookup: Linux older than 5.9, or not allowed:
// not root, no CAP_BPF and CAP_NET_ADMIN).
var ErrUnsupported = errors.New("sk_lookup steering is not available")

// ErrNotSteerable is returned by Set for a descriptor the sockmap does
// not take: not a TCP socket, not listening, or a Multipath TCP one (Go
// programs listen with MPTCP by default since Go 1.24; GODEBUG=
// multipathtcp=0 turns that off).
var ErrNotSteerable = errors.New("not a listening plain-TCP socket")

// groupValue is the ports map's value.
type groupValue struct {
	Base, Count uint32
}

// Steerer owns the program, its attachment to the agent's network
// namespace and its maps. Its methods are safe for concurrent use.
type Steerer struct {
	prog    *ebpf.Program
	link    link.Link
	ports   *ebpf.Map
	sockets *ebpf.Map

	// pin is the bpffs directory the link and maps are pinned in ("" when
	// not pinned).
	pin string

	// mu guards used, groups and orphans.
	mu     sync.Mutex
	used   [maxSlots]bool
	groups map[string]*group
	// orphans are the groups a previous Steerer left in pinned maps, by
	// port: they steer until a Set takes the port over or DropOrphans.
	orphans map[uint16]groupValue
}

// group is a set of sockets that the connections to ports are spread
// across, named by its owner's key.
type group struct {
	ports       []uint16
	base, count uint32
}

// Open loads the program and attaches it to the network namespace of
// the calling process. The error wraps ErrUnsupported when the kernel or
// the process's privileges do not allow it. The program is detached
// when the Steerer is closed or its process ends.
func Open() (*Steerer, error) {
	ports, err := ebpf.NewMap(&ebpf.MapSpec{Name: "berth_ports", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: maxPorts})
	if err != nil {
		return nil, fmt.Errorf("%w: create the ports map: %w", ErrUnsupported, err)
	}
	sockets, err := ebpf.NewMap(&ebpf.MapSpec{Name: "berth_sockets", Type: ebpf.SockMap, KeySize: 4, ValueSize: 4, MaxEntries: maxSlots})
	if err != nil {
		ports.Close()
		return nil, fmt.Errorf("%w: create the sockmap: %w", ErrUnsupported, err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "berth_steer",
		Type:         ebpf.SkLookup,
		AttachType:   ebpf.AttachSkLookup,
		License:      "GPL", // bpf_sk_assign is GPL-only
		Instructions: program(ports.FD(), sockets.FD()),
	})
	if err != nil {
		ports.Close()
		sockets.Close()
		return nil, fmt.Errorf("%w: load the sk_lookup program: %w", ErrUnsupported, err)
	}
	ns, err := os.Open("/proc/self/ns/net")
	if err != nil {
		prog.Close()
		ports.Close()
		sockets.Close()
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	defer ns.Close()
	l, err := link.AttachNetNs(int(ns.Fd()), prog)
	if err != nil {
		prog.Close()
		ports.Close()
		sockets.Close()
		return nil, fmt.Errorf("%w: attach to the network namespace: %w", ErrUnsupported, err)
	}
	return &Steerer{prog: prog, link: l, ports: ports, sockets: sockets, groups: map[string]*group{}}, nil
}

// Pin names in a pin directory.
const (
	pinLink    = "link"
	pinPorts   = "ports"
	pinSockets = "sockets"
)

// bpffsMagic is BPF_FS_MAGIC, the f_type of a bpffs mount.
const bpffsMagic = 0xcafe4a11

// IsBPFFS reports whether dir is on a bpffs mount.
func IsBPFFS(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && uint32(st.Type) == bpffsMagic
}

// OpenPinned is Open with the link and the maps pinned in dir, a
// directory on a bpffs mount (created if missing): the program keeps
// steering after this process ends (a crash, an upgrade in place), with
// the sockets in the sockmap, until a Steerer unpins it. If dir holds
// what a previous Steerer pinned, it is taken over: the same maps, the
// link updated to this build's program, and the groups found in the
// ports map kept as orphans, which steer until Set takes their ports or
// DropOrphans drops them. Pins in an unusable state are replaced.
func OpenPinned(dir string) (*Steerer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("steering pin directory: %w", err)
	}
	if !IsBPFFS(dir) {
		return nil, fmt.Errorf("steering pin directory %s is not on a bpffs mount", dir)
	}
	if s, err := loadPinned(dir); err == nil {
		return s, nil
	}
	unpinAll(dir) // nothing there, or something unusable: start afresh
	s, err := Open()
	if err != nil {
		return nil, err
	}
	for name, pin := range map[string]interface{ Pin(string) error }{pinPorts: s.ports, pinSockets: s.sockets, pinLink: s.link} {
		if err := pin.Pin(filepath.Join(dir, name)); err != nil {
			s.Close()
			unpinAll(dir)
			return nil, fmt.Errorf("pin the steering %s in %s: %w", name, dir, err)
		}
	}
	s.pin = dir
	return s, nil
}

// loadPinned takes over what a previous Steerer pinned in dir.
func loadPinned(dir string) (*Steerer, error) {
	ports, err := ebpf.LoadPinnedMap(filepath.Join(dir, pinPorts), nil)
	if err != nil {
		return nil, err
	}
	sockets, err := ebpf.LoadPinnedMap(filepath.Join(dir, pinSockets), nil)
	if err != nil {
		ports.Close()
		return nil, err
	}
	l, err := link.LoadPinnedLink(filepath.Join(dir, pinLink), nil)
	if err != nil {
		ports.Close()
		sockets.Close()
		return nil, err
	}
	s := &Steerer{link: l, ports: ports, sockets: sockets, pin: dir, groups: map[string]*group{}, orphans: map[uint16]groupValue{}}
	// This build's program, on the same maps (an upgrade may change it).
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "berth_steer", Type: ebpf.SkLookup, AttachType: ebpf.AttachSkLookup,
		License: "GPL", Instructions: program(ports.FD(), sockets.FD())})
	if err == nil {
		err = l.Update(prog)
	}
	if err != nil {
		if prog != nil {
			prog.Close()
		}
		s.Close()
		return nil, fmt.Errorf("update the pinned steering program: %w", err)
	}
	s.prog = prog
	var port uint32
	var val groupValue
	it := ports.Iterate()
	for it.Next(&port, &val) {
		if val.Count == 0 || int(val.Base)+int(val.Count) > maxSlots || port > 65535 {
			ports.Delete(port) //nolint:errcheck // a bad entry steers nothing
			continue
		}
		s.orphans[uint16(port)] = val
		for i := val.Base; i < val.Base+val.Count; i++ {
			s.used[i] = true
		}
	}
	if err := it.Err(); err != nil {
		s.Close()
		return nil, fmt.Errorf("read the pinned ports map: %w", err)
	}
	return s, nil
}

// unpinAll removes dir's pins (what is gone already is fine).
func unpinAll(dir string) {
	for _, name := range []string{pinLink, pinPorts, pinSockets} {
		os.Remove(filepath.Join(dir, name))
	}
}

// DropOrphans stops steering the ports of the groups a previous
// Steerer left that no Set took over since OpenPinned.
func (s *Steerer) DropOrphans() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for port := range s.orphans {
		s.ports.Delete(uint32(port)) //nolint:errcheck // gone already is fine
		s.dropOrphan(port)
	}
}

// dropOrphan forgets port's orphan group, and frees its slots once no
// other orphan port uses them. Called with mu held.
func (s *Steerer) dropOrphan(port uint16) {
	og, ok := s.orphans[port]
	if !ok {
		return
	}
	delete(s.orphans, port)
	for _, o := range s.orphans {
		if o.Base == og.Base {
			return
		}
	}
	s.release(int(og.Base), int(og.Count))
}

// Pinned reports whether the program stays attached after Close.
func (s *Steerer) Pinned() bool { return s.pin != "" }

// Close releases this process's hold on the program and maps. Unpinned,
// that detaches the program: connections go to the kernel's own
// listener lookup again. Pinned, it keeps steering until Unpin. Sockets
// are not closed.
func (s *Steerer) Close() error {
	var errs []error
	if s.prog != nil {
		errs = append(errs, s.prog.Close())
	}
	return errors.Join(append(errs, s.link.Close(), s.ports.Close(), s.sockets.Close())...)
}

// Unpin removes the pins, so that Close detaches the program.
func (s *Steerer) Unpin() {
	if s.pin != "" {
		unpinAll(s.pin)
		os.Remove(s.pin)
	}
}

// Set makes the group named key steer every new connection to one of
// ports to one of fds (listening TCP sockets, spread by the client's
// address and port), replacing what the group did before: ports it no
// longer names are released. No fds, or no ports, removes the group.
// The fds are not kept: the sockmap holds its own reference to each
// socket, dropped when the socket is closed by every process that holds
// it. On error the group is as it was.
func (s *Steerer) Set(key string, ports []uint16, fds []int) error {
	if len(fds) == 0 || len(ports) == 0 {
		return s.Remove(key)
	}
	if len(fds) > MaxGroup {
		return fmt.Errorf("steer %s: %d sockets, more than the %d a group holds", key, len(fds), MaxGroup)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, g := range s.groups {
		if k == key {
			continue
		}
		for _, p := range ports {
			if slices.Contains(g.ports, p) {
				return fmt.Errorf("steer %s: port %d belongs to %s", key, p, k)
			}
		}
	}
	base, ok := s.alloc(len(fds))
	if !ok {
		return fmt.Errorf("steer %s: no %d free slots in the sockmap", key, len(fds))
	}
	for i, fd := range fds {
		if err := s.sockets.Update(uint32(base+i), uint32(fd), ebpf.UpdateAny); err != nil {
			s.release(base, i)
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTSOCK) || errors.Is(err, unix.EBADF) {
				return fmt.Errorf("steer %s: socket %d: %w%s: %w", key, fd, ErrNotSteerable, protocolHint(fd), err)
			}
			return fmt.Errorf("steer %s: put socket %d in the sockmap: %w", key, fd, err)
		}
	}
	val := groupValue{Base: uint32(base), Count: uint32(len(fds))}
	for i, p := range ports {
		if err := s.ports.Update(uint32(p), val, ebpf.UpdateAny); err != nil {
			// Put back what this call changed.
			old := s.groups[key]
			for _, q := range ports[:i] {
				if old != nil && slices.Contains(old.ports, q) {
					s.ports.Update(uint32(q), groupValue{Base: old.base, Count: old.count}, ebpf.UpdateAny) //nolint:errcheck // best effort
				} else {
					s.ports.Delete(uint32(q)) //nolint:errcheck // best effort
				}
			}
			s.release(base, len(fds))
			return fmt.Errorf("steer %s: point port %d at its sockets: %w", key, p, err)
		}
	}
	if old := s.groups[key]; old != nil {
		for _, p := range old.ports {
			if !slices.Contains(ports, p) {
				s.ports.Delete(uint32(p)) //nolint:errcheck // gone already is fine
			}
		}
		s.release(int(old.base), int(old.count))
	}
	s.groups[key] = &group{ports: slices.Clone(ports), base: uint32(base), count: uint32(len(fds))}
	for _, p := range ports {
		s.dropOrphan(p) // taken over
	}
	return nil
}

// Remove stops steering the group's ports: their connections go to the
// kernel's own listener lookup.
func (s *Steerer) Remove(key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[key]
	if g == nil {
		return nil
	}
	var errs []error
	for _, p := range g.ports {
		if err := s.ports.Delete(uint32(p)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("release port %d: %w", p, err))
		}
	}
	s.release(int(g.base), int(g.count))
	delete(s.groups, key)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unsteer %s: %w", key, err)
	}
	return nil
}

// Ports returns the ports the group named key steers (nil for none).
func (s *Steerer) Ports(key string) []uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.groups[key]; g != nil {
		return slices.Clone(g.ports)
	}
	return nil
}

// protocolHint says ", it is Multipath TCP" for an MPTCP socket.
func protocolHint(fd int) string {
	if p, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err == nil && p == unix.IPPROTO_MPTCP {
		return " (it is Multipath TCP)"
	}
	return ""
}

// alloc finds n consecutive free slots and marks them used. Called with
// mu held.
func (s *Steerer) alloc(n int) (int, bool) {
	run := 0
	for i := range maxSlots {
		if s.used[i] {
			run = 0
			continue
		}
		if run++; run == n {
			base := i - n + 1
			for j := base; j <= i; j++ {
				s.used[j] = true
			}
			return base, true
		}
	}
	return 0, false
}

// release empties n slots from base and frees them. Called with mu held.
func (s *Steerer) release(base, n int) {
	for i := base; i < base+n; i++ {
		s.sockets.Delete(uint32(i)) //nolint:errcheck // a closed socket left by itself
		s.used[i] = false
	}
}

// Offsets in struct bpf_sk_lookup (include/uapi/linux/bpf.h).
const (
	offProtocol  = 12
	offRemoteIP4 = 16
	offRemoteIP6 = 20
	offRemote    = 36 // remote_port, network byte order
	offLocalPort = 60 // host byte order
)

// program returns the sk_lookup program: see the package comment.
//
//	r6 ctx, r7 base, r8 count, r9 index within the group
func program(portsFD, socketsFD int) asm.Instructions {
	const (
		skPass = 1
		ipTCP  = 6
		// A 32-bit multiplicative hash (Knuth's golden ratio), as int32.
		golden = -1640531535 // 0x9e3779b1
	)
	ins := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, offProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, ipTCP, "pass"),
		// The destination port's group.
		asm.LoadMem(asm.R2, asm.R6, offLocalPort, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, portsFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word),
		asm.LoadMem(asm.R8, asm.R0, 4, asm.Word),
		asm.JEq.Imm(asm.R8, 0, "pass"),
		// The client's hash: its address (IPv4 or IPv6) and port.
		asm.LoadMem(asm.R9, asm.R6, offRemoteIP4, asm.Word),
	}
	for i := range 4 {
		ins = append(ins,
			asm.LoadMem(asm.R2, asm.R6, int16(offRemoteIP6+4*i), asm.Word),
			asm.Xor.Reg32(asm.R9, asm.R2))
	}
	ins = append(ins,
		asm.LoadMem(asm.R2, asm.R6, offRemote, asm.Half),
		asm.Xor.Reg32(asm.R9, asm.R2),
		asm.Mul.Imm32(asm.R9, golden),
		asm.Mov.Reg32(asm.R2, asm.R9),
		asm.RSh.Imm32(asm.R2, 16),
		asm.Xor.Reg32(asm.R9, asm.R2),
		asm.Mod.Reg32(asm.R9, asm.R8),
	)
	// Try the chosen slot, then the next ones in turn, at most count.
	for k := range MaxGroup {
		if k > 0 {
			next := fmt.Sprintf("next%d", k)
			ins = append(ins,
				asm.JLE.Imm(asm.R8, int32(k), "pass"),
				asm.Add.Imm32(asm.R9, 1),
				asm.JLT.Reg(asm.R9, asm.R8, next),
				asm.Mov.Imm32(asm.R9, 0),
				asm.Mov.Reg32(asm.R2, asm.R7).WithSymbol(next),
			)
		} else {
			ins = append(ins, asm.Mov.Reg32(asm.R2, asm.R7))
		}
		ins = append(ins,
			asm.Add.Reg32(asm.R2, asm.R9),
			asm.StoreMem(asm.RFP, -8, asm.R2, asm.Word),
			asm.LoadMapPtr(asm.R1, socketsFD),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -8),
			asm.FnMapLookupElem.Call(),
			asm.JNE.Imm(asm.R0, 0, "found"),
		)
	}
	ins = append(ins,
		asm.Ja.Label("pass"),
		// Hand the connection to the socket; if the kernel refuses it
		// (an IPv4-only socket for an IPv6 client), its own lookup runs.
		asm.Mov.Reg(asm.R7, asm.R0).WithSymbol("found"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnSkAssign.Call(),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.FnSkRelease.Call(),
		asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass"),
		asm.Return(),
	)
	return ins
}
