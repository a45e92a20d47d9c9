package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

const (
	// recheckEvery bounds how long a lost netlink message (or a change
	// the kernel does not announce, such as a link going down) can hide
	// a missing piece.
	recheckEvery = 500 * time.Millisecond
	// settleFor gathers the burst of messages one removal causes (the
	// address, its local and broadcast routes, then perhaps the guard by
	// a second command) so that everything is restored in one pass.
	settleFor = 50 * time.Millisecond
)

// gap is what is missing of one intercept address's setup.
type gap struct {
	a        netip.Addr
	notLocal bool // the kernel does not route a as local
	rtype    int  // how it routes a instead (-1: no route)
	main     bool // no unreachable guard for a in the main table
	table    bool // no unreachable guard for a in GuardTable
	rule     bool // no guard rule after the local table's rule
	err      error
}

func (g gap) none() bool { return !g.notLocal && !g.main && !g.table && !g.rule && g.err == nil }

// missing names each missing piece, for logs and /readyz.
func (g gap) missing() []string {
	var out []string
	if g.notLocal {
		out = append(out, fmt.Sprintf("intercept address %s (kernel route type %s, want local)", g.a, routeTypeName(g.rtype)))
	}
	if g.rule {
		out = append(out, fmt.Sprintf("guard rule to %s lookup %d", g.a, GuardTable))
	}
	if g.table {
		out = append(out, fmt.Sprintf("guard route unreachable %s in table %d", g.a, GuardTable))
	}
	if g.main {
		out = append(out, fmt.Sprintf("guard route unreachable %s in table main", g.a))
	}
	return out
}

func routeTypeName(t int) string {
	switch t {
	case -1:
		return "none"
	case unix.RTN_UNICAST:
		return "unicast"
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	}
	return fmt.Sprint(t)
}

// inspect reads from the kernel, through h, what is missing of a's
// setup. It changes nothing, so Ready may call it from any goroutine.
func inspect(h *netlink.Handle, a netip.Addr) gap {
	g := gap{a: a, rtype: -1}
	var errs []error
	switch rs, err := h.RouteGet(a.AsSlice()); {
	case err == nil && len(rs) > 0:
		g.rtype = rs[0].Type
	case errors.Is(err, unix.EHOSTUNREACH): // a guard answered
		g.rtype = unix.RTN_UNREACHABLE
	case err != nil && !errors.Is(err, unix.ENETUNREACH):
		errs = append(errs, fmt.Errorf("look up route to intercept address %s: %w", a, err))
	}
	g.notLocal = g.rtype != unix.RTN_LOCAL
	if pref, rules, err := guardRules(h, a); err != nil {
		errs = append(errs, err)
	} else {
		g.rule = true
		for _, r := range rules {
			if r.Priority > pref {
				g.rule = false
			}
		}
	}
	for _, t := range []int{unix.RT_TABLE_MAIN, GuardTable} {
		rs, err := guardRoutes(h, a, t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if t == unix.RT_TABLE_MAIN {
			g.main = len(rs) == 0
		} else {
			g.table = len(rs) == 0
		}
	}
	g.err = errors.Join(errs...)
	return g
}

// restore puts back what g says is missing, the guards first (the rule,
// which holds whatever the main table says, before anything else), then
// the address. It returns what it restored.
func (ia *interceptAddrs) restore(g gap) (restored []string, err error) {
	a := g.a
	if g.rule {
		if err := ia.guardRule(a); err != nil {
			return restored, err
		}
		restored = append(restored, "guard rule")
	}
	for _, t := range []struct {
		missing bool
		table   int
		name    string
	}{{g.table, GuardTable, fmt.Sprint(GuardTable)}, {g.main, unix.RT_TABLE_MAIN, "main"}} {
		if !t.missing {
			continue
		}
		r := unreachableRoute(a, t.table, ia.owns(a))
		switch err := netlink.RouteAdd(&r); {
		case err == nil:
			ia.routes = append(ia.routes, r)
			restored = append(restored, "guard route in table "+t.name)
		case errors.Is(err, unix.EEXIST):
			// Not ours (ours would have been found): someone routes
			// the address in this table. The rule still holds.
			return restored, fmt.Errorf("restore unreachable route for intercept address %s in table %s: another route for it is in place; remove it", a, t.name)
		default:
			return restored, fmt.Errorf("restore unreachable route for intercept address %s in table %s: %w", a, t.name, err)
		}
	}
	if g.notLocal {
		owned := ia.owns(a)
		if err := ia.ensureLink(); err != nil {
			return restored, err
		}
		if err := ia.ensure(a); err != nil {
			return restored, err
		}
		restored = append(restored, "address on "+ia.link.Attrs().Name)
		if !owned && ia.owns(a) && !g.main {
			// The address someone else had placed is the agent's now:
			// its main-table guard says so, for Cleanup.
			r := unreachableRoute(a, unix.RT_TABLE_MAIN, true)
			if err := netlink.RouteReplace(&r); err != nil {
				return restored, fmt.Errorf("mark intercept address %s as the agent's: %w", a, err)
			}
			ia.routes = append(ia.routes, r)
		}
	}
	return restored, nil
}

// ensureLink finds the link again (sluice0 may have been deleted: it is
// created anew, or lo used) and sets it up.
func (ia *interceptAddrs) ensureLink() error {
	l, err := netlink.LinkByIndex(ia.link.Attrs().Index)
	if err != nil || l.Attrs().Name != ia.link.Attrs().Name {
		nl2, created, err := interceptLinkOrLo()
		if err != nil {
			return err
		}
		ia.link, ia.createdLink = nl2, ia.createdLink || created
		return nil
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("set up %s: %w", l.Attrs().Name, err)
		}
	}
	ia.link = l
	return nil
}

// addrWatch keeps the intercept addresses and their guards in place: it
// follows the kernel's address, route and rule messages, re-checks every
// recheckEvery in case a message is lost, and restores whatever went
// missing in one pass.
type addrWatch struct {
	ia           *interceptAddrs
	log          *slog.Logger
	restorations atomic.Uint64
	poke         chan struct{}
	done         chan struct{}
	wg           sync.WaitGroup
	lastErr      string // the watcher goroutine's, to log a failure once
	// nl is the watcher goroutine's netlink handle: its socket stays
	// open between checks, where a socket per request cost a check 178
	// µs per address, most of the idle agent's CPU. Renewed after a
	// failed check.
	nl *netlink.Handle
}

// startAddrWatch starts watching ia. The caller must not change ia until
// close returns.
func startAddrWatch(ia *interceptAddrs, log *slog.Logger) *addrWatch {
	w := &addrWatch{ia: ia, log: log, poke: make(chan struct{}, 1), done: make(chan struct{})}
	w.renew()
	w.wg.Add(1)
	go w.run()
	return w
}

// close stops the watcher and waits for it.
func (w *addrWatch) close() {
	close(w.done)
	w.wg.Wait()
	w.nl.Close()
}

// renew replaces the watcher's netlink handle by a new one; should a
// socket fail to open, the checks open one per request.
func (w *addrWatch) renew() {
	if w.nl != nil {
		w.nl.Close()
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		w.log.Warn("open netlink socket for the intercept address watch", audit.KeyError, err)
		h = oneShot()
	}
	w.nl = h
}

func (w *addrWatch) nudge() {
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// ours reports whether ip is one of the intercept addresses.
func (w *addrWatch) ours(ip net.IP) bool {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return false
	}
	a = a.Unmap()
	return a == w.ia.v4 || (w.ia.v6.IsValid() && a == w.ia.v6)
}

func (w *addrWatch) run() {
	defer w.wg.Done()
	stop, dead := w.subscribe()
	defer func() { stop() }()
	tick := time.NewTicker(recheckEvery)
	defer tick.Stop()
	var settle <-chan time.Time
	for {
		select {
		case <-w.done:
			return
		case <-w.poke:
			if settle == nil {
				settle = time.After(settleFor)
			}
		case <-settle:
			settle = nil
			w.check()
		case <-tick.C:
			w.check()
			if dead.Load() {
				// A subscription ended (e.g. ENOBUFS): subscribe again.
				stop()
				stop, dead = w.subscribe()
			}
		}
	}
}

// subscribe follows address, route and rule messages about the intercept
// addresses. stop ends the subscriptions; dead turns true when one ends
// on its own.
func (w *addrWatch) subscribe() (stop func(), dead *atomic.Bool) {
	dead = new(atomic.Bool)
	done := make(chan struct{})
	onErr := func(err error) {
		dead.Store(true)
		w.log.Debug("intercept address watch", audit.KeyError, err)
	}
	addrs := make(chan netlink.AddrUpdate, 64)
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		onErr(fmt.Errorf("subscribe to address changes: %w", err))
	} else {
		go func() {
			for u := range addrs { // drained until the library closes it
				if w.ours(u.LinkAddress.IP) {
					w.nudge()
				}
			}
			dead.Store(true)
		}()
	}
	routes := make(chan netlink.RouteUpdate, 64)
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		onErr(fmt.Errorf("subscribe to route changes: %w", err))
	} else {
		go func() {
			for u := range routes {
				if u.Dst != nil && w.ours(u.Dst.IP) {
					w.nudge()
				}
			}
			dead.Store(true)
		}()
	}
	// The library has no rule subscription: any rule change is checked.
	if s, err := nl.Subscribe(unix.NETLINK_ROUTE, unix.RTNLGRP_IPV4_RULE, unix.RTNLGRP_IPV6_RULE); err != nil {
		onErr(fmt.Errorf("subscribe to rule changes: %w", err))
	} else {
		go func() { <-done; s.Close() }()
		go func() {
			for {
				if _, _, err := s.Receive(); err != nil {
					dead.Store(true)
					return
				}
				w.nudge()
			}
		}()
	}
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }, dead
}

// check restores what is missing, logs it at Warn and counts it.
func (w *addrWatch) check() {
	var restored []string
	var errs []error
	for _, a := range []netip.Addr{w.ia.v4, w.ia.v6} {
		if !a.IsValid() {
			continue
		}
		g := inspect(w.nl, a)
		if g.err != nil {
			errs = append(errs, g.err)
			w.renew()
			continue
		}
		if g.none() {
			continue
		}
		r, err := w.ia.restore(g)
		if len(r) > 0 {
			restored = append(restored, fmt.Sprintf("%s: %s (missing: %s)", a, strings.Join(r, ", "), strings.Join(g.missing(), "; ")))
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(restored) > 0 {
		n := w.restorations.Add(1)
		w.log.Warn("intercept address setup restored", audit.KeyRestored, strings.Join(restored, "; "), audit.KeyRestorations, n)
	}
	err := errors.Join(errs...)
	switch {
	case err == nil:
		w.lastErr = ""
	case err.Error() != w.lastErr:
		w.lastErr = err.Error()
		w.log.Error("restore intercept address setup", audit.KeyError, err)
	}
}

// Restorations counts the times the agent found its intercept address, a
// guard route or the guard rule missing and put it back (one per repair,
// however many pieces it restored). A monotonic total for
// sluice_agent_intercept_restorations_total.
func (a *Agent) Restorations() uint64 {
	if a.aw == nil {
		return 0
	}
	return a.aw.restorations.Load()
}

// Ready returns nil while the agent can do its job safely: it runs, and
// each intercept address is routed as local with its guard rule and
// unreachable routes in place. Otherwise the error names every missing
// piece (the agent restores them within a second; a /readyz that stays
// unready means it cannot). It asks the kernel each time, in a few
// milliseconds, for admin.Options.Ready (see admin.Gate.Watch).
func (a *Agent) Ready() error {
	a.mu.Lock()
	closed := a.closed
	a.mu.Unlock()
	if closed || a.ia == nil {
		return errors.New("agent stopped")
	}
	var missing []string
	var errs []error
	for _, ad := range []netip.Addr{a.ia.v4, a.ia.v6} {
		if !ad.IsValid() {
			continue
		}
		g := inspect(oneShot(), ad)
		missing = append(missing, g.missing()...)
		if g.err != nil {
			errs = append(errs, g.err)
		}
	}
	if len(missing) > 0 {
		errs = append([]error{fmt.Errorf("missing %s", strings.Join(missing, ", "))}, errs...)
	}
	return errors.Join(errs...)
}
