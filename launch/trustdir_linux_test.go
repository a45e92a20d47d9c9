package launch

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// A run killed with SIGKILL leaves its CA bundle directory behind; the next
// run removes it, and nothing else: not a live run's, not a name that is
// not ours.
func TestSweepTrustDirsRemovesOnlyDeadRuns(t *testing.T) {
	tmp := t.TempDir()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(tmp, trustDirPrefix+strconv.Itoa(gone.Process.Pid)+"-abc")
	live := filepath.Join(tmp, trustDirPrefix+strconv.Itoa(os.Getpid())+"-def")
	foreign := filepath.Join(tmp, trustDirPrefix+"cache")
	for _, d := range []string{dead, live, foreign} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "ca-bundle.pem"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sweepTrustDirs(tmp, os.Getuid(), nil)
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("the dead run's directory is still there (stat: %v)", err)
	}
	for _, d := range []string{live, foreign} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s was removed: %v", filepath.Base(d), err)
		}
	}
}
