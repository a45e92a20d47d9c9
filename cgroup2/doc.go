// Package cgroup2 is the one owner of what Sluice knows about the cgroup v2
// (unified) hierarchy: where it is mounted (/proc/self/mountinfo; on a
// hybrid host such as /sys/fs/cgroup/unified, not /sys/fs/cgroup), which
// cgroup a process is in (the "0::" line of /proc/PID/cgroup), a cgroup's
// id (the inode number of its directory, which is what the kernel's
// bpf_get_current_cgroup_id returns), and the glob that selects cgroups by
// path.
//
// It exists because these were computed in several places that drifted
// apart: the agent and the policy each had a cgroup glob, and the two
// disagreed on empty segments ("/a//b", a trailing "/"). The agent's
// agent.cgroups and the policy's workloads.cgroups now both use Glob, so a
// pattern selects the same cgroups in the kernel hooks and in the policy.
//
// Parsing is portable and unit-tested anywhere; reading /proc and stat'ing
// cgroupfs are Linux only, and return ErrNotSupported elsewhere.
package cgroup2
