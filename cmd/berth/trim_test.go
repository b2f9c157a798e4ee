package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestE2E_AgentGivesBackItsImage runs two agents one after the other
// on the same app, one of them with --keep-image-mapped, and compares
// how much of their own executable's text stays mapped once the app
// runs. The trimming agent says in its debug log what it gave back once
// the switch ended, keeps far less of its text resident, and goes on
// answering (the code it runs faults back in).
func TestE2E_AgentGivesBackItsImage(t *testing.T) {
	tarball := appTarball(t, map[string]string{"Procfile": "a: exec sleep 3600\nb: exec sleep 3600\n"})
	text := map[bool]int{}
	for _, keep := range []bool{false, true} {
		e := newE2E(t)
		path := writeFile(t, e.dir, "app.tar.gz", tarball)
		if keep {
			e.startAgent("--keep-image-mapped")
		} else {
			e.startAgent()
		}
		before := strings.Count(e.agentLog(), "executable pages released")
		e.ok("deploy", "-a", e2eApp, path)
		e.running(e2eApp, 2, 1)
		if !keep {
			e.waitFor("the trim once the switch ended", func() (bool, string) {
				return strings.Count(e.agentLog(), "executable pages released") > before, e.agentLog()
			})
		} else {
			// Wait as long as the trimming agent did, for the same
			// chance of work after the switch (its trim's delay).
			time.Sleep(time.Second)
		}
		rss, size := textSegment(t, e.agent.cmd.Process.Pid)
		t.Logf("keep-image-mapped=%v: text %d KiB resident of %d KiB", keep, rss, size)
		text[keep] = rss
		e.ok("ps", "-a", e2eApp)
		e.stopAgent()
	}
	if text[false]*5 > text[true]*3 {
		t.Fatalf("text resident: %d KiB after the trim, %d KiB kept mapped: want under 60%%", text[false], text[true])
	}
}

// textSegment returns the resident and total size in KiB of pid's
// executable text mapping (r-xp of /proc/PID/exe).
func textSegment(t *testing.T, pid int) (rss, size int) {
	t.Helper()
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		switch {
		case len(fl) == 6 && strings.Contains(fl[0], "-") && !strings.HasSuffix(fl[0], ":"):
			in = fl[1] == "r-xp" && fl[5] == exe
		case in && len(fl) == 3 && (fl[0] == "Rss:" || fl[0] == "Size:"):
			n, err := strconv.Atoi(fl[1])
			if err != nil {
				t.Fatal(err)
			}
			if fl[0] == "Rss:" {
				rss = n
				return rss, size
			}
			size = n
		}
	}
	t.Fatalf("no text mapping of %s in /proc/%d/smaps", exe, pid)
	return 0, 0
}
