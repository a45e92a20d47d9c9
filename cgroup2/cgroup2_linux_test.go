package cgroup2

import (
	"os"
	"strings"
	"syscall"
	"testing"
)

// The functions that read this machine's /proc and cgroupfs; they need no
// privileges.
func TestLive(t *testing.T) {
	mount, err := Mount()
	if err != nil {
		t.Skipf("no cgroup2 here: %v", err) // a v1-only host; parsing is tested above
	}
	self, err := Self()
	if err != nil || !strings.HasPrefix(self, "/") {
		t.Fatalf("Self() = %q, %v", self, err)
	}
	if p, err := OfProcess(os.Getpid()); err != nil || p != self {
		t.Errorf("OfProcess(own pid) = %q, %v; want %q", p, err, self)
	}
	id, err := ID(mount)
	if err != nil || id == 0 {
		t.Errorf("ID(%s) = %d, %v", mount, id, err)
	}
	fi, err := os.Stat(mount)
	if err != nil {
		t.Fatal(err)
	}
	if ino := fi.Sys().(*syscall.Stat_t).Ino; ino != id {
		t.Errorf("ID(%s) = %d, inode %d", mount, id, ino)
	}
	if _, err := ID(mount + "/no-such-cgroup"); err == nil || !strings.Contains(err.Error(), "stat cgroup ") {
		t.Errorf("ID of a missing cgroup: %v", err)
	}
}
