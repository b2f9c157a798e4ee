package procfs

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// SelfRSS returns the calling process's resident memory and its
// anonymous part, in bytes (VmRSS and RssAnon of /proc/self/status).
func SelfRSS() (rss, anon uint64, err error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0, err
	}
	return ParseRSS(b)
}

// ParseRSS reads VmRSS and RssAnon from the contents of a
// /proc/<pid>/status file.
func ParseRSS(b []byte) (rss, anon uint64, err error) {
	var haveRSS, haveAnon bool
	for line := range bytes.Lines(b) {
		key, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		var dst *uint64
		switch string(key) {
		case "VmRSS":
			dst, haveRSS = &rss, true
		case "RssAnon":
			dst, haveAnon = &anon, true
		default:
			continue
		}
		f := bytes.Fields(val)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, 0, fmt.Errorf("malformed /proc status %s: %q", key, bytes.TrimSpace(val))
		}
		kb, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil || kb > 1<<50 {
			return 0, 0, fmt.Errorf("malformed /proc status %s: %q", key, f[0])
		}
		*dst = kb << 10
	}
	if !haveRSS || !haveAnon {
		return 0, 0, fmt.Errorf("/proc status has no VmRSS or RssAnon")
	}
	return rss, anon, nil
}
