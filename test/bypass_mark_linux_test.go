package test

import (
	"net/netip"
	"testing"

	"github.com/sluicehq/sluice/agent"
)

// A root workload in a selected cgroup cannot pass for the agent by
// giving its socket the agent's mark. setsockopt(SO_MARK, agent's mark)
// fails with EPERM and leaves a mark_forged event; and a socket that got
// the mark anyway (set before its cgroup was selected) is still
// redirected to the proxy, or refused for a denied destination, never
// direct: the upstream host never sees a packet from the workload. Both
// attach modes.
func TestAgentForgedMark(t *testing.T) {
	for _, mode := range []string{"cgroup", "root"} {
		t.Run(mode, func(t *testing.T) {
			e := newAgentEnv(t)
			e.cfg.Attach = mode
			wl, up, other := e.tp.Hosts[0], e.tp.Hosts[1], e.tp.Hosts[2]
			e.cfg.DenyCIDRs = []netip.Prefix{netip.PrefixFrom(other.IP4, 32), netip.PrefixFrom(other.IP6, 128)}
			upSniff := sniff(t, up)
			e.start()
			mark := e.cfg.Mark

			// The workload marks its sockets before the cgroup is selected
			// (no guard yet), then waits.
			var early []*attacker
			var earlyDst []netip.AddrPort
			for _, dst := range []netip.AddrPort{
				netip.AddrPortFrom(up.IP4, 80), netip.AddrPortFrom(up.IP6, 443),
				netip.AddrPortFrom(other.IP4, 80), netip.AddrPortFrom(other.IP6, 443),
			} {
				at := startAttacker(t, wl, e.cg, attack{Op: "connect", Dst: dst, Mark: mark, Wait: true})
				at.ready()
				early = append(early, at)
				earlyDst = append(earlyDst, dst)
			}
			if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
				t.Fatal(err)
			}

			t.Run("setsockopt refused", func(t *testing.T) {
				for _, dst := range []netip.AddrPort{netip.AddrPortFrom(up.IP4, 80), netip.AddrPortFrom(up.IP6, 443)} {
					r := runAttacker(t, wl, e.cg, attack{Op: "connect", Dst: dst, Mark: mark})
					if r.MarkErrno != "EPERM" {
						t.Errorf("setsockopt(SO_MARK, %#x) errno %q, want EPERM", mark, r.MarkErrno)
					}
					ev, ok := e.waitEvent(func(ev agent.Event) bool { return ev.PID == r.PID && ev.Reason == agent.ReasonMarkForged })
					if !ok {
						t.Fatalf("no %s event for pid %d: %+v", agent.ReasonMarkForged, r.PID, e.events())
					}
					if ev.Verdict != agent.Denied || ev.Cgroup != e.cg.Path || ev.UID != 0 {
						t.Errorf("mark event %+v", ev)
					}
					// Its connect, unmarked, goes to the proxy.
					if want := "proxied " + dst.String(); r.Data != want {
						t.Errorf("connect %v after the refused mark: %+v, want %q", dst, r, want)
					}
				}
			})

			t.Run("another mark is allowed", func(t *testing.T) {
				dst := netip.AddrPortFrom(up.IP4, 443)
				r := runAttacker(t, wl, e.cg, attack{Op: "connect", Dst: dst, Mark: mark + 1})
				if r.MarkErrno != "" || r.Data != "proxied "+dst.String() {
					t.Errorf("mark %#x: %+v, want it set and the connect proxied", mark+1, r)
				}
			})

			t.Run("marked before selection", func(t *testing.T) {
				for i, at := range early {
					at.proceed()
					r := at.result()
					dst := earlyDst[i]
					if r.MarkErrno != "" {
						t.Fatalf("setsockopt before selection: %s", r.MarkErrno)
					}
					if dst.Addr() == other.IP4 || dst.Addr() == other.IP6 {
						if r.Errno != "EPERM" {
							t.Errorf("marked connect to denied %v: %+v, want EPERM", dst, r)
						}
						ev, ok := e.waitEvent(func(ev agent.Event) bool { return ev.PID == r.PID })
						if !ok || ev.Verdict != agent.Denied || ev.Reason != agent.ReasonDenyCIDR || ev.Dst != dst {
							t.Errorf("marked connect to denied %v: event %+v (found %v)", dst, ev, ok)
						}
						continue
					}
					if want := "proxied " + dst.String(); r.Data != want {
						t.Errorf("marked connect to %v: %+v, want %q", dst, r, want)
					}
					ev, ok := e.waitEvent(func(ev agent.Event) bool { return ev.PID == r.PID })
					if !ok || ev.Verdict != agent.Redirected || ev.Dst != dst {
						t.Errorf("marked connect to %v: event %+v (found %v)", dst, ev, ok)
					}
					found := false
					for _, s := range e.rec.all() {
						found = found || (s.ID.PID == r.PID && s.Dst.Addr == dst)
					}
					if !found {
						t.Errorf("the proxy did not see the marked connect to %v of pid %d", dst, r.PID)
					}
				}
			})

			if d := e.directConns(); len(d) != 0 {
				t.Errorf("the upstream accepted direct connections %v", d)
			}
			for _, a := range []netip.Addr{wl.IP4, wl.IP6} {
				if n := upSniff.sawFrom(a); n != 0 {
					t.Errorf("the upstream host received %d packets from the workload's %v", n, a)
				}
			}
			t.Logf("%s: %d events, %d proxied connections", mode, len(e.events()), len(e.rec.all()))
		})
	}
}
