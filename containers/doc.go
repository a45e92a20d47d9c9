// Package containers names the container and pod behind a cgroup: it asks
// the container runtimes of the node (the Docker Engine API and the CRI,
// the kubelet's runtime, over their unix sockets) and, for pod labels,
// the Kubernetes API, and keeps what they say in a bounded cache that
// their event streams refresh. The agent enriches every workload identity
// from it (container name, image, labels, pod, namespace) and selects
// cgroups by it (agent.select).
//
// Sources. Each Source lists what its runtime has, then follows its
// events until its connection ends; the Cache restarts it with back-off
// (a list after every reconnect, so nothing missed meanwhile stays
// missing). A container the cache does not know when it is asked for is
// looked up once in every source (bounded in time, one lookup per id in
// flight, a miss remembered for a few seconds).
//
// Kubelet labels. A container carrying io.kubernetes.pod.name,
// io.kubernetes.pod.namespace and io.kubernetes.pod.uid (the kubelet puts
// them on every container it starts, through the CRI or through Docker)
// belongs to that pod, and io.kubernetes.container.name is its name.
package containers

import "errors"

// Label keys the kubelet puts on the containers and sandboxes it starts.
const (
	LabelPodName       = "io.kubernetes.pod.name"
	LabelPodNamespace  = "io.kubernetes.pod.namespace"
	LabelPodUID        = "io.kubernetes.pod.uid"
	LabelContainerName = "io.kubernetes.container.name"
)

// ErrNotFound: the source does not know the container or pod.
var ErrNotFound = errors.New("not found")

// Info is what a runtime says about one container.
type Info struct {
	// ID is the runtime's full container id (64 hex digits for Docker and
	// containerd), as the container's cgroup path names it.
	ID string
	// Name is the container's name: the Kubernetes container name for a
	// pod's container, else the runtime's name (Docker's without the
	// leading "/"). Empty for a pod's sandbox (pause) container.
	Name  string
	Image string
	// Labels are the container's own labels (Docker labels, CRI labels).
	Labels map[string]string
	// PodUID, Pod and Namespace name the pod the container belongs to,
	// when it belongs to one.
	PodUID    string
	Pod       string
	Namespace string
}

// Pod is what a runtime or the Kubernetes API says about one pod.
type Pod struct {
	UID       string
	Name      string
	Namespace string
	// Labels are the pod's labels; nil when the source does not know them
	// (a container's kubelet labels name the pod but not its labels).
	Labels map[string]string
}

// fromKubeletLabels fills the pod fields and the container name of in
// from the kubelet's labels on the container, where they are set.
func fromKubeletLabels(in Info) Info {
	if v := in.Labels[LabelPodUID]; v != "" && in.PodUID == "" {
		in.PodUID = v
	}
	if v := in.Labels[LabelPodName]; v != "" && in.Pod == "" {
		in.Pod = v
	}
	if v := in.Labels[LabelPodNamespace]; v != "" && in.Namespace == "" {
		in.Namespace = v
	}
	if v := in.Labels[LabelContainerName]; v != "" {
		in.Name = v
	}
	return in
}
