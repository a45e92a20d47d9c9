// Package workload names the process behind a connection, so that every
// audit record and every policy decision can say who sent what: pid, comm,
// exe, cgroup, container and pod.
package workload

import (
	"net/netip"
)

// Identity is what Sluice knows about the sender of a connection. In
// transparent mode the agent fills it from the kernel's record of the
// connect (see agent/); in explicit-proxy mode only Client is known.
// The zero value is an unknown workload.
type Identity struct {
	// Client is the peer address the proxy saw for the connection.
	Client netip.AddrPort `json:"client,omitzero"`
	// PID is the process (thread-group) id that called connect.
	PID int `json:"pid,omitempty"`
	// UID is the effective user id of that process (valid when PID != 0).
	UID uint32 `json:"uid,omitempty"`
	// Comm is the kernel's 16-byte task name; it may be a thread name.
	Comm string `json:"comm,omitempty"`
	// Exe is /proc/PID/exe where it was readable.
	Exe string `json:"exe,omitempty"`
	// Cgroup is the cgroup v2 path relative to the cgroup2 mount, e.g.
	// "/kubepods.slice/kubepods-pod….slice/cri-containerd-….scope".
	Cgroup string `json:"cgroup,omitempty"`
	// ContainerID and PodUID are parsed from Cgroup where its shape says so.
	ContainerID string `json:"container_id,omitempty"`
	PodUID      string `json:"pod_uid,omitempty"`
	// Container and Image are the container's name and image as its
	// runtime reports them (Docker, or the CRI), when known.
	Container string `json:"container,omitempty"`
	Image     string `json:"image,omitempty"`
	// Namespace, Pod and Labels come from the runtime (the CRI pod
	// sandbox, the kubelet's labels on a container) or the Kubernetes
	// API when known. Labels are the pod's labels over the container's
	// own (a pod label wins on a clash); a container outside a pod has
	// its container labels. Callers must not modify the map: identities
	// share it.
	Namespace string            `json:"namespace,omitempty"`
	Pod       string            `json:"pod,omitempty"`
	Labels    map[string]string `json:"-"`
}

// Spread is a cheap, not unique, number for picking a cache slot by
// workload: equal identities (Client aside) give equal numbers, and
// those that usually differ between processes, replicas of one
// Deployment or proxy users (pid, the ends of the cgroup path, pod name,
// container id and comm, where their unique part sits) usually give
// different ones. Not for anything an attacker's collision could harm.
func (i *Identity) Spread() uint64 {
	h := uint64(i.PID)*0x9e3779b97f4a7c15 ^ tail8(i.Cgroup)*0xbf58476d1ce4e5b9 ^
		tail8(i.Pod)*0x94d049bb133111eb ^ tail8(i.ContainerID)*0xd6e8feb86659fd93 ^ tail8(i.Comm)
	return h ^ h>>31 ^ h>>17
}

// tail8 is the last (up to) eight bytes of s as a number, and its length.
func tail8(s string) uint64 {
	v := uint64(len(s))
	for j := max(0, len(s)-8); j < len(s); j++ {
		v = v<<8 | uint64(s[j])
	}
	return v
}

// Key names the workload as the kernel does, for state kept per workload
// (what it resolved, the hosts whose certificate it rejected): its cgroup,
// the one thing the kernel names for a DNS query and a connection alike;
// its client address when the cgroup is unknown.
func (i *Identity) Key() string {
	if i.Cgroup != "" {
		return "cgroup:" + i.Cgroup
	}
	return "client:" + i.Client.Addr().String()
}

// StateKey is Key as a comparable value, for state looked up per request
// (the names a workload resolved): making it costs no allocation.
type StateKey struct {
	cgroup string     // Cgroup, when known
	client netip.Addr // else the client's address
}

// StateKey names the workload as Key does.
func (i *Identity) StateKey() StateKey {
	if i.Cgroup != "" {
		return StateKey{cgroup: i.Cgroup}
	}
	return StateKey{client: i.Client.Addr()}
}

// Name is a bounded, human-readable label for the workload, suitable for
// metrics: namespace/pod, else "container:" and the container's name,
// else "container:" and its id (12 chars), else the cgroup path, else
// "unknown". It never contains a pid.
func (i Identity) Name() string {
	switch {
	case i.Pod != "" && i.Namespace != "":
		return i.Namespace + "/" + i.Pod
	case i.Container != "" && i.ContainerID != "":
		return "container:" + i.Container
	case i.ContainerID != "":
		id := i.ContainerID
		if len(id) > 12 {
			id = id[:12]
		}
		return "container:" + id
	case i.Cgroup != "":
		return i.Cgroup
	default:
		return "unknown"
	}
}

// Destination is where a workload's connection meant to go.
type Destination struct {
	// Host is the name the client asked for when known (CONNECT target,
	// absolute-form URL); empty in transparent mode, where the SNI or the
	// Host header names it.
	Host string
	// Addr is the original destination address in transparent mode; in
	// explicit mode it is unset until the proxy resolves Host.
	Addr netip.AddrPort
	// Port is the destination port (Addr.Port() when Addr is set).
	Port uint16
}

// The identity of an explicit proxy client that authenticated with
// proxy.clients.usersFile credentials: Namespace ProxyNamespace, Pod the
// user name and the label ProxyUserLabel the user name, so that policy
// selects all of them with workloads.namespaces [sluice-proxy] and one
// of them with workloads.labels {sluice.dev/proxy-user: NAME}.
const (
	ProxyNamespace = "sluice-proxy"
	ProxyUserLabel = "sluice.dev/proxy-user"
)

// ProxyUser is the identity of the explicit proxy's client at client
// that authenticated as user. Its Name is "sluice-proxy/USER".
func ProxyUser(client netip.AddrPort, user string) Identity {
	return Identity{Client: client, Namespace: ProxyNamespace, Pod: user, Labels: map[string]string{ProxyUserLabel: user}}
}
