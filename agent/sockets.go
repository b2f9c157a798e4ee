package agent

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// socketFor returns the listening socket of an instance slot
// ("app/web.1"), creating it on port on first use. The agent keeps it
// open across switches and restarts of the slot's instances, so
// connections queue in the kernel while no process accepts them. It
// listens on every address, as an app binding :$PORT would.
func (a *Agent) socketFor(slot string, port int) (*os.File, error) {
	a.sockMu.Lock()
	defer a.sockMu.Unlock()
	if f, ok := a.sockets[slot]; ok {
		return f, nil
	}
	if a.kept != nil {
		// At start-up: the socket a previous agent kept (fd store or exec),
		// still bound to the port, with the connections waiting on it.
		if f := a.kept.take(sockName(slot)); f != nil {
			a.sockets[slot] = f
			return f, nil
		}
	}
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, fmt.Errorf("listen on port %d for %s: %w", port, slot, err)
	}
	// File returns a duplicate; the listener itself is closed so that
	// the runtime's poller does not hold the socket in non-blocking mode
	// for the children that inherit it.
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		return nil, fmt.Errorf("socket of %s: %w", slot, err)
	}
	a.sockets[slot] = f
	a.keepSocket(slot, f)
	a.log.Debug("listening for socket-activated instances", "slot", slot, "port", port)
	return f, nil
}

// hasSocket reports whether the agent holds a socket for the slot.
func (a *Agent) hasSocket(slot string) bool {
	a.sockMu.Lock()
	defer a.sockMu.Unlock()
	_, ok := a.sockets[slot]
	return ok
}

// pruneSockets closes the sockets of the app's slots that no instance in
// socket mode uses and that keep does not name (slots about to start a
// socket-mode instance). app "" prunes every app.
func (a *Agent) pruneSockets(app string, keep map[string]bool) {
	used := map[string]bool{}
	for _, in := range a.appInstances(app) {
		if in.Mode == "socket" && in.steer == nil {
			used[in.slot()] = true
		}
	}
	a.sockMu.Lock()
	defer a.sockMu.Unlock()
	for slot, f := range a.sockets {
		if app != "" && !strings.HasPrefix(slot, app+"/") {
			continue
		}
		if used[slot] || keep[slot] {
			continue
		}
		f.Close()
		delete(a.sockets, slot)
		a.dropSocket(slot)
	}
}

// closeSockets closes every socket of the app ("" for all apps), used or
// not: the app is destroyed, or the agent stops.
func (a *Agent) closeSockets(app string) {
	a.sockMu.Lock()
	defer a.sockMu.Unlock()
	for slot, f := range a.sockets {
		if app == "" || strings.HasPrefix(slot, app+"/") {
			f.Close()
			delete(a.sockets, slot)
			a.dropSocket(slot)
		}
	}
}
