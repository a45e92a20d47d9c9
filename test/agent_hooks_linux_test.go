package test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sluicehq/sluice/agent"
)

// A process in the selected cgroup, in its own network namespace, reaches
// the agent's listener instead of the test host it dialled; getpeername()
// still says the test host; the agent names the process.
func TestAgentRedirect(t *testing.T) {
	e := newAgentEnv(t)
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	up, wl := e.tp.Hosts[1], e.tp.Hosts[0]
	tests := []struct {
		name           string
		dst            netip.AddrPort
		mapped, thread bool
		peer           string
		uid            int
	}{
		{"ipv4", netip.AddrPortFrom(up.IP4, 80), false, false, up.IP4.String() + ":80", 0},
		{"ipv6", netip.AddrPortFrom(up.IP6, 443), false, false, "[" + up.IP6.String() + "]:443", 0},
		{"ipv4-mapped ipv6", netip.AddrPortFrom(up.IP4, 443), true, false, "[::ffff:" + up.IP4.String() + "]:443", 0},
		// The process (thread group) is named, not the thread.
		{"ipv4 from a worker thread", netip.AddrPortFrom(up.IP4, 80), false, true, up.IP4.String() + ":80", 0},
		// The uid is the connecting process's, not root's.
		{"ipv6 as uid 4242", netip.AddrPortFrom(up.IP6, 443), false, false, "[" + up.IP6.String() + "]:443", 4242},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.rec.all())
			r := e.client(tt.dst, clientOpts{host: 0, inCgroup: true, mapped: tt.mapped, thread: tt.thread, uid: tt.uid})
			if r.Errno != "" {
				t.Fatalf("client connect: %s", r.Errno)
			}
			if want := "proxied " + tt.dst.String(); r.Data != want {
				t.Fatalf("client read %q, want %q", r.Data, want)
			}
			if r.Peer != tt.peer {
				t.Errorf("getpeername() = %s, want %s", r.Peer, tt.peer)
			}
			got := e.rec.all()
			if len(got) != before+1 {
				t.Fatalf("agent handled %d connections, want %d", len(got)-before, 1)
			}
			s := got[len(got)-1]
			if s.Dst.Addr != tt.dst || s.Dst.Port != tt.dst.Port() {
				t.Errorf("destination %v, want %v", s.Dst, tt.dst)
			}
			if tt.thread && r.TID == r.PID {
				t.Fatalf("the worker thread's id %d is the process id", r.TID)
			}
			if s.ID.PID != r.PID || s.ID.PID != r.ChildPID {
				t.Errorf("identity pid %d, want the client's %d (started as %d)", s.ID.PID, r.PID, r.ChildPID)
			}
			if s.ID.Comm != "python3" {
				t.Errorf("identity comm %q, want python3", s.ID.Comm)
			}
			if s.ID.UID != uint32(tt.uid) {
				t.Errorf("identity uid %d, want %d", s.ID.UID, tt.uid)
			}
			if !strings.Contains(s.ID.Exe, "python3") {
				t.Errorf("identity exe %q, want a python3 binary", s.ID.Exe)
			}
			if s.ID.Cgroup != e.cg.Path {
				t.Errorf("identity cgroup %q, want %q", s.ID.Cgroup, e.cg.Path)
			}
			wantClient := wl.IP4
			if tt.dst.Addr().Is6() {
				wantClient = wl.IP6
			}
			if s.ID.Client.Addr() != wantClient {
				t.Errorf("identity client %v, want the workload namespace's %v", s.ID.Client, wantClient)
			}
			ev, ok := e.waitEvent(func(ev agent.Event) bool { return ev.PID == r.PID })
			if !ok {
				t.Fatal("no event for the connect")
			}
			if ev.Verdict != agent.Redirected || ev.Reason != agent.ReasonPort || ev.Dst != tt.dst || ev.Comm != "python3" || ev.Cgroup != e.cg.Path || ev.UID != uint32(tt.uid) {
				t.Errorf("event %+v", ev)
			}
		})
	}
	if d := e.directConns(); len(d) != 0 {
		t.Errorf("upstream saw direct connections %v", d)
	}
	if n := e.ag.Drops(); n != 0 {
		t.Errorf("%d events dropped", n)
	}
	// The redirected connects above wrote their origins and sluice_peers;
	// no update failed, and every site (sluice_dns_peers too) is read
	// from the kernel.
	if me := e.ag.MapErrors(); len(me) != 4 || me["sluice_origins"] != 0 || me["sluice_peers"] != 0 || me["sluice_dns_peers"] != 0 || me["sluice_origin_slots"] != 0 {
		t.Errorf("map update errors %v, want sluice_origins, sluice_peers, sluice_dns_peers and sluice_origin_slots at 0", me)
	}
	// Released, the cgroup goes direct again.
	if err := e.ag.ReleaseCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	if n := cgroupHooks(t, e.cg.Dir); n != 0 {
		t.Errorf("%d hooks attached after release", n)
	}
	dst := netip.AddrPortFrom(up.IP4, 80)
	if r := e.client(dst, clientOpts{host: 0, inCgroup: true}); r.Data != "direct "+dst.String() {
		t.Errorf("after release: %+v", r)
	}
}

// A denied CIDR fails the connect with EPERM on every port, over IPv4 and
// IPv6, and each refusal is an event.
func TestAgentDeny(t *testing.T) {
	e := newAgentEnv(t)
	up := e.tp.Hosts[1]
	e.cfg.DenyCIDRs = []netip.Prefix{netip.PrefixFrom(up.IP4, 32), netip.PrefixFrom(up.IP6, 64).Masked()}
	// The agent's private port on every node address (as for an admin
	// listener on 0.0.0.0 and [::]).
	e.opts.DenyAddrPorts = []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:9999"), netip.MustParseAddrPort("[::]:9999")}
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []netip.AddrPort{
		netip.AddrPortFrom(up.IP4, 80), netip.AddrPortFrom(up.IP4, 9999),
		netip.AddrPortFrom(up.IP6, 443), netip.AddrPortFrom(up.IP6, 9999),
	} {
		r := e.client(dst, clientOpts{host: 0, inCgroup: true})
		if r.Errno != "EPERM" {
			t.Errorf("connect %v: errno %q (data %q), want EPERM", dst, r.Errno, r.Data)
			continue
		}
		ev, ok := e.waitEvent(func(ev agent.Event) bool { return ev.PID == r.PID })
		if !ok {
			t.Errorf("connect %v: no event", dst)
			continue
		}
		if ev.Verdict != agent.Denied || ev.Reason != agent.ReasonDenyCIDR || ev.Dst != dst || ev.Comm != "python3" {
			t.Errorf("connect %v: event %+v", dst, ev)
		}
	}
	// The node's own addresses on the agent's private port are refused;
	// the same port elsewhere is not.
	wl := e.tp.Hosts[0]
	for _, dst := range []netip.AddrPort{netip.AddrPortFrom(wl.GW4, 9999), netip.AddrPortFrom(wl.GW6, 9999)} {
		r := e.client(dst, clientOpts{host: 0, inCgroup: true})
		if r.Errno != "EPERM" {
			t.Errorf("connect %v: %+v, want EPERM", dst, r)
			continue
		}
		ev, ok := e.waitEvent(func(ev agent.Event) bool { return ev.PID == r.PID })
		if !ok || ev.Verdict != agent.Denied || ev.Reason != agent.ReasonDenyAddrPort || ev.Dst != dst {
			t.Errorf("connect %v: event %+v (found %v)", dst, ev, ok)
		}
	}
	// A selected workload can no longer set the agent's mark, and a
	// socket marked before selection is still held to the deny lists:
	// TestAgentForgedMark.
	// Outside the selected cgroup the deny list does not apply.
	r := e.client(netip.AddrPortFrom(up.IP4, 9999), clientOpts{host: 0})
	if r.Data != "direct "+up.IP4.String()+":9999" {
		t.Errorf("unselected process: %+v", r)
	}
	if len(e.rec.all()) != 0 {
		t.Errorf("agent handled %d connections, want none", len(e.rec.all()))
	}
}

// Processes outside the cgroup and ports that are not intercepted go
// direct. (A workload's socket carrying the agent's mark does not:
// TestAgentForgedMark.)
func TestAgentDirect(t *testing.T) {
	e := newAgentEnv(t)
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	up := e.tp.Hosts[1]
	tests := []struct {
		name string
		dst  netip.AddrPort
		o    clientOpts
	}{
		{"outside the cgroup", netip.AddrPortFrom(up.IP4, 80), clientOpts{host: 0}},
		{"outside the cgroup ipv6", netip.AddrPortFrom(up.IP6, 443), clientOpts{host: 0}},
		{"port not intercepted", netip.AddrPortFrom(up.IP4, 9999), clientOpts{host: 0, inCgroup: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.client(tt.dst, tt.o)
			if want := "direct " + tt.dst.String(); r.Data != want {
				t.Fatalf("client got %+v, want data %q", r, want)
			}
		})
	}
	// A connection to the listener that the hooks did not redirect has no
	// origin: it is closed unanswered, never proxied blind.
	v4, _ := e.ag.InterceptAddrs()
	c, err := net.DialTimeout("tcp", netip.AddrPortFrom(v4, e.cfg.ProxyPort).String(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial the listener: %v", err)
	}
	if got := readAllTimeout(c); got != "" {
		t.Errorf("unredirected connection to the listener read %q, want nothing", got)
	}
	c.Close()
	if n := len(e.rec.all()); n != 0 {
		t.Errorf("agent handled %d connections, want none", n)
	}
	ev, ok := e.waitEvent(func(ev agent.Event) bool { return ev.Dst.Port() == 9999 })
	if !ok || ev.Verdict != agent.Direct || ev.Reason != agent.ReasonPortNotListed {
		t.Errorf("event for the port that is not intercepted: %+v (found %v)", ev, ok)
	}
	for _, ev := range e.events() {
		if ev.Verdict == agent.Redirected {
			t.Errorf("unexpected redirect event %+v", ev)
		}
	}
}

// Two workload namespaces connecting from the same source port at the
// same time each get their own origin.
func TestAgentSameSourcePortTwoNamespaces(t *testing.T) {
	e := newAgentEnv(t)
	e.rec.hold = make(chan struct{})
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	up := e.tp.Hosts[1]
	dstA, dstB := netip.AddrPortFrom(up.IP4, 80), netip.AddrPortFrom(up.IP4, 443)
	waitA := e.startClient(dstA, clientOpts{host: 0, inCgroup: true, sport: 40123})
	waitB := e.startClient(dstB, clientOpts{host: 2, inCgroup: true, sport: 40123})
	// Both connections are open before either is answered.
	for i := 0; i < 500 && len(e.rec.all()) < 2; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	close(e.rec.hold)
	ra, rb := waitA(), waitB()
	if ra.Data != "proxied "+dstA.String() || rb.Data != "proxied "+dstB.String() {
		t.Fatalf("clients got %q and %q", ra.Data, rb.Data)
	}
	got := e.rec.all()
	if len(got) != 2 {
		t.Fatalf("agent handled %d connections, want 2", len(got))
	}
	byPID := map[int]seen{}
	for _, s := range got {
		if s.ID.Client.Port() != 40123 {
			t.Errorf("client port %d, want 40123", s.ID.Client.Port())
		}
		byPID[s.ID.PID] = s
	}
	if s := byPID[ra.PID]; s.Dst.Addr != dstA || s.ID.Client.Addr() != e.tp.Hosts[0].IP4 {
		t.Errorf("namespace A: %+v", s)
	}
	if s := byPID[rb.PID]; s.Dst.Addr != dstB || s.ID.Client.Addr() != e.tp.Hosts[2].IP4 {
		t.Errorf("namespace B: %+v", s)
	}
}

// failMode closed: with the agent stopped the pins stay and the workload's
// connects fail (nothing reaches the upstream); a new agent adopts the pins
// and it works again; cleanup then leaves nothing.
func TestAgentFailClosed(t *testing.T) {
	e := newAgentEnv(t)
	e.cfg.FailMode = "closed"
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(e.tp.Hosts[1].IP4, 80)
	if r := e.client(dst, clientOpts{host: 0, inCgroup: true}); r.Data != "proxied "+dst.String() {
		t.Fatalf("with the agent: %+v", r)
	}
	e.stop()
	pins, _ := filepath.Glob(filepath.Join(e.cfg.BPFFS, "links", "*"))
	if len(pins) != 11 { // the 5 hooks cgroupHooks counts, setsockopt, egress, sendmsg4/6 and recvmsg4/6
		t.Errorf("pinned links after stop: %v, want 11", pins)
	}
	if n := cgroupHooks(t, e.cg.Dir); n != 5 {
		t.Errorf("%d hooks attached after stop, want 5", n)
	}
	r := e.client(dst, clientOpts{host: 0, inCgroup: true})
	if r.Errno != "ECONNREFUSED" {
		t.Errorf("without the agent: %+v, want ECONNREFUSED", r)
	}
	// Should the intercept address vanish while the hooks stay pinned,
	// the agent's unreachable route keeps redirected connects on the node.
	// (Checked first: without the guard this step would not be safe.)
	guard, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: prefixNet(e.cfg.InterceptIPv4), Table: 254}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil || len(guard) != 1 || guard[0].Type != syscall.RTN_UNREACHABLE {
		t.Fatalf("no unreachable guard route for %s after stop: %v %v", e.cfg.InterceptIPv4, guard, err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrDel(lo, &netlink.Addr{IPNet: prefixNet(e.cfg.InterceptIPv4)}); err != nil {
		t.Fatalf("remove the intercept address: %v", err)
	}
	r = e.client(dst, clientOpts{host: 0, inCgroup: true})
	if r.Errno != "EHOSTUNREACH" && r.Errno != "ENETUNREACH" {
		t.Errorf("without the agent and its address: %+v, want EHOSTUNREACH", r)
	}
	if d := e.directConns(); len(d) != 0 {
		t.Errorf("upstream saw %v while the agent was down", d)
	}
	// A new agent replaces the pins in place.
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	if n := cgroupHooks(t, e.cg.Dir); n != 5 {
		t.Errorf("%d hooks attached after restart, want 5", n)
	}
	if r := e.client(dst, clientOpts{host: 0, inCgroup: true}); r.Data != "proxied "+dst.String() {
		t.Fatalf("after restart: %+v", r)
	}
	e.stop()
	// An agent in failMode open takes the pinned hooks over and unpins
	// them: they live as long as it does.
	e.cfg.FailMode = "open"
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.cfg.BPFFS); !os.IsNotExist(err) {
		t.Errorf("pin directory %s still there under failMode open (%v)", e.cfg.BPFFS, err)
	}
	if n := cgroupHooks(t, e.cg.Dir); n != 5 {
		t.Errorf("%d hooks attached under failMode open, want 5", n)
	}
	if r := e.client(dst, clientOpts{host: 0, inCgroup: true}); r.Data != "proxied "+dst.String() {
		t.Fatalf("after the open agent took over: %+v", r)
	}
	e.stop()
	if n := cgroupHooks(t, e.cg.Dir); n != 0 {
		t.Errorf("%d hooks attached after the open agent stopped, want 0", n)
	}
	// The address was added by the closed-mode agent: cleanup removes it.
	if err := agent.Cleanup(e.cfg, nil); err != nil {
		t.Fatal(err)
	}
	e.assertNothingLeft()
	if r := e.client(dst, clientOpts{host: 0, inCgroup: true}); r.Data != "direct "+dst.String() {
		t.Errorf("after cleanup: %+v", r)
	}
}

// failMode open: with the agent stopped the workload goes direct and
// nothing is left.
func TestAgentFailOpen(t *testing.T) {
	e := newAgentEnv(t)
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(e.tp.Hosts[1].IP6, 443)
	if r := e.client(dst, clientOpts{host: 0, inCgroup: true}); r.Data != "proxied "+dst.String() {
		t.Fatalf("with the agent: %+v", r)
	}
	e.stop()
	e.assertNothingLeft()
	if r := e.client(dst, clientOpts{host: 0, inCgroup: true}); r.Data != "direct "+dst.String() {
		t.Errorf("without the agent: %+v", r)
	}
}

// A cgroup created after start that matches a configured glob is
// intercepted within a second; root attach with a selection map works the
// same way.
func TestAgentGlobSelectsNewCgroup(t *testing.T) {
	for _, mode := range []string{"cgroup", "root"} {
		t.Run(mode, func(t *testing.T) {
			e := newAgentEnv(t)
			prefix := fmt.Sprintf("sluice-glob-%x%x", randByte(), randByte())
			e.cfg.Cgroups = []string{"/" + prefix + "-*"}
			e.cfg.Attach = mode
			e.start()
			dir := filepath.Join(e.mount, prefix+"-x")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			e.cg = &Cgroup{Path: "/" + prefix + "-x", Dir: dir}
			t.Cleanup(func() {
				_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
				for i := 0; i < 50; i++ {
					if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
						return
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
			ok := false
			for i := 0; i < 50 && !ok; i++ {
				if mode == "cgroup" {
					ok = cgroupHooks(t, dir) == 5
				} else {
					ok = selected(t, e, dir)
				}
				if !ok {
					time.Sleep(20 * time.Millisecond)
				}
			}
			if !ok {
				t.Fatalf("new cgroup %s not intercepted within a second", dir)
			}
			dst := netip.AddrPortFrom(e.tp.Hosts[1].IP4, 80)
			r := e.client(dst, clientOpts{host: 0, inCgroup: true})
			if r.Data != "proxied "+dst.String() {
				t.Fatalf("client in the new cgroup: %+v", r)
			}
			if got := e.rec.all(); len(got) != 1 || got[0].ID.Cgroup != e.cg.Path {
				t.Errorf("handled %+v", got)
			}
			// A process elsewhere goes direct, also with root attach.
			if r := e.client(dst, clientOpts{host: 0}); r.Data != "direct "+dst.String() {
				t.Errorf("client outside: %+v", r)
			}
			// A removed cgroup is forgotten.
			if err := os.Remove(dir); err != nil {
				t.Fatal(err)
			}
			gone := false
			for i := 0; i < 50 && !gone; i++ {
				gone = !selected(t, e, dir)
				if !gone {
					time.Sleep(20 * time.Millisecond)
				}
			}
			if !gone {
				t.Errorf("removed cgroup still intercepted: %v", e.ag.Intercepted())
			}
		})
	}
}

// selected reports whether the agent intercepts the cgroup at dir.
func selected(t *testing.T, e *agentEnv, dir string) bool {
	t.Helper()
	return slices.Contains(e.ag.Intercepted(), "/"+filepath.Base(dir))
}

// With hooks on a cgroup and on its child, the child's processes are
// redirected once: the parent's programs leave a connect already steered
// to the proxy alone, even when a deny CIDR covers the intercept address.
func TestAgentNestedSelection(t *testing.T) {
	e := newAgentEnv(t)
	e.cfg.DenyCIDRs = []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("fdc5:1ce0:77::/48")}
	e.start()
	child := &Cgroup{Path: e.cg.Path + "/child", Dir: filepath.Join(e.cg.Dir, "child")}
	if err := os.Mkdir(child.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(child.Dir, "cgroup.kill"), []byte("1"), 0)
		for i := 0; i < 50; i++ {
			if err := os.Remove(child.Dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	// The child first, then its parent: both get hooks.
	for _, p := range []string{child.Path, e.cg.Path} {
		if err := e.ag.SelectCgroup(p); err != nil {
			t.Fatal(err)
		}
	}
	if a, b := cgroupHooks(t, child.Dir), cgroupHooks(t, e.cg.Dir); a != 5 || b != 5 {
		t.Fatalf("hooks on child %d, on parent %d; want 5 and 5", a, b)
	}
	e.cg = child
	up := e.tp.Hosts[1]
	for _, dst := range []netip.AddrPort{netip.AddrPortFrom(up.IP4, 80), netip.AddrPortFrom(up.IP6, 443)} {
		r := e.client(dst, clientOpts{host: 0, inCgroup: true})
		if r.Data != "proxied "+dst.String() {
			t.Fatalf("connect %v from the child: %+v", dst, r)
		}
		if _, ok := e.waitEvent(func(ev agent.Event) bool { return ev.PID == r.PID }); !ok {
			t.Fatalf("connect %v: no event", dst)
		}
		var evs []agent.Event
		for _, ev := range e.events() {
			if ev.PID == r.PID {
				evs = append(evs, ev)
			}
		}
		if len(evs) != 1 || evs[0].Verdict != agent.Redirected {
			t.Errorf("connect %v: events %+v, want one redirect", dst, evs)
		}
		if s := e.rec.all(); s[len(s)-1].ID.Cgroup != child.Path {
			t.Errorf("identity cgroup %q, want %q", s[len(s)-1].ID.Cgroup, child.Path)
		}
	}
}

// An intercept address the agent found in place is not the agent's: it
// stays after the agent stops and after cleanup.
func TestAgentKeepsForeignAddress(t *testing.T) {
	e := newAgentEnv(t)
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	foreign := &netlink.Addr{IPNet: prefixNet(e.cfg.InterceptIPv4)}
	if err := netlink.AddrAdd(lo, foreign); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.AddrDel(lo, foreign) })
	for _, mode := range []string{"open", "closed"} {
		e.cfg.FailMode = mode
		e.start()
		if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
			t.Fatal(err)
		}
		dst := netip.AddrPortFrom(e.tp.Hosts[1].IP4, 80)
		if r := e.client(dst, clientOpts{host: 0, inCgroup: true}); r.Data != "proxied "+dst.String() {
			t.Fatalf("%s: %+v", mode, r)
		}
		e.stop()
		if err := agent.Cleanup(e.cfg, nil); err != nil {
			t.Fatal(err)
		}
		if !routedLocal(e.cfg.InterceptIPv4) {
			t.Fatalf("%s: the address the agent found in place was removed", mode)
		}
		if n := cgroupHooks(t, e.cg.Dir); n != 0 {
			t.Errorf("%s: %d hooks left", mode, n)
		}
	}
}

// agent.bypassCIDRs: a selected process reaches a bypassed destination
// directly on an intercepted port (the event says why), while the longest
// prefix still wins: a denied /128 inside a bypassed range is refused,
// and a destination outside the range is still redirected.
func TestAgentBypassCIDRs(t *testing.T) {
	e := newAgentEnv(t)
	up := e.tp.Hosts[1]
	e.cfg.BypassCIDRs = []netip.Prefix{netip.PrefixFrom(up.IP4, 32), netip.PrefixFrom(up.IP6, 64).Masked()}
	e.cfg.DenyCIDRs = []netip.Prefix{netip.PrefixFrom(up.IP6, 128)}
	e.start()
	if err := e.ag.SelectCgroup(e.cg.Path); err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(up.IP4, 443)
	r := e.client(dst, clientOpts{host: 0, inCgroup: true})
	if want := "direct " + dst.String(); r.Data != want {
		t.Fatalf("bypassed destination: client got %+v, want data %q", r, want)
	}
	ev, ok := e.waitEvent(func(ev agent.Event) bool { return ev.Dst == dst })
	if !ok || ev.Verdict != agent.Direct || ev.Reason != agent.ReasonBypassCIDR {
		t.Errorf("event for the bypassed destination: %+v (found %v)", ev, ok)
	}
	denied := netip.AddrPortFrom(up.IP6, 443)
	if r := e.client(denied, clientOpts{host: 0, inCgroup: true}); r.Errno != "EPERM" {
		t.Errorf("denied /128 inside a bypassed /64: %+v, want EPERM", r)
	}
	if n := len(e.rec.all()); n != 0 {
		t.Errorf("agent handled %d connections, want none", n)
	}
}
