package test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent"
)

// A root workload in a selected cgroup with CAP_NET_RAW cannot reach a
// denied CIDR with packets it builds itself: raw UDP and ICMP (the kernel
// writes the IP header), a whole IPv4 header of its own (IP_HDRINCL), and
// an unconnected UDP sendto, over IPv4 and IPv6. Every send fails with
// EPERM, the denied host receives none of the bytes, the agent's drop
// counter rises by the packets sent and an event names the destination.
// The same packets to a host that is not denied arrive, so the host's
// recording would have seen them.
func TestAgentRawPacketsDenied(t *testing.T) {
	e := newAgentEnv(t)
	wl, denied, allowed := e.tp.Hosts[0], e.tp.Hosts[1], e.tp.Hosts[2]
	e.cfg.DenyCIDRs = []netip.Prefix{netip.PrefixFrom(denied.IP4, 32), netip.PrefixFrom(denied.IP6, 128)}
	deniedSniff, allowedSniff := sniff(t, denied), sniff(t, allowed)
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	const count = 3
	tests := []struct {
		kind string
		v6   bool
	}{
		{"raw-udp", false},
		{"raw-udp", true},
		{"raw-icmp", false},
		{"raw-hdrincl", false},
		{"udp", false},
		{"udp", true},
	}
	for i, tt := range tests {
		name := tt.kind + "-ipv4"
		if tt.v6 {
			name = tt.kind + "-ipv6"
		}
		t.Run(name, func(t *testing.T) {
			to := func(h *Host) netip.AddrPort {
				if tt.v6 {
					return netip.AddrPortFrom(h.IP6, 5353)
				}
				return netip.AddrPortFrom(h.IP4, 5353)
			}
			secret := fmt.Sprintf("sluice-raw-secret-%d-%x%x", i, randByte(), randByte())

			// The control first: the same packets to a host that is not
			// denied arrive (the path is warm, neighbours resolved), so the
			// denied host's recording would see them too.
			ctl := to(allowed)
			got := 0
			for try := 0; try < 5 && got == 0; try++ {
				r := runAttacker(t, wl, e.cg, attack{Op: "send", Kind: tt.kind, Dst: ctl, Payload: secret + "-control", Count: count})
				if r.Sent != count {
					t.Fatalf("send to %v (not denied): %+v", ctl, r)
				}
				for w := 0; w < 25 && got == 0; w++ {
					time.Sleep(20 * time.Millisecond)
					got = allowedSniff.saw([]byte(secret + "-control"))
				}
			}
			if got == 0 {
				t.Fatalf("the host that is not denied never received the control packets: the recording is blind")
			}

			dst := to(denied)
			// Packet events are rate-limited per CPU (one per 100ms).
			time.Sleep(150 * time.Millisecond)
			before := e.ag.EgressDrops()
			r := runAttacker(t, wl, e.cg, attack{Op: "send", Kind: tt.kind, Dst: dst, Payload: secret, Count: count})
			if r.Sent != 0 || r.Errno != "EPERM" {
				t.Errorf("send to denied %v: %+v, want every send to fail with EPERM", dst, r)
			}
			if d := e.ag.EgressDrops() - before; d < count {
				t.Errorf("EgressDrops rose by %d, want at least %d", d, count)
			}
			ev, ok := e.waitEvent(func(ev agent.Event) bool {
				return ev.Reason == agent.ReasonDenyCIDRPacket && ev.Dst.Addr() == dst.Addr() && ev.CgroupID != 0
			})
			if !ok {
				t.Errorf("no %s event for %v", agent.ReasonDenyCIDRPacket, dst)
			} else if ev.Verdict != agent.Denied || ev.Cgroup != e.cg.Path {
				t.Errorf("packet event %+v", ev)
			}

			time.Sleep(200 * time.Millisecond) // anything in flight has landed
			if n := deniedSniff.saw([]byte(secret)); n != 0 {
				t.Errorf("the denied host received %d packets carrying the workload's bytes", n)
			}
		})
	}
	for _, a := range []netip.Addr{wl.IP4, wl.IP6} {
		if n := deniedSniff.sawFrom(a); n != 0 {
			t.Errorf("the denied host received %d packets from the workload's %v", n, a)
		}
	}
	// A connected TCP stream to the intercept address still works with
	// the egress program attached (its packets are not denied).
	dst := netip.AddrPortFrom(allowed.IP4, 80)
	if r := e.client(dst, clientOpts{host: 0, inCgroup: true}); r.Data != "proxied "+dst.String() {
		t.Errorf("TCP through the proxy next to the packet deny: %+v", r)
	}
}
