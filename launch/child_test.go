package launch

import (
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"testing"
)

func TestChildOptsRoundTrip(t *testing.T) {
	for _, o := range []childOpts{{}, {NewNS: true}, {KeepCaps: true}, {NewNS: true, KeepCaps: true}} {
		got, err := parseChildOpts(o.String())
		if err != nil || got != o {
			t.Errorf("parse(%q) = %+v, %v", o.String(), got, err)
		}
	}
	if _, err := parseChildOpts("ns=true,caps=all"); err == nil {
		t.Error("an unknown option was accepted")
	}
}

// The child half's report: notes are logged for -v, a failed setup or
// exec is the error Run returns; nothing at all means the command runs.
func TestReadReport(t *testing.T) {
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))
	if err := readReport(strings.NewReader(""), log); err != nil || logged.Len() != 0 {
		t.Errorf("empty report: %v, logged %q", err, logged.String())
	}
	report := "note make /sys/fs/cgroup read-only for the command: permission denied\nexec 13 permission denied\n"
	err := readReport(strings.NewReader(report), log)
	if !errors.Is(err, syscall.EACCES) || err.Error() != "exec: permission denied" {
		t.Errorf("exec failure: %v, want exec: permission denied (EACCES)", err)
	}
	if !strings.Contains(logged.String(), `reason="make /sys/fs/cgroup read-only for the command: permission denied"`) {
		t.Errorf("note not logged: %q", logged.String())
	}
	if err := readReport(strings.NewReader("fail drop CAP_SYS_ADMIN: operation not permitted\n"), log); err == nil || err.Error() != "drop CAP_SYS_ADMIN: operation not permitted" {
		t.Errorf("setup failure: %v", err)
	}
}

// Every dropped capability is named once, with the number the kernel
// gives it (linux/capability.h).
func TestDroppedCaps(t *testing.T) {
	want := map[string]int{"CAP_SYS_ADMIN": 21, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_BPF": 39, "CAP_SYS_PTRACE": 19, "CAP_SYS_MODULE": 16}
	if len(DroppedCaps) != len(want) {
		t.Fatalf("DroppedCaps %v, want %v", DroppedCaps, want)
	}
	for _, c := range DroppedCaps {
		if want[c.Name] != c.Num {
			t.Errorf("%s = %d, want %d", c.Name, c.Num, want[c.Name])
		}
	}
}
