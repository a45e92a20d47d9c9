package workload

import (
	"fmt"
	"net/netip"
	"testing"
)

// Replicas of one Deployment (pod names and cgroup paths of one length,
// differing in their last characters) and proxy users with names of one
// length land in different cache slots, most of them: a cache keyed by
// Spread keeps working for them.
func TestSpreadTellsReplicasApart(t *testing.T) {
	const slots = 64
	for name, mk := range map[string]func(i int) Identity{
		"replicas": func(i int) Identity {
			return Identity{
				Namespace: "ai", Pod: fmt.Sprintf("agent-7d9f8b6c5d-%05x", i*7919),
				Cgroup:      fmt.Sprintf("/kubepods.slice/kubepods-pod%032x.slice/cri-containerd-%064x.scope", i, i*104729),
				ContainerID: fmt.Sprintf("%064x", i*104729), Container: "agent", Comm: "python3",
			}
		},
		"proxy users": func(i int) Identity {
			return ProxyUser(netip.MustParseAddrPort("127.0.0.1:4000"), fmt.Sprintf("user%04d", i))
		},
		"processes": func(i int) Identity {
			return Identity{PID: 1000 + i, Comm: "node", Cgroup: "/sluice-run-1-abcdef"}
		},
	} {
		used := map[uint64]bool{}
		for i := range slots {
			used[new(mk(i)).Spread()%slots] = true
		}
		if len(used) < slots/2 {
			t.Errorf("%s: %d identities in %d of %d slots, want at least %d", name, slots, len(used), slots, slots/2)
		}
	}
}

// Spread ignores the client address: identities equal but for it give
// one number.
func TestSpreadIgnoresClient(t *testing.T) {
	a := Identity{PID: 7, Comm: "curl", Cgroup: "/x", Client: netip.MustParseAddrPort("127.0.0.1:1")}
	b := a
	b.Client = netip.MustParseAddrPort("127.0.0.1:2")
	if a.Spread() != b.Spread() {
		t.Error("the client address changed Spread")
	}
}
