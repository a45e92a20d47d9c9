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
	if e.id != nil {
		return *e.id
	}
	return processIdentity(context.Background(), e.meta, e.exes, e.image(), e.UID, e.Comm, e.Cgroup)
}

// image is the process image the event came from.
func (e Event) image() procImage {
	return procImage{pid: e.PID, startTime: e.startTime, execID: e.execID}
}

// identityMemo is the identity of the process image the event reader's
// last event came from, made once for a run of its events (a process
// that connects again and again): no exe cache look-up, cgroup path
// parse or metadata look-up per event. The event goroutine's alone, and
// forgotten when the ring buffer runs empty, so what the metadata learns
// of a container reaches the next batch's events.
type identityMemo struct {
	img    procImage
	uid    uint32
	comm   string
	cgroup string
	id     *workload.Identity // never modified once made: events share it
}

// identity is the identity of ev's process, from the memo when ev's
// process image, uid, comm and cgroup are the last event's. An image
// the hooks did not name (procImage.cacheable) is never remembered.
func (m *identityMemo) identity(a *Agent, ev *Event) *workload.Identity {
	img := ev.image()
	if m.id != nil && m.img == img && m.uid == ev.UID && m.comm == ev.Comm && m.cgroup == ev.Cgroup {
		return m.id
	}
	id := processIdentity(context.Background(), a.opts.Metadata, a.exes, img, ev.UID, ev.Comm, ev.Cgroup)
	if img.cacheable() {
		*m = identityMemo{img: img, uid: ev.UID, comm: ev.Comm, cgroup: ev.Cgroup, id: &id}
	} else {
		*m = identityMemo{}
	}
	return &id
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
