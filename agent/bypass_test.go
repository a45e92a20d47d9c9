package agent

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestHostMatcher(t *testing.T) {
	m := newHostMatcher([]string{"api.example.com", "*.internal.example", "Kubernetes.Default.SVC."})
	tests := []struct {
		name string
		want bool
	}{
		{"api.example.com", true},
		{"API.example.com.", true},
		{"www.example.com", false},
		{"example.com", false},
		{"x.api.example.com", false}, // an exact name does not cover its subdomains
		{"a.internal.example", true},
		{"a.b.internal.example", true},
		{"internal.example", false}, // "*.suffix" does not cover suffix itself
		{"xinternal.example", false},
		{"kubernetes.default.svc", true},
		{"", false},
		{".", false},
	}
	for _, tt := range tests {
		if got := m.match(tt.name); got != tt.want {
			t.Errorf("match(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
	if got := m.names(); !slices.Contains(got, "api.example.com") || !slices.Contains(got, "kubernetes.default.svc") || len(got) != 2 {
		t.Errorf("names %v: want the two exact names, lower case", got)
	}
	if !newHostMatcher(nil).empty() || m.empty() {
		t.Error("empty")
	}
}

// fakeTrie stands in for the kernel's bypass entries.
type fakeTrie struct {
	m       map[netip.Addr]bool
	failDel bool
}

func (f *fakeTrie) put(a netip.Addr) error { f.m[a] = true; return nil }
func (f *fakeTrie) del(a netip.Addr) error {
	if f.failDel {
		return errors.New("no")
	}
	if !f.m[a] {
		return errors.New("not there")
	}
	delete(f.m, a)
	return nil
}
func (f *fakeTrie) keys() []string {
	var out []string
	for a := range f.m {
		out = append(out, a.String())
	}
	slices.Sort(out)
	return out
}

func newTestTable(max int) (*bypassTable, *fakeTrie) {
	f := &fakeTrie{m: map[netip.Addr]bool{}}
	deny := []netip.Prefix{netip.MustParsePrefix("169.254.169.254/32"), netip.MustParsePrefix("10.9.0.0/16")}
	bypass := []netip.Prefix{netip.MustParsePrefix("10.96.0.1/32"), netip.MustParsePrefix("fd00:1::/64")}
	return newBypassTable(max, deny, bypass, f.put, f.del), f
}

func TestBypassTableAddExpire(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	ip := netip.MustParseAddr
	tests := []struct {
		name    string
		addr    string
		ttl     time.Duration
		learned bool
		gone    time.Duration // how long it stays: expired at t0+gone, not before
	}{
		{"a public address for its ttl", "198.51.100.7", 5 * time.Minute, true, 5 * time.Minute},
		{"a short ttl is raised to the minimum", "198.51.100.8", 0, true, bypassMinTTL},
		{"a long ttl is capped", "198.51.100.9", 48 * time.Hour, true, bypassMaxTTL},
		{"ipv6", "2001:db8::1", time.Minute, true, time.Minute},
		{"ipv4-mapped is ipv4", "::ffff:198.51.100.10", time.Minute, true, time.Minute},
		{"in denyCIDRs: never bypassed", "169.254.169.254", time.Minute, false, 0},
		{"inside a denied range: never bypassed", "10.9.3.4", time.Minute, false, 0},
		{"listed in bypassCIDRs: not ours to write or remove", "10.96.0.1", time.Minute, false, 0},
		{"inside a bypassed range: already bypassed", "fd00:1::5", time.Minute, false, 0},
		{"unspecified", "0.0.0.0", time.Minute, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb, f := newTestTable(10)
			a := ip(tt.addr)
			ok, err := tb.add(a, "h.example", tt.ttl, t0)
			if err != nil || ok != tt.learned {
				t.Fatalf("add = %v, %v; want %v", ok, err, tt.learned)
			}
			if !tt.learned {
				if len(f.m) != 0 || tb.len() != 0 {
					t.Fatalf("trie %v, want nothing written", f.keys())
				}
				return
			}
			if h, ok := tb.host(a); !ok || h != "h.example" {
				t.Errorf("host(%v) = %q, %v", a, h, ok)
			}
			if gone, _ := tb.expire(t0.Add(tt.gone - time.Second)); len(gone) != 0 || len(f.m) != 1 {
				t.Errorf("expired early: %v", gone)
			}
			if gone, _ := tb.expire(t0.Add(tt.gone)); len(gone) != 1 || len(f.m) != 0 || tb.len() != 0 {
				t.Errorf("not expired at its ttl: gone %v, trie %v", gone, f.keys())
			}
			if _, ok := tb.host(a); ok {
				t.Error("host known after expiry")
			}
		})
	}
}

func TestBypassTableRefreshBoundAndFailure(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	tb, f := newTestTable(2)
	a, b, c := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("198.51.100.3")
	mustAdd := func(x netip.Addr, ttl time.Duration, now time.Time) {
		t.Helper()
		if ok, err := tb.add(x, "h", ttl, now); !ok || err != nil {
			t.Fatalf("add %v: %v %v", x, ok, err)
		}
	}
	mustAdd(a, 10*time.Minute, t0)
	mustAdd(b, 2*time.Minute, t0)
	// A later answer extends, an earlier one does not shorten.
	mustAdd(b, time.Minute, t0)
	mustAdd(b, 5*time.Minute, t0)
	// Full: the entry expiring soonest (b, now at 5m) makes room.
	mustAdd(c, time.Hour, t0)
	if got := f.keys(); !slices.Equal(got, []string{"198.51.100.1", "198.51.100.3"}) {
		t.Fatalf("trie %v after eviction", got)
	}
	// A failed removal keeps the entry, to be tried again.
	f.failDel = true
	if gone, err := tb.expire(t0.Add(11 * time.Minute)); err == nil || len(gone) != 0 || tb.len() != 2 {
		t.Fatalf("expire with failing delete: %v %v, %d entries", gone, err, tb.len())
	}
	f.failDel = false
	if gone, err := tb.expire(t0.Add(11 * time.Minute)); err != nil || !slices.Equal(gone, []netip.Addr{a}) {
		t.Fatalf("expire: %v %v", gone, err)
	}
}

func TestBypassTableRefresh(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	tb, f := newTestTable(100)
	answers := map[string][]netip.Addr{
		"api.example.com": {netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8::1")},
		"meta.example":    {netip.MustParseAddr("169.254.169.254")}, // denied: never bypassed
	}
	lookup := func(_ context.Context, h string) ([]netip.Addr, error) {
		if a, ok := answers[h]; ok {
			return a, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: h, IsNotFound: true}
	}
	err := tb.refresh(context.Background(), []string{"api.example.com", "meta.example", "gone.example"}, lookup, t0)
	if err == nil {
		t.Error("a name that does not resolve is reported")
	}
	if got := f.keys(); !slices.Equal(got, []string{"198.51.100.1", "2001:db8::1"}) {
		t.Fatalf("trie %v", got)
	}
	// The name moves: the old address leaves once it is not refreshed.
	answers["api.example.com"] = []netip.Addr{netip.MustParseAddr("198.51.100.2")}
	for now := t0.Add(bypassResolveEvery); now.Before(t0.Add(bypassResolveTTL + bypassResolveEvery)); now = now.Add(bypassResolveEvery) {
		_ = tb.refresh(context.Background(), []string{"api.example.com"}, lookup, now)
		_, _ = tb.expire(now)
	}
	if got := f.keys(); !slices.Equal(got, []string{"198.51.100.2"}) {
		t.Fatalf("trie %v after the name moved, want only its new address", got)
	}
}

func TestBypassLearnAnswer(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	tb, f := newTestTable(100)
	m := new(dns.Msg)
	m.SetQuestion("api.example.com.", dns.TypeA)
	m.Response = true
	m.Answer = []dns.RR{
		&dns.CNAME{Hdr: dns.RR_Header{Name: "api.example.com.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 300}, Target: "edge.cdn.example."},
		&dns.A{Hdr: dns.RR_Header{Name: "edge.cdn.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 120}, A: net.ParseIP("198.51.100.1")},
		&dns.A{Hdr: dns.RR_Header{Name: "edge.cdn.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 120}, A: net.ParseIP("10.9.1.1")}, // denied
		&dns.AAAA{Hdr: dns.RR_Header{Name: "edge.cdn.example.", Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 60}, AAAA: net.ParseIP("2001:db8::1")},
	}
	got, err := tb.learnAnswer("api.example.com", m, t0)
	if err != nil || len(got) != 2 {
		t.Fatalf("learned %v, %v", got, err)
	}
	if keys := f.keys(); !slices.Equal(keys, []string{"198.51.100.1", "2001:db8::1"}) {
		t.Fatalf("trie %v", keys)
	}
	// Each for its own TTL.
	if gone, _ := tb.expire(t0.Add(60 * time.Second)); !slices.Equal(gone, []netip.Addr{netip.MustParseAddr("2001:db8::1")}) {
		t.Errorf("at 60s expired %v", gone)
	}
	nx := new(dns.Msg)
	nx.SetRcode(m, dns.RcodeNameError)
	nx.Answer = m.Answer
	if got, _ := tb.learnAnswer("api.example.com", nx, t0); len(got) != 0 {
		t.Errorf("learned %v from an NXDOMAIN", got)
	}
}
