package mitm

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// Name binding: a name counts for policy only where it is bound to what is
// dialed. A decrypted connection's SNI is bound by the upstream's
// certificate; anything else a client says (a Host header, an SNI that is
// passed through unverified) is bound only where the name resolves to the
// dialed address. A destination with no bound name is judged by its
// address, and by the names known to resolve to it (namesFor), so that
// leaving the name out can't dodge a deny by name.

// binding is what recent lookups of one name returned.
type binding struct {
	addrs   []netip.Addr
	expires time.Time // of addrs
	looked  time.Time // the last lookup, answered or not
}

const (
	bindingCacheSize = 4096
	bindingTTL       = time.Minute
	// bindingRecheck is how soon a name is looked up again to bind it to
	// an address its last answer (or failure) did not give.
	bindingRecheck = 10 * time.Second
	maxBoundAddrs  = 64
	// maxKnownNames bounds Conn.Names.
	maxKnownNames = 16
	// namesTimeout bounds the lookups of one namesFor.
	namesTimeout = 2 * time.Second
)

// isIPLiteral reports whether h is an IP address (with or without brackets).
func isIPLiteral(h string) bool {
	_, err := netip.ParseAddr(strings.Trim(h, "[]"))
	return err == nil
}

// sameHost compares a request's host with a connection's: case-insensitive,
// without a trailing dot or IPv6 brackets. An empty request host (HTTP/1.0
// without Host) is the connection's.
func sameHost(req, conn string) bool {
	norm := func(h string) string { return strings.TrimSuffix(strings.ToLower(strings.Trim(h, "[]")), ".") }
	return req == "" || norm(req) == norm(conn)
}

// resolvesTo reports whether name is ip, or resolves to it: now, or in a
// lookup of the last bindingTTL (DNS that rotates its answers still binds).
func (f *flow) resolvesTo(name string, ip netip.Addr) bool {
	// What the workload itself resolved through the agent's DNS server
	// binds without a second lookup.
	if n := f.p.deps.Names; n != nil {
		want := strings.TrimSuffix(strings.ToLower(name), ".")
		for _, got := range n.NamesFor(f.id, ip.Unmap()) {
			if strings.TrimSuffix(strings.ToLower(got), ".") == want {
				return true
			}
		}
	}
	return f.p.resolvesTo(f.ctx, name, ip)
}

func (p *Proxy) resolvesTo(ctx context.Context, name string, ip netip.Addr) bool {
	if a, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		return a.Unmap() == ip.Unmap()
	}
	ip = ip.Unmap()
	key := strings.TrimSuffix(strings.ToLower(name), ".")
	now := time.Now()
	var b binding
	if old, ok := p.seen.Get(key); ok {
		b = old
		if now.After(b.expires) {
			b.addrs = nil
		}
	}
	if slices.Contains(b.addrs, ip) {
		return true
	}
	if now.Sub(b.looked) < bindingRecheck {
		return false // looked up a moment ago: no need to ask again
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout.D())
	defer cancel()
	as, err := p.resolver.LookupNetIP(ctx, "ip", name)
	b.looked = now
	if err != nil {
		p.log.Warn("name binding lookup failed", audit.KeyHost, name, audit.KeyAddr, ip.String(), audit.KeyError, err.Error())
		p.seen.Add(key, b)
		return false
	}
	union := slices.Clone(b.addrs)
	for _, a := range as {
		if a = a.Unmap(); !slices.Contains(union, a) && len(union) < maxBoundAddrs {
			union = append(union, a)
		}
	}
	p.seen.Add(key, binding{addrs: union, expires: now.Add(bindingTTL), looked: now})
	return slices.Contains(union, ip)
}

// namesFor lists names known to resolve to ip, for a destination with no
// bound name (policy.Conn.Names): the names the policy lists that resolve
// to it (looked up in parallel, within namesTimeout, each at most every
// bindingRecheck), the names the workload itself resolved to it through
// the agent's DNS server (Deps.Names), and any other name a recent lookup
// bound to it.
func (f *flow) namesFor(ip netip.Addr) []string {
	p := f.p
	ip = ip.Unmap()
	var (
		mu  sync.Mutex
		out []string
		wg  sync.WaitGroup
	)
	add := func(n string) {
		mu.Lock()
		defer mu.Unlock()
		if len(out) < maxKnownNames && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	// A policy without hosts (allow by default) costs no lookups, nor
	// the timer of their deadline: namesFor runs for every connection to
	// an IP literal.
	if hl, ok := p.decider().(policy.HostLister); ok && len(hl.Hosts()) > 0 {
		ctx, cancel := context.WithTimeout(f.ctx, namesTimeout)
		defer cancel()
		sem := make(chan struct{}, 8)
		for _, h := range hl.Hosts() {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				if p.resolvesTo(ctx, h, ip) {
					add(strings.TrimSuffix(strings.ToLower(h), "."))
				}
			}()
		}
		wg.Wait()
	}
	if p.deps.Names != nil {
		for _, n := range p.deps.Names.NamesFor(f.id, ip) {
			add(strings.TrimSuffix(strings.ToLower(n), "."))
		}
	}
	now := time.Now()
	for _, k := range p.seen.Keys() {
		if b, ok := p.seen.Peek(k); ok && now.Before(b.expires) && slices.Contains(b.addrs, ip) {
			add(k)
		}
	}
	slices.Sort(out)
	return out
}

// resolvedNames returns the names the workload id resolved to ip through
// the agent's DNS server, and whether such a server tells the proxy
// (Deps.Names); policy.Conn.Unresolved and Record.DNSName come from it.
func (p *Proxy) resolvedNames(id workload.Identity, ip netip.Addr) ([]string, bool) {
	if p.deps.Names == nil || !ip.IsValid() {
		return nil, false
	}
	return p.deps.Names.NamesFor(id, ip.Unmap()), true
}

// setDNSName fills rec.DNSName, on a record of the proxy, with the name
// the workload resolved to rec.DstIP: rec.Host when it is one of them,
// else the first.
func (p *Proxy) setDNSName(rec *audit.Record) {
	if rec.DNSName != "" || rec.Kind == audit.KindDNS {
		return
	}
	names, _ := p.resolvedNames(rec.Workload, rec.DstIP)
	pickDNSName(rec, names)
}

func pickDNSName(rec *audit.Record, names []string) {
	if len(names) == 0 {
		return
	}
	rec.DNSName = names[0]
	if h := strings.TrimSuffix(strings.ToLower(rec.Host), "."); slices.Contains(names, h) {
		rec.DNSName = h
	}
}

// dnsNamesFor is how long a flow's requests reuse the names its workload
// resolved to their destination address (Record.DNSName): a lookup takes
// the DNS server's lock, and a flow's requests go to one address (a
// balanced group's, to a few). A name resolved meanwhile shows on the
// records up to this much later, as one that expired shows this much
// longer.
const dnsNamesFor = time.Second

// dnsNames is a flow's last lookup for its records: the names resolved
// to ip, good until until. Read-only once stored.
type dnsNames struct {
	ip    netip.Addr
	names []string
	until time.Time
}

// setDNSName is Proxy.setDNSName for a record of one of f's requests
// (rec.Time, its start, tells the memo's age), through f's memo.
func (f *flow) setDNSName(rec *audit.Record) {
	if rec.DNSName != "" || !rec.DstIP.IsValid() {
		return
	}
	m := f.dnsNames.Load()
	if m == nil || m.ip != rec.DstIP || !rec.Time.Before(m.until) || rec.Time.IsZero() {
		names, _ := f.p.resolvedNames(rec.Workload, rec.DstIP)
		m = &dnsNames{ip: rec.DstIP, names: names, until: rec.Time.Add(dnsNamesFor)}
		f.dnsNames.Store(m)
	}
	pickDNSName(rec, m.names)
}
