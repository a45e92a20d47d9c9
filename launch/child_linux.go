package launch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/sluicehq/sluice/cgroup2"
)

// Child is the child half of `sluice run`, started by Run already inside
// the run's cgroup (and, where the kernel allowed it, in new cgroup and
// mount namespaces). args are "OPTIONS CGROUP PATH ARGV0 ARGS…", CGROUP
// being the run's cgroup relative to the cgroup2 mount. It makes the
// cgroup mounts of its mount namespace read-only, with the run's cgroup
// as the root of its cgroup2 view, drops DroppedCaps (unless
// told to keep them) and execs PATH with ARGV0 ARGS… and its own
// environment, so the command keeps its pid, its stdio, the parent-death
// signal and the cgroup. It returns only when that failed, with the exit
// code to use: 126, or 127 when PATH does not exist.
//
// Capabilities belong to a thread and exec keeps the calling thread's, so
// everything from the drop to the exec happens on one locked thread.
func Child(args []string) int {
	runtime.LockOSThread()
	r := newReporter()
	if len(args) < 4 {
		r.send(reportFail, fmt.Sprintf("sluice run child: want OPTIONS CGROUP PATH ARGV0 [ARGS…], got %d arguments", len(args)))
		return 126
	}
	o, err := parseChildOpts(args[0])
	if err != nil {
		r.send(reportFail, err.Error())
		return 126
	}
	cgroup, path, argv := args[1], args[2], args[3:]
	if o.NewNS {
		for _, n := range readOnlyCgroups(cgroup) {
			r.send(reportNote, n)
		}
	}
	if !o.KeepCaps {
		notes, err := dropCaps(DroppedCaps)
		for _, n := range notes {
			r.send(reportNote, n)
		}
		if err != nil {
			r.send(reportFail, err.Error())
			return 126
		}
	}
	err = unix.Exec(path, argv, os.Environ())
	code := 126
	if errors.Is(err, unix.ENOENT) {
		code = 127
	}
	var errno unix.Errno
	errors.As(err, &errno)
	r.send(reportExec, fmt.Sprintf("%d %v", uintptr(errno), err))
	return code
}

// reporter writes the child's report lines to Run (statusFD), and to
// stderr when there is no pipe (a hand-started child).
type reporter struct{ f *os.File }

func newReporter() reporter {
	if _, err := unix.FcntlInt(uintptr(statusFD), unix.F_GETFD, 0); err != nil {
		return reporter{os.Stderr}
	}
	// Not the command's: closed by the exec, which is how Run learns
	// that the exec succeeded.
	unix.CloseOnExec(statusFD)
	return reporter{os.NewFile(statusFD, "sluice-run-status")}
}

func (r reporter) send(kind, msg string) {
	fmt.Fprintf(r.f, "%s %s\n", kind, strings.ReplaceAll(msg, "\n", " "))
}

// readOnlyCgroups makes, in the child's own mount namespace, every cgroup
// mount read-only (and /sys/fs/cgroup with what is below it), then puts
// the run's cgroup (cgroup, relative to the cgroup2 mount) read-only over
// the cgroup2 mount point: the child sees its own cgroup as the root, as
// /proc/self/cgroup says in its cgroup namespace ("0::/"), and no cgroup
// above it. (A fresh cgroup2 mount would have that root too, but the
// kernel refuses one over a mount of the same hierarchy: EBUSY.)
//
// Propagation is made private first, so nothing done here reaches the
// host's mount namespace; and only per-mount flags change (MS_BIND with
// MS_REMOUNT), never a superblock's, which the host shares. It returns
// what could not be done, for -v; none of it stops the run.
func readOnlyCgroups(cgroup string) (notes []string) {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return []string{fmt.Sprintf("make the command's mounts private: %v; the cgroup mounts stay writable (the cgroup namespace and the dropped capabilities still apply)", err)}
	}
	mounts, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return []string{fmt.Sprintf("read mounts: %v; the cgroup mounts stay writable", err)}
	}
	points := cgroup2.ViewMounts(mounts)
	mounts.Close()
	for _, p := range points {
		if err := remountReadOnly(p); err != nil {
			notes = append(notes, fmt.Sprintf("make %s read-only for the command: %v", p, err))
		}
	}
	v2, err := cgroup2.Mount()
	if err != nil {
		return append(notes, fmt.Sprintf("find the cgroup2 mount: %v", err))
	}
	own := filepath.Join(v2, cgroup)
	if err := unix.Mount(own, v2, "", unix.MS_BIND, ""); err != nil {
		return append(notes, fmt.Sprintf("mount the run's cgroup %s over %s: %v; the command sees the whole hierarchy", own, v2, err))
	}
	if err := remountReadOnly(v2); err != nil {
		notes = append(notes, fmt.Sprintf("make the command's cgroup2 view %s read-only: %v", v2, err))
	}
	return notes
}

// remountReadOnly adds MS_RDONLY to the mount at p, keeping its other
// per-mount flags (a bind remount replaces them all).
func remountReadOnly(p string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return err
	}
	const keep = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOATIME | unix.MS_NODIRATIME | unix.MS_RELATIME
	flags := uintptr(st.Flags)&keep | unix.MS_RDONLY | unix.MS_BIND | unix.MS_REMOUNT
	return unix.Mount("", p, "", flags, "")
}

// dropCaps removes caps from the calling thread's bounding set, so no
// exec (of a set-uid or file-capability program, or as root) gains them
// again, and from its effective, permitted, inheritable and ambient sets.
// A capability this kernel does not know is skipped. When the bounding set
// cannot be changed (no CAP_SETPCAP: sluice run with capabilities but not
// root), no_new_privs is set instead, which stops every exec from gaining
// privileges; notes says so.
func dropCaps(caps []Cap) (notes []string, err error) {
	last := capLast()
	var kept []Cap
	for _, c := range caps {
		if c.Num > last {
			continue
		}
		in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c.Num), 0, 0, 0)
		if err != nil || in == 0 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c.Num), 0, 0, 0); err != nil {
			kept = append(kept, c)
		}
	}
	if len(kept) > 0 {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return notes, fmt.Errorf("drop %s from the bounding set: not permitted, and set no_new_privs: %w", capNames(kept), err)
		}
		notes = append(notes, fmt.Sprintf("drop %s from the command's bounding set: not permitted (no CAP_SETPCAP); set no_new_privs instead, so no exec can gain them", capNames(kept)))
	}
	for _, c := range caps {
		if c.Num <= last {
			// Fails only when c is not raised or the kernel has no
			// ambient set: either way it is not there.
			_ = unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_LOWER, uintptr(c.Num), 0, 0)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return notes, fmt.Errorf("read capabilities: %w", err)
	}
	for _, c := range caps {
		bit := uint32(1) << (c.Num % 32)
		d := &data[c.Num/32]
		d.Effective &^= bit
		d.Permitted &^= bit
		d.Inheritable &^= bit
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return notes, fmt.Errorf("drop %s: %w", capNames(caps), err)
	}
	return notes, nil
}

// capLast is the highest capability number the kernel knows.
func capLast() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 40 // CAP_CHECKPOINT_RESTORE, Linux 5.9
	}
	var n int
	if _, err := fmt.Sscan(string(b), &n); err != nil {
		return 40
	}
	return n
}
