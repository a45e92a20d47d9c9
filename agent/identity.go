package agent

import (
	"os"
	"strconv"

	"github.com/sluicehq/sluice/workload"
)

// Identity is the workload identity of the event's process, as the
// proxy's records name one: its pid, uid, comm and cgroup, the
// executable /proc shows for the pid now, and the container and pod the
// cgroup path names.
func (e Event) Identity() workload.Identity {
	return processIdentity(e.PID, e.UID, e.Comm, e.Cgroup)
}

// processIdentity builds the identity of process pid; the one place a
// connect event and a redirected connection get their Exe, ContainerID
// and PodUID.
func processIdentity(pid int, uid uint32, comm, cgroup string) workload.Identity {
	id := workload.Identity{PID: pid, UID: uid, Comm: comm, Cgroup: cgroup}
	if pid > 0 {
		if exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); err == nil {
			id.Exe = exe
		}
	}
	id.ContainerID, id.PodUID = workload.ParseCgroupPath(cgroup)
	return id
}
