package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// agent.bypassHosts: names whose connects are never redirected. The
// kernel decides by address, so the names become addresses: those the
// agent's DNS server answers a selected workload for a matching name (for
// the answer's TTL), or, without a DNS server, those the agent resolves
// itself every minute. Each address goes into the bypass trie as a /32 or
// /128 of its own, unless a prefix of agent.denyCIDRs or agent.bypassCIDRs
// already holds it: a denied address is never bypassed, and an entry the
// operator listed is never written nor removed here.

const (
	// bypassMinTTL is the shortest time an answered address stays
	// bypassed: clients connect a little after they resolve, and some
	// cache answers for a while.
	bypassMinTTL = 30 * time.Second
	// bypassMaxTTL is the longest.
	bypassMaxTTL = time.Hour
	// bypassMaxEntries bounds the addresses learned (the tries hold 4096
	// prefixes each, agent.denyCIDRs and agent.bypassCIDRs included).
	bypassMaxEntries = 2048
	// bypassSweep is how often expired addresses leave the trie.
	bypassSweep = 5 * time.Second
	// bypassResolveEvery is how often the names are resolved without a
	// DNS server; each address resolved stays for bypassResolveTTL.
	bypassResolveEvery = time.Minute
	bypassResolveTTL   = 3 * time.Minute
)

// hostMatcher matches names against agent.bypassHosts patterns: "name"
// matches that name, "*.suffix" any name under suffix (not suffix itself).
// Case and a trailing dot do not matter.
type hostMatcher struct {
	exact    map[string]bool
	suffixes []string // ".suffix"
}

func newHostMatcher(patterns []string) hostMatcher {
	m := hostMatcher{exact: map[string]bool{}}
	for _, p := range patterns {
		p = normName(p)
		if s, ok := strings.CutPrefix(p, "*."); ok {
			m.suffixes = append(m.suffixes, "."+s)
		} else if p != "" {
			m.exact[p] = true
		}
	}
	return m
}

// empty reports whether no pattern was given.
func (m hostMatcher) empty() bool { return len(m.exact) == 0 && len(m.suffixes) == 0 }

// match reports whether name is one of the bypassed hosts.
func (m hostMatcher) match(name string) bool {
	name = normName(name)
	if name == "" {
		return false
	}
	if m.exact[name] {
		return true
	}
	for _, s := range m.suffixes {
		if len(name) > len(s) && strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

// names are the exact names, the ones that can be resolved.
func (m hostMatcher) names() []string {
	var out []string
	for n := range m.exact {
		out = append(out, n)
	}
	return out
}

func normName(s string) string { return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".") }

// bypassTable is the addresses learned for bypassHosts, each with the
// host it was learned for and when it expires, kept in step with the
// kernel's trie through put and del. Safe for concurrent use.
type bypassTable struct {
	max int
	// static are agent.denyCIDRs and agent.bypassCIDRs: an address one
	// of them holds is never learned.
	static []netip.Prefix
	put    func(netip.Addr) error // write addr/32 (/128) as bypass
	del    func(netip.Addr) error // remove it

	mu      sync.Mutex
	entries map[netip.Addr]bypassEntry
}

type bypassEntry struct {
	host  string
	until time.Time
}

func newBypassTable(max int, deny, bypass []netip.Prefix, put, del func(netip.Addr) error) *bypassTable {
	t := &bypassTable{max: max, put: put, del: del, entries: map[netip.Addr]bypassEntry{}}
	for _, p := range append(append([]netip.Prefix(nil), deny...), bypass...) {
		t.static = append(t.static, p.Masked())
	}
	return t
}

// held reports whether a prefix of agent.denyCIDRs or agent.bypassCIDRs
// holds addr.
func (t *bypassTable) held(addr netip.Addr) bool {
	for _, p := range t.static {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// add bypasses addr, learned for host, until now+ttl (ttl clamped to
// [bypassMinTTL, bypassMaxTTL]); an address already learned keeps the
// later expiry. When the table is full the entry expiring soonest makes
// room. It returns whether addr is (now) learned.
func (t *bypassTable) add(addr netip.Addr, host string, ttl time.Duration, now time.Time) (bool, error) {
	addr = addr.Unmap()
	if !addr.IsValid() || addr.IsUnspecified() || t.held(addr) {
		return false, nil
	}
	ttl = min(max(ttl, bypassMinTTL), bypassMaxTTL)
	until := now.Add(ttl)
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.entries[addr]; ok {
		if until.After(e.until) {
			e.until = until
		}
		e.host = host
		t.entries[addr] = e
		return true, nil
	}
	if len(t.entries) >= t.max {
		var victim netip.Addr
		var first time.Time
		for a, e := range t.entries {
			if !victim.IsValid() || e.until.Before(first) {
				victim, first = a, e.until
			}
		}
		if derr := t.del(victim); derr != nil {
			// Not forgotten: the sweeper tries again when it expires.
			return false, fmt.Errorf("remove bypassed address %s to make room: %w", victim, derr)
		}
		delete(t.entries, victim)
	}
	if perr := t.put(addr); perr != nil {
		return false, fmt.Errorf("bypass %s (%s): %w", addr, host, perr)
	}
	t.entries[addr] = bypassEntry{host: host, until: until}
	return true, nil
}

// expire removes the entries expired at now from the kernel and the
// table and returns the addresses removed. An entry whose removal fails
// stays, to be tried again.
func (t *bypassTable) expire(now time.Time) ([]netip.Addr, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var gone []netip.Addr
	var errs []error
	for a, e := range t.entries {
		if now.Before(e.until) {
			continue
		}
		if err := t.del(a); err != nil {
			errs = append(errs, fmt.Errorf("remove expired bypassed address %s: %w", a, err))
			continue
		}
		delete(t.entries, a)
		gone = append(gone, a)
	}
	return gone, errors.Join(errs...)
}

// host is the name addr was learned for, if it is learned.
func (t *bypassTable) host(addr netip.Addr) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[addr.Unmap()]
	return e.host, ok
}

// len is the number of addresses learned.
func (t *bypassTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}

// learnAnswer bypasses the A and AAAA records of m, an answer to a
// query for host, each for its TTL. It returns the addresses learned.
func (t *bypassTable) learnAnswer(host string, m *dns.Msg, now time.Time) ([]netip.Addr, error) {
	if m == nil || m.Rcode != dns.RcodeSuccess {
		return nil, nil
	}
	var out []netip.Addr
	var errs []error
	for _, rr := range m.Answer {
		var a netip.Addr
		switch r := rr.(type) {
		case *dns.A:
			a, _ = netip.AddrFromSlice(r.A.To4())
		case *dns.AAAA:
			a, _ = netip.AddrFromSlice(r.AAAA.To16())
		default:
			continue
		}
		ok, err := t.add(a, host, time.Duration(rr.Header().Ttl)*time.Second, now)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			out = append(out, a.Unmap())
		}
	}
	return out, errors.Join(errs...)
}

// refresh resolves names with lookup and bypasses every address for
// bypassResolveTTL (the agent refreshes every bypassResolveEvery, so an
// address a name no longer resolves to leaves within that time). A name
// that fails to resolve keeps its addresses until they expire.
func (t *bypassTable) refresh(ctx context.Context, names []string, lookup func(context.Context, string) ([]netip.Addr, error), now time.Time) error {
	var errs []error
	for _, n := range names {
		addrs, err := lookup(ctx, n)
		if err != nil {
			errs = append(errs, fmt.Errorf("resolve agent.bypassHosts name %s: %w", n, err))
			continue
		}
		for _, a := range addrs {
			if _, err := t.add(a, n, bypassResolveTTL, now); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
