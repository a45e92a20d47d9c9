package launch

import (
	"fmt"
	"strings"
)

// ChildArg, as the first argument of the sluice binary, makes it the
// child half of `sluice run` (see Child). Run starts the command as
// "/proc/self/exe ChildArg OPTIONS CGROUP PATH ARGV0 ARGS…"; the command line
// handles it before anything else and calls Child with what follows.
const ChildArg = "__sluice-run-child"

// DroppedCaps are the capabilities Run removes from the command's
// bounding, effective, permitted, inheritable and ambient sets unless
// Options.KeepCaps is set. Each one lets a root command step around its
// interception:
//
//   - CAP_SYS_ADMIN: mount cgroup2 anew, or remount the read-only one,
//     and move itself out of the run's cgroup; also setns into the host's
//     namespaces.
//   - CAP_NET_ADMIN: detach the run's cgroup hooks, change routes and the
//     intercept address, set socket marks the hooks let through.
//   - CAP_NET_RAW: raw and packet sockets, which no connect hook sees.
//   - CAP_BPF: load and attach BPF programs, read and write the run's
//     maps.
//   - CAP_SYS_PTRACE: reach the host's mount namespace, with its writable
//     cgroup2 mount, through /proc/1/root or /proc/<sluice>/root, and
//     attach to sluice itself. Without it, the kernel lets a process look
//     into only those processes whose capabilities are a subset of its own.
//   - CAP_SYS_MODULE: load kernel code, which can undo anything.
var DroppedCaps = []Cap{
	{"CAP_SYS_ADMIN", 21},
	{"CAP_NET_ADMIN", 12},
	{"CAP_NET_RAW", 13},
	{"CAP_BPF", 39},
	{"CAP_SYS_PTRACE", 19},
	{"CAP_SYS_MODULE", 16},
}

// Cap is a Linux capability: its name and its number.
type Cap struct {
	Name string
	Num  int
}

// capNames lists the names of caps, comma-separated.
func capNames(caps []Cap) string {
	names := make([]string, len(caps))
	for i, c := range caps {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}

// childOpts is what Run tells the child half, as one argument.
type childOpts struct {
	// NewNS: the child was started in new cgroup and mount namespaces and
	// makes the cgroup mounts read-only in its own.
	NewNS bool
	// KeepCaps: leave the capabilities alone (--keep-caps).
	KeepCaps bool
}

func (o childOpts) String() string {
	return fmt.Sprintf("ns=%t,keepcaps=%t", o.NewNS, o.KeepCaps)
}

// parseChildOpts is the inverse of childOpts.String.
func parseChildOpts(s string) (childOpts, error) {
	var o childOpts
	for _, kv := range strings.Split(s, ",") {
		switch kv {
		case "ns=true":
			o.NewNS = true
		case "keepcaps=true":
			o.KeepCaps = true
		case "ns=false", "keepcaps=false":
		default:
			return o, fmt.Errorf("parse child options %q: unknown %q", s, kv)
		}
	}
	return o, nil
}

// The child half reports to Run on a pipe (its descriptor 3, closed on a
// successful exec) in lines that start with one of these words.
const (
	// reportNote is something -v shows: a protection that could not be
	// set up, and why.
	reportNote = "note"
	// reportExec is the failed exec of the command: "exec ERRNO MESSAGE".
	reportExec = "exec"
	// reportFail is a setup step that must not be skipped failing: the
	// command is not started.
	reportFail = "fail"
)

// statusFD is the child half's descriptor of the report pipe.
const statusFD = 3
