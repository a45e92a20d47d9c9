package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

const defaultBPFFS = "/sys/fs/bpf"

// onBPFFS reports whether p (or its nearest existing ancestor) is on a bpf
// filesystem.
func onBPFFS(p string) bool {
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(p, &st); err == nil {
			return st.Type == unix.BPF_FS_MAGIC
		} else if !errors.Is(err, unix.ENOENT) {
			return false
		}
		parent := filepath.Dir(p)
		if parent == p {
			return false
		}
		p = parent
	}
}

// ensureBPFFS makes dir a directory on a bpf filesystem, mounting bpffs at
// /sys/fs/bpf when dir is below it and nothing is mounted there.
func ensureBPFFS(dir string) error {
	if !onBPFFS(dir) {
		if !strings.HasPrefix(dir, defaultBPFFS+"/") && dir != defaultBPFFS {
			return fmt.Errorf("agent.bpffs %q: not on a bpf filesystem; use a path under %s or mount bpffs there", dir, defaultBPFFS)
		}
		if err := os.MkdirAll(defaultBPFFS, 0o700); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", defaultBPFFS, err)
		}
		if err := unix.Mount("bpf", defaultBPFFS, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", defaultBPFFS, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin dir %s: %w", dir, err)
	}
	return nil
}
