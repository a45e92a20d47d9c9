//go:build unix

package ca

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestModesIgnoreUmask creates a CA under a wide-open umask: the key must
// still be 0600 and the directory 0700, because Init sets modes itself.
func TestModesIgnoreUmask(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := Init(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, KeyFile): 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %04o under umask 0, want %04o", p, fi.Mode().Perm(), want)
		}
	}
}
