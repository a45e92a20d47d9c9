package policy

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock               { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }
func req(id workload.Identity, host string) *Request {
	return &Request{Conn: &Conn{Workload: id, Host: host, Port: 443, Addrs: public, TLS: true}, Method: "GET", Host: host, Path: "/"}
}

func parseWith(t *testing.T, src string, o Options) *Engine {
	t.Helper()
	e, err := ParseWith([]byte(src), "rl.yaml", o)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// step is one request and what the client must see.
type step struct {
	advance    time.Duration
	id         string // workload comm... as Name() uses cgroup, the cgroup
	host       string
	status     int // 0: allowed
	retryAfter string
	rateLimit  string
	extra      map[string]string // more headers; "" means absent
}

func runSteps(t *testing.T, e *Engine, c *clock, steps []step) {
	t.Helper()
	for i, s := range steps {
		c.add(s.advance)
		id := workload.Identity{Cgroup: "/w/" + s.id}
		if s.id == "" {
			id.Cgroup = "/w/a"
		}
		host := s.host
		if host == "" {
			host = "api.example"
		}
		d := e.Request(context.Background(), req(id, host))
		status := 0
		if d.Denied() {
			status = d.StatusCode()
		}
		if status != s.status {
			t.Fatalf("step %d: status %d (%s), want %d", i, status, d.Reason, s.status)
		}
		if s.status == 429 && (d.Reason != audit.ReasonRateLimited || d.Status != 429) {
			t.Fatalf("step %d: reason %q", i, d.Reason)
		}
		if got := d.Header.Get("Retry-After"); got != s.retryAfter {
			t.Fatalf("step %d: Retry-After %q, want %q", i, got, s.retryAfter)
		}
		if got := d.Header.Get("RateLimit"); got != s.rateLimit {
			t.Fatalf("step %d: RateLimit %q, want %q", i, got, s.rateLimit)
		}
		for k, v := range s.extra {
			if got := d.Header.Get(k); got != v {
				t.Fatalf("step %d: %s %q, want %q", i, k, got, v)
			}
		}
	}
}

func TestRateLimitMinute(t *testing.T) {
	c := newClock()
	e := parseWith(t, "version: 1\nrules: [{name: api, action: allow, rateLimit: {minute: 3}}]\n", Options{Now: c.now})
	pol := map[string]string{"RateLimit-Policy": `"api-minute";q=3;w=60`}
	runSteps(t, e, c, []step{
		{rateLimit: `"api-minute";r=2;t=20`, extra: pol},
		{rateLimit: `"api-minute";r=1;t=40`},
		{rateLimit: `"api-minute";r=0;t=60`},
		{status: 429, retryAfter: "20", rateLimit: `"api-minute";r=0;t=60`, extra: pol},
		{advance: 19500 * time.Millisecond, status: 429, retryAfter: "1", rateLimit: `"api-minute";r=0;t=41`},
		{advance: 500 * time.Millisecond, rateLimit: `"api-minute";r=0;t=60`},
		{id: "b", rateLimit: `"api-minute";r=2;t=20`}, // another workload has its own bucket
	})
}

func TestRateLimitBurstAndWindows(t *testing.T) {
	c := newClock()
	e := parseWith(t, "version: 1\ndefaults: {rateLimit: {second: 1, minute: 4, burst: 3, kongHeaders: true}}\n", Options{Now: c.now})
	runSteps(t, e, c, []step{
		{rateLimit: `"default-second";r=2;t=1, "default-minute";r=3;t=15`, extra: map[string]string{
			"X-RateLimit-Limit-Second": "1", "X-RateLimit-Remaining-Second": "2",
			"X-RateLimit-Limit-Minute": "4", "X-RateLimit-Remaining-Minute": "3",
			"RateLimit-Policy": `"default-second";q=1;w=1, "default-minute";q=4;w=60`}},
		{rateLimit: `"default-second";r=1;t=2, "default-minute";r=2;t=30`},
		{rateLimit: `"default-second";r=0;t=3, "default-minute";r=1;t=45`},
		{status: 429, retryAfter: "1", rateLimit: `"default-second";r=0;t=3, "default-minute";r=1;t=45`},
		{advance: time.Second, rateLimit: `"default-second";r=0;t=3, "default-minute";r=0;t=59`},
		// The second bucket refills, the minute bucket is empty: wait for it.
		{advance: 2 * time.Second, status: 429, retryAfter: "12", rateLimit: `"default-second";r=2;t=1, "default-minute";r=0;t=57`},
	})
}

func TestRateLimitBy(t *testing.T) {
	for _, tt := range []struct {
		by    string
		steps []step
	}{
		{"workload", []step{{id: "a", host: "x.example"}, {id: "a", host: "y.example", status: 429, retryAfter: "60"}, {id: "b", host: "x.example"}}},
		{"destination", []step{{id: "a", host: "x.example"}, {id: "b", host: "X.Example.", status: 429, retryAfter: "60"}, {id: "a", host: "y.example"}}},
		{"both", []step{{id: "a", host: "x.example"}, {id: "a", host: "y.example"}, {id: "b", host: "x.example"}, {id: "a", host: "x.example", status: 429, retryAfter: "60"}}},
	} {
		t.Run(tt.by, func(t *testing.T) {
			c := newClock()
			e := parseWith(t, fmt.Sprintf("version: 1\ndefaults: {rateLimit: {minute: 1, by: %s, hideClientHeaders: true}}\n", tt.by), Options{Now: c.now})
			runSteps(t, e, c, tt.steps)
		})
	}
}

func TestRateLimitExplicitClients(t *testing.T) {
	// In explicit-proxy mode only the client address is known: each
	// client IP is its own workload bucket.
	c := newClock()
	e := parseWith(t, "version: 1\ndefaults: {rateLimit: {minute: 1}}\n", Options{Now: c.now})
	a := workload.Identity{Client: netip.MustParseAddrPort("192.0.2.1:5000")}
	a2 := workload.Identity{Client: netip.MustParseAddrPort("192.0.2.1:5001")}
	b := workload.Identity{Client: netip.MustParseAddrPort("192.0.2.2:5000")}
	for i, tt := range []struct {
		id     workload.Identity
		denied bool
	}{{a, false}, {a2, true}, {b, false}} {
		if d := e.Request(context.Background(), req(tt.id, "h")); d.Denied() != tt.denied {
			t.Fatalf("request %d: denied=%v", i, d.Denied())
		}
	}
}

func TestRateLimitSurvivesReload(t *testing.T) {
	c := newClock()
	store := NewLimiters(0)
	src := "version: 1\nrules: [{name: api, action: allow, rateLimit: {minute: 2}}]\n"
	e1 := parseWith(t, src, Options{Now: c.now, Limiters: store})
	runSteps(t, e1, c, []step{{rateLimit: `"api-minute";r=1;t=30`}})
	e2 := parseWith(t, src, Options{Now: c.now, Limiters: store})
	runSteps(t, e2, c, []step{{rateLimit: `"api-minute";r=0;t=60`}, {status: 429, retryAfter: "30", rateLimit: `"api-minute";r=0;t=60`}})
	// A reload to a lower limit clips the bucket; a fresh store starts full.
	e3 := parseWith(t, "version: 1\nrules: [{name: api, action: allow, rateLimit: {minute: 1}}]\n", Options{Now: c.now, Limiters: store})
	runSteps(t, e3, c, []step{{status: 429, retryAfter: "60", rateLimit: `"api-minute";r=0;t=60`}})
	e4 := parseWith(t, src, Options{Now: c.now})
	runSteps(t, e4, c, []step{{rateLimit: `"api-minute";r=1;t=30`}})
}

func TestRateLimitInheritedAndAudit(t *testing.T) {
	c := newClock()
	e := parseWith(t, `
version: 1
defaults: {rateLimit: {minute: 2, hideClientHeaders: true}}
rules:
  - {name: a, action: allow, destinations: {hosts: [a.example]}}
  - {name: b, action: allow, mode: audit, destinations: {hosts: [b.example]}, rateLimit: {minute: 1}}
`, Options{Now: c.now})
	// Rule a inherits the default limit and shares the default buckets.
	runSteps(t, e, c, []step{{host: "a.example"}, {host: "other.example"}, {host: "a.example", status: 429, retryAfter: "30"}})
	// Rule b is in audit mode: over the limit it passes, marked WouldDeny.
	for i, want := range []bool{false, true} {
		d := e.Request(context.Background(), req(workload.Identity{Cgroup: "/w/a"}, "b.example"))
		if d.Denied() || d.WouldDeny != want || (want && (d.Reason != audit.ReasonRateLimited || d.Rule != "b")) || d.Header.Get("Retry-After") != "" {
			t.Fatalf("audit request %d: %+v", i, d)
		}
	}
}

func TestLimitersBounded(t *testing.T) {
	c := newClock()
	store := NewLimiters(3)
	e := parseWith(t, "version: 1\ndefaults: {rateLimit: {minute: 1}}\n", Options{Now: c.now, Limiters: store})
	for i := range 10 {
		e.Request(context.Background(), req(workload.Identity{Cgroup: fmt.Sprintf("/w/%d", i)}, "h"))
	}
	if n := store.Len(); n != 3 {
		t.Fatalf("%d buckets kept, want 3", n)
	}
	// The most recent key is still limited; the evicted first one starts over.
	if d := e.Request(context.Background(), req(workload.Identity{Cgroup: "/w/9"}, "h")); !d.Denied() {
		t.Fatal("recent key must still be limited")
	}
	if d := e.Request(context.Background(), req(workload.Identity{Cgroup: "/w/0"}, "h")); d.Denied() {
		t.Fatal("evicted key starts with a full bucket")
	}
}

func BenchmarkRequestRateLimited(b *testing.B) {
	e, err := Parse([]byte("version: 1\ndefaults: {rateLimit: {second: 1000000000}}\nrules: [{name: d, action: deny, destinations: {paths: [/admin]}}]\n"), "b.yaml")
	if err != nil {
		b.Fatal(err)
	}
	r := req(workload.Identity{Cgroup: "/w/a"}, "api.example")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		e.Request(ctx, r)
	}
}
