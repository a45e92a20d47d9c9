package agent

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/miekg/dns"
	"github.com/sluicehq/sluice/workload"
)

// The DNS server's two bounded memories: answers by question (dnsCache,
// for their TTL) and, per workload, the names that resolved to each
// address (dnsNames, for the answer's TTL).

const (
	// maxCacheTTL caps how long an answer is cached, whatever its TTL.
	maxCacheTTL = time.Hour
	// negativeTTL is how long an answer without a TTL to go by (no
	// records, no SOA) is cached.
	negativeTTL = 30 * time.Second
	// minBindingTTL keeps a binding a little longer than a very short
	// TTL, for the connect that follows the lookup.
	minBindingTTL = 30 * time.Second
	// maxBindingTTL caps a binding's life.
	maxBindingTTL = time.Hour
	// maxNamesPerAddr bounds the names kept for one {workload, address}.
	maxNamesPerAddr = 16
)

// cacheKey identifies a question in the cache.
func cacheKey(q dns.Question, cd bool) string {
	k := strings.ToLower(q.Name) + "/" + dns.TypeToString[q.Qtype] + "/" + dns.ClassToString[q.Qclass]
	if cd {
		k += "/cd"
	}
	return k
}

type cached struct {
	msg     *dns.Msg
	stored  time.Time
	expires time.Time
}

// dnsCache holds upstream answers for their TTL (the smallest in the
// answer, capped), in an LRU of fixed size.
type dnsCache struct {
	lru *lru.Cache[string, cached]
}

func newDNSCache(size int) *dnsCache {
	c, _ := lru.New[string, cached](size) // size > 0
	return &dnsCache{lru: c}
}

// get returns a copy of the cached answer with its TTLs aged.
func (c *dnsCache) get(key string, now time.Time) (*dns.Msg, bool) {
	e, ok := c.lru.Get(key)
	if !ok {
		return nil, false
	}
	if !now.Before(e.expires) {
		c.lru.Remove(key)
		return nil, false
	}
	m := e.msg.Copy()
	age := uint32(now.Sub(e.stored) / time.Second)
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT {
				continue
			}
			h.Ttl = max(h.Ttl, age) - age
		}
	}
	return m, true
}

func (c *dnsCache) put(key string, m *dns.Msg, now time.Time) {
	ttl := msgTTL(m)
	if ttl <= 0 {
		return
	}
	c.lru.Add(key, cached{msg: m.Copy(), stored: now, expires: now.Add(ttl)})
}

// msgTTL is the smallest TTL of the answer and authority records, capped
// at maxCacheTTL; negativeTTL when there are none.
func msgTTL(m *dns.Msg) time.Duration {
	ttl := maxCacheTTL
	n := 0
	for _, sec := range [][]dns.RR{m.Answer, m.Ns} {
		for _, rr := range sec {
			n++
			ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
		}
	}
	if n == 0 {
		return negativeTTL
	}
	return ttl
}

// bindingKey is one workload's view of one address.
type bindingKey struct {
	workload workload.StateKey
	addr     netip.Addr
}

// dnsNames remembers, per workload and address, the names that resolved
// to it and until when; an LRU bounds the pairs, maxNamesPerAddr the
// names of a pair.
type dnsNames struct {
	mu  sync.Mutex // makes read-modify-write of one entry atomic
	lru *lru.Cache[bindingKey, map[string]time.Time]
}

func newDNSNames(size int) *dnsNames {
	c, _ := lru.New[bindingKey, map[string]time.Time](size) // size > 0
	return &dnsNames{lru: c}
}

// learn binds name (and the owner names of the address records, the end
// of a CNAME chain) to the A and AAAA addresses of m for workload, and
// returns those addresses.
func (n *dnsNames) learn(wk workload.StateKey, name string, m *dns.Msg, now time.Time) []netip.Addr {
	var out []netip.Addr
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, rr := range m.Answer {
		var a netip.Addr
		switch v := rr.(type) {
		case *dns.A:
			a, _ = netip.AddrFromSlice(v.A.To4())
		case *dns.AAAA:
			a, _ = netip.AddrFromSlice(v.AAAA.To16())
		default:
			continue
		}
		if !a.IsValid() {
			continue
		}
		a = a.Unmap()
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
		ttl := min(max(time.Duration(rr.Header().Ttl)*time.Second, minBindingTTL), maxBindingTTL)
		k := bindingKey{wk, a}
		names, _ := n.lru.Get(k)
		fresh := make(map[string]time.Time, len(names)+2)
		for nm, exp := range names {
			if now.Before(exp) {
				fresh[nm] = exp
			}
		}
		for _, nm := range []string{name, strings.TrimSuffix(strings.ToLower(rr.Header().Name), ".")} {
			if _, ok := fresh[nm]; ok || len(fresh) < maxNamesPerAddr {
				fresh[nm] = now.Add(ttl)
			}
		}
		n.lru.Add(k, fresh)
	}
	return out
}

// lookup returns the unexpired names bound to addr for workload, sorted.
func (n *dnsNames) lookup(wk workload.StateKey, addr netip.Addr, now time.Time) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	names, ok := n.lru.Get(bindingKey{wk, addr})
	if !ok {
		return nil
	}
	var out []string
	for nm, exp := range names {
		if now.Before(exp) {
			out = append(out, nm)
		}
	}
	slices.Sort(out)
	return out
}
