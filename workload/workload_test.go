package workload

import (
	"net/netip"
	"testing"
)

// StateKey tells two identities apart exactly when Key does: by cgroup
// when known (the client's address and port then do not matter), else
// by the client's address (not its port).
func TestStateKeyNamesAsKeyDoes(t *testing.T) {
	ids := []Identity{
		{Cgroup: "/a", Client: netip.MustParseAddrPort("10.0.0.1:1000")},
		{Cgroup: "/a", Client: netip.MustParseAddrPort("10.0.0.2:2000"), PID: 7},
		{Cgroup: "/b"},
		{Client: netip.MustParseAddrPort("10.0.0.1:1000")},
		{Client: netip.MustParseAddrPort("10.0.0.1:3000")},
		{Client: netip.MustParseAddrPort("[fd00::1]:1000")},
		{},
	}
	for i := range ids {
		for j := range ids {
			sameKey := ids[i].Key() == ids[j].Key()
			sameState := ids[i].StateKey() == ids[j].StateKey()
			if sameKey != sameState {
				t.Errorf("%+v and %+v: Key equal %v, StateKey equal %v", ids[i], ids[j], sameKey, sameState)
			}
		}
	}
}
