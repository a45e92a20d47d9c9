package agent

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/sluicehq/sluice/audit"
)

func TestLabelReason(t *testing.T) {
	for _, tt := range []struct {
		name string
		want string
	}{
		{"api.example.com", ""},
		{"ec2-198-51-100-7.compute-1.amazonaws.com", ""},
		{"storage-account-for-the-data-platform.blob.core.windows.net", ""},
		{strings.Repeat("a", 53) + ".example.com", audit.ReasonDNSExfilLabelLength},
		{"mzxw6ytboi2dqnzrgeyt4mjqha3dmmzt.x.example", audit.ReasonDNSExfilEntropy}, // base32
		{"4f1c9a7be2d03586.example.com", ""},                                        // 16 hex: shorter than the entropy floor
		{"q8Zk3VnR7pWx2LmT9bYc4HdJ.example.com", audit.ReasonDNSExfilEntropy},
		{"", ""},
	} {
		if got := labelReason(tt.name, 52, 4.0, 24); got != tt.want {
			t.Errorf("labelReason(%q) = %q (entropy %.2f), want %q", tt.name, got, labelEntropy(strings.Split(tt.name, ".")[0]), tt.want)
		}
	}
}

func TestParentDomain(t *testing.T) {
	for name, want := range map[string]string{
		"a.b.example.com":   "example.com",
		"x.y.example.co.uk": "example.co.uk",
		"example.com":       "example.com",
		"com":               "com",
		"a.b.test":          "b.test",
	} {
		if got := parentDomain(name); got != want {
			t.Errorf("parentDomain(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestExfilGuard(t *testing.T) {
	now := time.Unix(1000, 0)
	t.Run("rate", func(t *testing.T) {
		g := newExfilGuard(ExfilOptions{QueriesPerSecond: 5})
		flagged := 0
		for range 20 {
			if g.check("w1", "api.example.com", now) != "" {
				flagged++
			}
		}
		if flagged != 10 { // a burst of 2x the rate passes
			t.Errorf("%d of 20 queries at once flagged, want 10", flagged)
		}
		if r := g.check("w2", "api.example.com", now); r != "" {
			t.Errorf("another workload flagged: %q", r)
		}
		if r := g.check("w1", "api.example.com", now.Add(time.Second)); r != "" {
			t.Errorf("a query a second later flagged: %q", r)
		}
	})
	t.Run("unique subdomains", func(t *testing.T) {
		g := newExfilGuard(ExfilOptions{UniqueSubdomainsPerMinute: 3})
		var got []string
		for i := range 5 {
			got = append(got, g.check("w1", fmt.Sprintf("c%d.tunnel.example", i), now))
		}
		want := []string{"", "", "", audit.ReasonDNSExfilSubdomains, audit.ReasonDNSExfilSubdomains}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("flags %q, want %q", got, want)
		}
		if r := g.check("w1", "c0.other.example", now); r != "" {
			t.Errorf("another parent flagged: %q", r)
		}
		if r := g.check("w1", "c9.tunnel.example", now.Add(time.Minute)); r != "" {
			t.Errorf("a new minute flagged: %q", r)
		}
		w, _ := g.parents.Get("w1\x00tunnel.example")
		if w == nil || len(w.names) > 4 {
			t.Errorf("window holds %v, want at most limit+1 names", w)
		}
	})
	t.Run("bounded", func(t *testing.T) {
		g := newExfilGuard(ExfilOptions{QueriesPerSecond: 1, UniqueSubdomainsPerMinute: 1, TrackSize: 8})
		for i := range 100 {
			g.check(fmt.Sprintf("w%d", i), fmt.Sprintf("x%d.p%d.example", i, i), now)
		}
		if g.buckets.Len() > 8 || g.parents.Len() > 8 {
			t.Errorf("tracked %d workloads and %d parents, want at most 8", g.buckets.Len(), g.parents.Len())
		}
	})
}

// A long-label query is recorded would_deny and answered in audit mode,
// denied without asking the upstream in enforce mode.
func TestDNSExfilModes(t *testing.T) {
	long := strings.Repeat("a", 60) + ".api.example."
	for _, enforce := range []bool{false, true} {
		up := startUpstream(t)
		_, addr, recs := startDNS(t, up, "", func(o *DNSOptions) {
			o.Exfil = &ExfilOptions{Enforce: enforce, MaxLabelLength: 52}
		})
		r := ask(t, "udp", addr, long, dns.TypeA, 0)
		rec := recs.last(t)
		if rec.Rule != RuleExfil || rec.Reason != audit.ReasonDNSExfilLabelLength {
			t.Errorf("enforce %v: record %+v", enforce, rec)
		}
		switch {
		case enforce && (rec.Decision != audit.DecisionDeny || r.Rcode != dns.RcodeNameError || up.asked.Load() != 0):
			t.Errorf("enforce: %s, rcode %d, upstream asked %d", rec.Decision, r.Rcode, up.asked.Load())
		case !enforce && (rec.Decision != audit.DecisionWouldDeny || up.asked.Load() != 1):
			t.Errorf("audit: %s, upstream asked %d", rec.Decision, up.asked.Load())
		}
		ask(t, "udp", addr, "api.example.", dns.TypeA, 0)
		if rec := recs.last(t); rec.Decision != audit.DecisionAllow {
			t.Errorf("enforce %v: a plain query %+v", enforce, rec)
		}
	}
}

func FuzzExfilCheck(f *testing.F) {
	for _, s := range []string{"api.example.com", "a..b", ".", strings.Repeat("z", 300), "x.co.uk", "\xff\x00.com"} {
		f.Add(s)
	}
	g := newExfilGuard(ExfilOptions{QueriesPerSecond: 10, MaxLabelLength: 52, MaxLabelEntropy: 4, EntropyMinLength: 24, UniqueSubdomainsPerMinute: 5, TrackSize: 16})
	now := time.Unix(0, 0)
	f.Fuzz(func(t *testing.T, name string) {
		_ = g.check("w", name, now)
		if h := labelEntropy(name); h < 0 || h > 8 {
			t.Fatalf("entropy %v of %q", h, name)
		}
	})
}
