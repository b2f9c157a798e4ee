package systemd

import (
	"fmt"
	"regexp"
	"sync"

	"github.com/coreos/go-systemd/v22/journal"
)

// SendJournal sends one line of app output to journald with the given
// fields (BERTH_APP, BERTH_PROCESS, BERTH_RELEASE, ...) plus BERTH_STREAM
// (stdout or stderr), so `journalctl BERTH_APP=hello` finds it. The
// SYSLOG_IDENTIFIER is the app's name unless fields set one. Both streams
// go at priority info: many programs log normally to stderr. Field names
// must be upper case letters, digits and underscores, not starting with
// an underscore; a bad one is an error and nothing is sent.
func SendJournal(text string, stderr bool, fields map[string]string) error {
	vars := make(map[string]string, len(fields)+2)
	for k, v := range fields {
		if !journalFieldRE().MatchString(k) {
			return fmt.Errorf("send to journal: field name %q: %w", k, ErrInvalidField)
		}
		vars[k] = v
	}
	vars["BERTH_STREAM"] = "stdout"
	if stderr {
		vars["BERTH_STREAM"] = "stderr"
	}
	if _, ok := vars["SYSLOG_IDENTIFIER"]; !ok && fields["BERTH_APP"] != "" {
		vars["SYSLOG_IDENTIFIER"] = fields["BERTH_APP"]
	}
	if err := journal.Send(text, journal.PriInfo, vars); err != nil {
		return fmt.Errorf("send to journal: %w", err)
	}
	return nil
}

// UnderJournal reports whether the agent's stderr is connected to journald
// (JOURNAL_STREAM matches stderr's device and inode), so its log lines get
// timestamps from the journal and should not carry their own.
func UnderJournal() bool {
	ok, err := journal.StderrIsJournalStream()
	return err == nil && ok
}

// journalFieldRE is what journald accepts as a field name sent by a client.
var journalFieldRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Z0-9][A-Z0-9_]{0,63}$`) })
