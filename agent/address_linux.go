package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// interceptLink is the dummy interface the agent prefers for its address.
const interceptLink = "sluice0"

// Route protocols of the guard routes. The guard also records, for
// Cleanup after the agent is gone, whether the agent added the address
// itself (an address someone else put there is never removed).
const (
	rtprotGuard      = 0x5c // guard route; the address was already there
	rtprotGuardOwned = 0x5d // guard route; the agent added the address
)

// GuardTable is the agent's own routing table (0x51ce, 20942). It holds
// one unreachable route per intercept address, and a policy-routing rule
// per address (right after the rule that looks up the local table, far
// ahead of main's) sends lookups for the address there. While the
// address is on the node the local table answers first; once it is gone
// the lookup ends in the unreachable route, whatever the main table or a
// later rule says (a default route, a route someone put in place of the
// main-table guard). Agents with different addresses share the table,
// each with its own routes and rules.
const GuardTable = 0x51ce

// oneShot is a netlink handle that opens a socket per request, as the
// netlink package's own functions do: for the setup and the removal,
// which ask a few times in an agent's life.
func oneShot() *netlink.Handle { return &netlink.Handle{} }

// interceptAddrs are the verified-local intercept addresses.
type interceptAddrs struct {
	v4, v6 netip.Addr // v6 invalid when IPv6 is off or not configured
	// added lists what this agent put in place (removed on Close in open
	// mode); createdLink is set when it created sluice0.
	added       []netlink.Addr
	routes      []netlink.Route // unreachable guards this agent added
	rules       []netlink.Rule  // guard rules this agent added
	link        netlink.Link
	createdLink bool
}

// ensureIntercept places the intercept addresses on sluice0 (created when
// the kernel has dummy links) or on lo, and verifies that the kernel
// routes each as local. No hook is attached before this returns nil.
func ensureIntercept(v4, v6 netip.Addr, log *slog.Logger) (*interceptAddrs, error) {
	ia := &interceptAddrs{}
	var err error
	if ia.link, ia.createdLink, err = interceptLinkOrLo(); err != nil {
		return nil, err
	}
	if err := ia.ensure(v4); err != nil {
		ia.remove(log)
		return nil, err
	}
	ia.v4 = v4
	if v6.IsValid() {
		if err := ia.ensure(v6); err != nil {
			// IPv6 may be disabled on the node: IPv6 connects to
			// intercepted ports are then refused in the kernel.
			log.Warn("intercept address unavailable, intercepted IPv6 connects will be refused", audit.KeyAddr, v6.String(), audit.KeyError, err)
		} else {
			ia.v6 = v6
		}
	}
	for _, a := range []netip.Addr{ia.v4, ia.v6} {
		if !a.IsValid() {
			continue
		}
		if err := ia.guard(a, ia.owns(a)); err != nil {
			ia.remove(log)
			return nil, err
		}
	}
	return ia, nil
}

// guard adds the guards of a: an unreachable route in the main table,
// and an unreachable route in GuardTable with the rule that leads there.
// The local table wins while the address is on the node; should the
// address go (removed by hand, by another tool, or while hooks stay
// pinned in failMode closed), redirected connects fail on the node
// instead of following a route off it.
func (ia *interceptAddrs) guard(a netip.Addr, owned bool) error {
	r := unreachableRoute(a, unix.RT_TABLE_MAIN, owned)
	switch err := netlink.RouteAdd(&r); {
	case err == nil:
		ia.routes = append(ia.routes, r)
	case !errors.Is(err, unix.EEXIST):
		return fmt.Errorf("add unreachable route for intercept address %s: %w", a, err)
	}
	t := unreachableRoute(a, GuardTable, owned)
	switch err := netlink.RouteAdd(&t); {
	case err == nil:
		ia.routes = append(ia.routes, t)
	case !errors.Is(err, unix.EEXIST):
		return fmt.Errorf("add unreachable route for intercept address %s to table %d: %w", a, GuardTable, err)
	}
	if err := ia.guardRule(a); err != nil {
		return err
	}
	return isLocal(a)
}

// guardRule adds the rule "to a lookup GuardTable" one priority after
// the first rule that looks up the local table, unless such a rule is in
// place already. A rule of ours that sits at or ahead of the local
// table's (someone moved the local rule) is replaced: ahead of it, it
// would make the address unreachable while it is on the node.
func (ia *interceptAddrs) guardRule(a netip.Addr) error {
	pref, rs, err := guardRules(oneShot(), a)
	if err != nil {
		return err
	}
	ok := false
	for i := range rs {
		if rs[i].Priority > pref {
			ok = true
			continue
		}
		if err := netlink.RuleDel(&rs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove misplaced guard rule for intercept address %s: %w", a, err)
		}
	}
	if ok {
		return nil
	}
	r := guardRuleFor(a, pref+1)
	if err := netlink.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add guard rule for intercept address %s: %w", a, err)
	}
	ia.rules = append(ia.rules, *r)
	return nil
}

// guardRules returns the priority of the first rule that looks up the
// local table (0 unless someone moved it) and the agent's rules for a.
func guardRules(h *netlink.Handle, a netip.Addr) (localPref int, ours []netlink.Rule, err error) {
	rs, err := h.RuleList(family(a))
	if err != nil {
		return 0, nil, fmt.Errorf("list rules for intercept address %s: %w", a, err)
	}
	localPref = -1
	dst := hostNet(a).String()
	for _, r := range rs {
		if r.Table == unix.RT_TABLE_LOCAL && (localPref < 0 || r.Priority < localPref) {
			localPref = r.Priority
		}
		if r.Table == GuardTable && r.Dst != nil && r.Dst.String() == dst {
			ours = append(ours, r)
		}
	}
	if localPref < 0 {
		localPref = 0
	}
	return localPref, ours, nil
}

func guardRuleFor(a netip.Addr, pref int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family(a)
	r.Dst = hostNet(a)
	r.Table = GuardTable
	r.Priority = pref
	r.Protocol = rtprotGuard // recorded where the kernel knows rule protocols (4.17)
	return r
}

// unreachableRoute is the guard route for a in table; its protocol
// records whether an agent added the address.
func unreachableRoute(a netip.Addr, table int, owned bool) netlink.Route {
	r := netlink.Route{
		Dst:      hostNet(a),
		Type:     unix.RTN_UNREACHABLE,
		Table:    table,
		Family:   family(a),
		Protocol: rtprotGuard,
	}
	if owned {
		r.Protocol = rtprotGuardOwned
	}
	return r
}

// hostNet is a as a /32 or /128.
func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

func family(a netip.Addr) int {
	if a.Is6() {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

func interceptLinkOrLo() (netlink.Link, bool, error) {
	if l, err := netlink.LinkByName(interceptLink); err == nil {
		return l, false, nil
	}
	d := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: interceptLink}}
	if err := netlink.LinkAdd(d); err == nil {
		l, err := netlink.LinkByName(interceptLink)
		if err == nil {
			if err = netlink.LinkSetUp(l); err == nil {
				return l, true, nil
			}
			_ = netlink.LinkDel(l)
		}
		return nil, false, fmt.Errorf("set up %s: %w", interceptLink, err)
	}
	// No dummy links in this kernel: use the loopback.
	l, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, false, fmt.Errorf("find lo: %w", err)
	}
	return l, false, nil
}

// owns reports whether this agent added a.
func (ia *interceptAddrs) owns(a netip.Addr) bool {
	for _, na := range ia.added {
		if ip, ok := netip.AddrFromSlice(na.IP); ok && ip.Unmap() == a {
			return true
		}
	}
	return false
}

// ensure adds a (as a host route) unless the kernel already routes it as
// local, then verifies it is local.
func (ia *interceptAddrs) ensure(a netip.Addr) error {
	if isLocal(a) == nil {
		return nil
	}
	bits := 32
	if a.Is6() {
		bits = 128
	}
	na := netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}}
	if a.Is6() {
		na.Flags = unix.IFA_F_NODAD
	}
	switch err := netlink.AddrAdd(ia.link, &na); {
	case err == nil:
		ia.added = append(ia.added, na)
	case !errors.Is(err, unix.EEXIST):
		return fmt.Errorf("add intercept address %s to %s: %w", a, ia.link.Attrs().Name, err)
	}
	// IPv6 installs the local route a moment after the address: poll,
	// bounded.
	var err error
	for i := 0; i < 100; i++ {
		if err = isLocal(a); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return err
}

// isLocal asks the kernel how it routes a: only RTN_LOCAL is acceptable,
// since a redirect to anything else would send workload traffic away.
func isLocal(a netip.Addr) error {
	rs, err := netlink.RouteGet(a.AsSlice())
	if err != nil {
		return fmt.Errorf("verify intercept address %s is local: route lookup: %w", a, err)
	}
	if len(rs) == 0 || rs[0].Type != unix.RTN_LOCAL {
		t := -1
		if len(rs) > 0 {
			t = rs[0].Type
		}
		return fmt.Errorf("verify intercept address %s is local: kernel route type %d, want local (%d); refusing to attach hooks", a, t, unix.RTN_LOCAL)
	}
	return nil
}

// remove takes away what ensure added.
func (ia *interceptAddrs) remove(log *slog.Logger) {
	for i := range ia.rules {
		if err := netlink.RuleDel(&ia.rules[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			log.Warn("remove guard rule", audit.KeyDst, ia.rules[i].Dst.String(), audit.KeyError, err)
		}
	}
	ia.rules = nil
	for i := range ia.routes {
		if err := netlink.RouteDel(&ia.routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
			log.Warn("remove unreachable route", audit.KeyDst, ia.routes[i].Dst.String(), audit.KeyError, err)
		}
	}
	ia.routes = nil
	for i := range ia.added {
		if err := netlink.AddrDel(ia.link, &ia.added[i]); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			log.Warn("remove intercept address", audit.KeyAddr, ia.added[i].IPNet.String(), audit.KeyError, err)
		}
	}
	ia.added = nil
	if ia.createdLink && !holdsOthers(ia.link) {
		if err := netlink.LinkDel(ia.link); err != nil {
			log.Warn("remove link", audit.KeyLink, interceptLink, audit.KeyError, err)
		}
		ia.createdLink = false
	}
}

// holdsOthers reports whether l still holds an address (other than an
// IPv6 link-local one) once this agent removed its own: another agent or
// `sluice run` placed it there after we created the link, and deleting
// the link would take it away.
func holdsOthers(l netlink.Link) bool {
	as, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return true // unsure: leave the link
	}
	for _, a := range as {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		if ip = ip.Unmap(); ip.Is6() && ip.IsLinkLocalUnicast() {
			continue // the kernel's own fe80:: address
		}
		return true
	}
	return false
}

// removeIntercept removes the guard rules and routes of the configured
// addresses and the addresses an agent added (as its guard route
// records), then the sluice0 link (Cleanup).
func removeIntercept(v4, v6 netip.Addr) error {
	var errs []error
	var links []netlink.Link
	if l, err := netlink.LinkByName(interceptLink); err == nil {
		links = append(links, l)
	}
	if l, err := netlink.LinkByName("lo"); err == nil {
		links = append(links, l)
	}
	for _, a := range []netip.Addr{v4, v6} {
		if !a.IsValid() {
			continue
		}
		if _, rules, err := guardRules(oneShot(), a); err != nil {
			errs = append(errs, err)
		} else {
			for i := range rules {
				if err := netlink.RuleDel(&rules[i]); err != nil && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, fmt.Errorf("remove guard rule for %s: %w", a, err))
				}
			}
		}
		for _, table := range []int{GuardTable, unix.RT_TABLE_MAIN} {
			rs, err := guardRoutes(oneShot(), a, table)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for i := range rs {
				if rs[i].Protocol == rtprotGuardOwned && table == unix.RT_TABLE_MAIN {
					na := netlink.Addr{IPNet: hostNet(a)}
					for _, l := range links {
						if err := netlink.AddrDel(l, &na); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
							errs = append(errs, fmt.Errorf("remove intercept address %s from %s: %w", a, l.Attrs().Name, err))
						}
					}
				}
				if err := netlink.RouteDel(&rs[i]); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("remove unreachable route for %s from table %d: %w", a, table, err))
				}
			}
		}
	}
	if len(links) > 0 && links[0].Attrs().Name == interceptLink {
		if err := netlink.LinkDel(links[0]); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", interceptLink, err))
		}
	}
	return errors.Join(errs...)
}

// guardRoutes lists the agents' unreachable routes for a in table (those
// with a guard protocol; anything else there is not ours).
func guardRoutes(h *netlink.Handle, a netip.Addr, table int) ([]netlink.Route, error) {
	f := netlink.Route{Dst: hostNet(a), Table: table}
	rs, err := h.RouteListFiltered(family(a), &f, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes for %s in table %d: %w", a, table, err)
	}
	out := rs[:0]
	for _, r := range rs {
		if r.Type == unix.RTN_UNREACHABLE && (r.Protocol == rtprotGuard || r.Protocol == rtprotGuardOwned) {
			out = append(out, r)
		}
	}
	return out, nil
}

// expandAddrPorts replaces each unspecified address by every address of
// the node (all links, loopback included).
func expandAddrPorts(aps []netip.AddrPort) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	var local []netip.Addr
	for _, ap := range aps {
		if !ap.Addr().IsUnspecified() {
			out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
			continue
		}
		if local == nil {
			as, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
			if err != nil {
				return nil, fmt.Errorf("list node addresses: %w", err)
			}
			for _, a := range as {
				if ip, ok := netip.AddrFromSlice(a.IP); ok {
					local = append(local, ip.Unmap())
				}
			}
		}
		for _, l := range local {
			// 0.0.0.0 listens on IPv4 only; [::] on both families.
			if ap.Addr().Is4() && !l.Is4() {
				continue
			}
			out = append(out, netip.AddrPortFrom(l, ap.Port()))
		}
	}
	return out, nil
}
