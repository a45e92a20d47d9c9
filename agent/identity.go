package agent

import (
	"context"

	"github.com/sluicehq/sluice/workload"
)

// Identity is the workload identity of the event's process, as the
// proxy's records name one: its pid, uid, comm and cgroup, the
// executable /proc shows for the pid now, and the container and pod the
// cgroup path names.
func (e Event) Identity() workload.Identity {
	img := procImage{pid: e.PID, startTime: e.startTime, execID: e.execID}
	return processIdentity(context.Background(), e.meta, e.exes, img, e.UID, e.Comm, e.Cgroup)
}

// Metadata names the containers and pods behind cgroups from the
// container runtimes (containers.Cache implements it).
type Metadata interface {
	// Enrich fills id's container name, image, pod, namespace and labels
	// from its ContainerID and PodUID, where known. It may ask a runtime
	// (bounded in time) when it does not know them yet.
	Enrich(ctx context.Context, id *workload.Identity)
	// OnChange registers fn, called after what is known about a
	// container or a pod changed (one of its arguments is empty).
	OnChange(fn func(containerID, podUID string))
}

// processIdentity builds the identity of process image img; the one
// place a connect event and a redirected connection get their Exe (from
// exes, which may be nil: then read each time), ContainerID and PodUID,
// and what meta (may be nil) knows of the container and pod.
func processIdentity(ctx context.Context, meta Metadata, exes *exeCache, img procImage, uid uint32, comm, cgroup string) workload.Identity {
	id := workload.Identity{PID: img.pid, UID: uid, Comm: comm, Cgroup: cgroup}
	id.Exe = exes.exe(img)
	id.ContainerID, id.PodUID = workload.ParseCgroupPath(cgroup)
	if meta != nil && (id.ContainerID != "" || id.PodUID != "") {
		// Enrich works from these two alone. A copy goes to it, so that
		// id itself does not escape: no allocation per event for a
		// process outside a container.
		p := new(workload.Identity)
		*p = id
		meta.Enrich(ctx, p)
		id = *p
	}
	return id
}
