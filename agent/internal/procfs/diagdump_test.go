package procfs

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"syscall"
	"testing"
)

// TestDiagDump_ListenerAndConnection ensures a dump finds a listening
// socket with its accept queue (a connection the kernel completed and
// nobody accepted yet), then, once accepted, the connection's socket
// with the inode this process holds for it (GroupSockets finds it).
func TestDiagDump_ListenerAndConnection(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	find := func(state uint8, local uint16) (DiagSocket, bool) {
		socks, err := DiagDump(1<<TCPListen | 1<<1)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range socks {
			if s.State == state && s.Local.Port() == local {
				return s, true
			}
		}
		return DiagSocket{}, false
	}
	l, ok := find(TCPListen, port)
	if !ok || l.RQueue != 1 {
		t.Fatalf("listener on %d: %+v, found %v; want an accept queue of 1", port, l, ok)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if l, _ := find(TCPListen, port); l.RQueue != 0 {
		t.Fatalf("accept queue after the accept: %d", l.RQueue)
	}
	conn, ok := find(1, port)
	if !ok || conn.Inode == 0 || conn.Remote.Port() != uint16(c.LocalAddr().(*net.TCPAddr).Port) {
		t.Fatalf("accepted connection: %+v, found %v", conn, ok)
	}
	held, err := GroupSockets(syscall.Getpgrp())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := held[conn.Inode]; !ok && syscall.Getpgrp() == os.Getpid() {
		t.Errorf("GroupSockets of this process group misses the accepted socket %d", conn.Inode)
	}
	if _, err := GroupSockets(0); err == nil {
		t.Error("GroupSockets(0) did not fail")
	}
}

// TestParseDiagDump_Malformed ensures a truncated or lying reply is an
// error, a NLMSG_DONE ends the dump and an error message is returned.
func TestParseDiagDump_Malformed(t *testing.T) {
	ne := binary.NativeEndian
	msg := func(typ uint16, body []byte) []byte {
		b := make([]byte, nlmsgHeaderLen+len(body))
		ne.PutUint32(b[0:], uint32(len(b)))
		ne.PutUint16(b[4:], typ)
		copy(b[nlmsgHeaderLen:], body)
		return b
	}
	if _, _, err := ParseDiagDump([]byte{1, 2, 3}, nil); err == nil {
		t.Error("short header accepted")
	}
	lying := msg(syscall.NLMSG_DONE, nil)
	ne.PutUint32(lying[0:], 100)
	if _, _, err := ParseDiagDump(lying, nil); err == nil {
		t.Error("length past the end accepted")
	}
	if _, _, err := ParseDiagDump(msg(20, make([]byte, 10)), nil); err == nil {
		t.Error("short sock_diag message accepted")
	}
	errno := make([]byte, 4)
	eperm := -int32(syscall.EPERM)
	ne.PutUint32(errno, uint32(eperm))
	if _, _, err := ParseDiagDump(msg(syscall.NLMSG_ERROR, errno), nil); err == nil {
		t.Error("error message not returned")
	}
	out, done, err := ParseDiagDump(bytes.Clone(msg(syscall.NLMSG_DONE, make([]byte, 4))), nil)
	if err != nil || !done || len(out) != 0 {
		t.Errorf("done message: %v %v %v", out, done, err)
	}
}
