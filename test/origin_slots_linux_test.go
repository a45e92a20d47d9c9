package test

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluicehq/sluice/bpf"
)

// The connect hooks keep a redirected connect's origin in a slot of
// sluice_origin_slots, found by the socket's cookie, and free it when the
// connection closes. A slot whose connect never established is taken back
// once it is old by the hooks' clock; when every slot a cookie may use is
// held by a live connection, the origin goes to sluice_origins, and
// sluice_bpf_map_update_errors_total{map="sluice_origin_slots"} counts
// it. Either way the workload reaches the proxy, getpeername() names the
// destination it dialled, and the agent names that destination.
func TestAgentOriginSlots(t *testing.T) {
	e := newAgentEnv(t)
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	slots, clock := hookMaps(t, e.cg.Dir)
	up := e.tp.Hosts[1]
	v4, v6 := netip.AddrPortFrom(up.IP4, 80), netip.AddrPortFrom(up.IP6, 443)

	connect := func(t *testing.T, dst netip.AddrPort) {
		t.Helper()
		before := len(e.rec.all())
		r := e.client(dst, clientOpts{host: 0, inCgroup: true})
		peer := dst.String()
		if r.Errno != "" || r.Data != "proxied "+dst.String() || r.Peer != peer {
			t.Fatalf("client %+v, want %q read and getpeername() %s", r, "proxied "+dst.String(), peer)
		}
		got := e.rec.all()
		if len(got) != before+1 || got[len(got)-1].Dst.Addr != dst {
			t.Fatalf("agent named %+v, want one connection to %v", got[before:], dst)
		}
	}
	// fill gives every slot to a connect that is not this test's: one
	// that established (never taken back), or one claimed at clock 1
	// that never did (taken back once the clock is past 6).
	const fake = uint64(1) << 62
	fill := func(t *testing.T, established bool) {
		t.Helper()
		keys := make([]uint32, slots.MaxEntries())
		vals := make([]bpf.SluiceOriginSlot, slots.MaxEntries())
		for i := range keys {
			keys[i] = uint32(i)
			vals[i].Cookie = fake | uint64(i)
			if !established {
				vals[i].Claimed = 1
			}
		}
		if _, err := slots.BatchUpdate(keys, vals, nil); err != nil {
			t.Fatalf("fill %s: %v", slotsName, err)
		}
	}
	// held counts the slots of this test's connects and the fakes left,
	// once every connect's close has reached its slot (bounded).
	held := func(t *testing.T) (ours, fakes int) {
		t.Helper()
		for try := 0; try < 50; try++ {
			ours, fakes = 0, 0
			var k uint32
			var v bpf.SluiceOriginSlot
			it := slots.Iterate()
			for it.Next(&k, &v) {
				switch {
				case v.Cookie&fake != 0:
					fakes++
				case v.Cookie != 0:
					ours++
				}
			}
			if err := it.Err(); err != nil {
				t.Fatalf("read %s: %v", slotsName, err)
			}
			if ours == 0 {
				return
			}
			time.Sleep(40 * time.Millisecond)
		}
		return
	}
	n := int(slots.MaxEntries())
	// expect checks that, once the connections closed, none of their
	// slots is held, wantFakes fakes are left, and wantFallbacks connects
	// so far found no free slot (the map_error site sluice_origin_slots).
	expect := func(t *testing.T, wantFakes int, wantFallbacks uint64) {
		t.Helper()
		if ours, fakes := held(t); ours != 0 || fakes != wantFakes {
			t.Errorf("after the connections closed %d slots held and %d fakes left, want 0 and %d", ours, fakes, wantFakes)
		}
		if f := e.ag.MapErrors()["sluice_origin_slots"]; f != wantFallbacks {
			t.Errorf("%d connects found no free slot, want %d", f, wantFallbacks)
		}
	}
	setClock := func(t *testing.T, tick uint64) {
		t.Helper()
		if err := clock.Put(uint32(0), tick); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("free slots", func(t *testing.T) {
		connect(t, v4)
		connect(t, v6)
		expect(t, 0, 0)
	})
	t.Run("stale claims taken back", func(t *testing.T) {
		fill(t, false)
		setClock(t, 7)
		connect(t, v4)
		connect(t, v6)
		// Each connect took a fake's slot and freed it at its close.
		expect(t, n-2, 0)
	})
	t.Run("recent claims kept", func(t *testing.T) {
		fill(t, false)
		setClock(t, 6)
		connect(t, v4)
		expect(t, n, 1) // a claim 5 minutes old is kept
	})
	t.Run("every slot held", func(t *testing.T) {
		fill(t, true)
		connect(t, v4)
		connect(t, v6)
		expect(t, n, 3)
	})
	// The connects that found no free slot kept their origins in
	// sluice_origins, whose updates did not fail.
	if me := e.ag.MapErrors(); me["sluice_origins"] != 0 || me["sluice_peers"] != 0 {
		t.Errorf("map update errors %v, want sluice_origins and sluice_peers at 0", me)
	}
	if d := e.directConns(); len(d) != 0 {
		t.Errorf("upstream saw direct connections %v", d)
	}
}

// slotsName is sluice_origin_slots as the kernel names it (15 bytes).
const slotsName = "sluice_origin_s"

// hookMaps finds sluice_origin_slots and sluice_clock through the
// connect4 program attached to the cgroup at dir: this agent's, not
// another's on the machine.
func hookMaps(t *testing.T, dir string) (slots, clock *ebpf.Map) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInet4Connect})
	if err != nil || len(r.Programs) != 1 {
		t.Fatalf("connect4 programs of %s: %v, %v", dir, r, err)
	}
	p, err := ebpf.NewProgramFromID(r.Programs[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		mi, err := m.Info()
		switch {
		case err == nil && mi.Name == slotsName:
			slots = m
		case err == nil && mi.Name == "sluice_clock":
			clock = m
		default:
			m.Close()
			continue
		}
		t.Cleanup(func() { m.Close() })
	}
	if slots == nil || clock == nil {
		t.Fatalf("connect4 program %d uses no %s or sluice_clock (maps %v)", r.Programs[0].ID, slotsName, ids)
	}
	return slots, clock
}
