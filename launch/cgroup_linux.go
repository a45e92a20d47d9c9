package launch

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sluicehq/sluice/cgroup2"
)

// cgroup is the transient cgroup of one run.
type cgroup struct {
	path string // relative to the cgroup2 mount
	dir  string // absolute
}

// newCgroup creates sluice-run-<random> below the caller's own cgroup v2
// group, so it sits where the caller's resource limits already apply.
func newCgroup(mount string) (*cgroup, error) {
	if mount == "" {
		return nil, errors.New("create run cgroup: no cgroup2 mount given")
	}
	own, err := cgroup2.Self()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	rel := filepath.Join(own, fmt.Sprintf("sluice-run-%d-%s", os.Getpid(), hex.EncodeToString(b)))
	cg := &cgroup{path: rel, dir: filepath.Join(mount, rel)}
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create run cgroup %s: %w", cg.dir, err)
	}
	return cg, nil
}

// remove kills what is left in the cgroup (the child's own children that
// outlived it) and removes the directory.
func (c *cgroup) remove() {
	_ = os.WriteFile(filepath.Join(c.dir, "cgroup.kill"), []byte("1"), 0)
	for i := 0; i < 100; i++ {
		if err := os.Remove(c.dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
