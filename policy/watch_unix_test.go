//go:build unix

package policy

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestWatchSIGHUP(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "policy.yaml")
	writeFile(t, f, allowX)
	w := startWatch(t, f, false)
	// SIGHUP reloads even an unchanged file (and a broken one is refused).
	old := w.cur.Load()
	for range 2 {
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if err := w.next(); err != nil {
			t.Fatal(err)
		}
	}
	if w.cur.Load() == old {
		t.Fatal("SIGHUP did not install a new engine")
	}
}
