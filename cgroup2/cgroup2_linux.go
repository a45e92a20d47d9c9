package cgroup2

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Mount returns the mount point of the cgroup2 (unified) hierarchy, from
// /proc/self/mountinfo: "/sys/fs/cgroup" on a unified host,
// "/sys/fs/cgroup/unified" on a hybrid one.
func Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	return parseMount(f)
}

// Self returns the cgroup v2 path of the calling process, relative to the
// cgroup2 mount ("/" for the root), from /proc/self/cgroup.
func Self() (string, error) {
	return procCgroup("/proc/self/cgroup")
}

// OfProcess returns the cgroup v2 path of process pid, relative to the
// cgroup2 mount, from /proc/PID/cgroup.
func OfProcess(pid int) (string, error) {
	return procCgroup("/proc/" + strconv.Itoa(pid) + "/cgroup")
}

func procCgroup(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("read cgroup of process: %w", err)
	}
	defer f.Close()
	p, err := parseProcCgroup(f)
	if err != nil {
		return "", fmt.Errorf("read cgroup of process %s: %w", file, err)
	}
	return p, nil
}

// ID returns the id of the cgroup whose directory is dir (an absolute path
// under the cgroup2 mount): its kernfs inode number, which is what
// bpf_get_current_cgroup_id returns for a process in it.
func ID(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", dir, err)
	}
	return st.Ino, nil
}
