package policy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy/policytest"
	"github.com/sluicehq/sluice/workload"
)

func redisPolicy(addr string, faultTolerant bool) string {
	return fmt.Sprintf(`version: 1
rules:
  - name: shared
    action: allow
    rateLimit: {minute: 3, by: destination, policy: redis, redis: {addr: %q, timeout: 2s}, faultTolerant: %v}
`, addr, faultTolerant)
}

// TestRedisSharedAcrossEngines: two engines with their own stores (two
// proxies) share one limit through Redis.
func TestRedisSharedAcrossEngines(t *testing.T) {
	r := policytest.StartRedis(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	a := parseWith(t, redisPolicy(r.Addr, true), Options{Limiters: NewLimiters(0), Log: quiet})
	b := parseWith(t, redisPolicy(r.Addr, true), Options{Limiters: NewLimiters(0), Log: quiet})
	t.Cleanup(func() { a.Limiters().Close(); b.Limiters().Close() })
	id := workload.Identity{Cgroup: "/w/a"}
	var got []string
	for i, e := range []*Engine{a, b, a, b, a} {
		d := e.Request(context.Background(), req(id, "api.example"))
		s := "allow"
		if d.Denied() {
			s = fmt.Sprintf("%d %s retry=%s", d.StatusCode(), d.Reason, d.Header.Get("Retry-After"))
		}
		got = append(got, s)
		if i == 0 && d.Header.Get("RateLimit-Policy") != `"shared-minute";q=3;w=60` {
			t.Fatalf("RateLimit-Policy %q", d.Header.Get("RateLimit-Policy"))
		}
	}
	want := []string{"allow", "allow", "allow", "429 rate limit exceeded retry=20", "429 rate limit exceeded retry=20"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	// Another destination has its own bucket.
	if d := b.Request(context.Background(), req(id, "other.example")); d.Denied() {
		t.Fatal("other destination limited")
	}
	if a.Limiters().Faults()+b.Limiters().Faults() != 0 {
		t.Fatal("faults counted with Redis up")
	}
}

// TestRedisDown: Redis stops mid-test; faultTolerant decides.
func TestRedisDown(t *testing.T) {
	for _, tt := range []struct {
		faultTolerant bool
		denied        bool
		status        int
		reason        string
	}{
		{true, false, 0, audit.ReasonLimiterDownPass},
		{false, true, 503, audit.ReasonLimiterDown},
	} {
		t.Run(fmt.Sprint("faultTolerant=", tt.faultTolerant), func(t *testing.T) {
			r := policytest.StartRedis(t)
			e := parseWith(t, redisPolicy(r.Addr, tt.faultTolerant), Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
			t.Cleanup(func() { e.Limiters().Close() })
			id := workload.Identity{Cgroup: "/w/a"}
			if d := e.Request(context.Background(), req(id, "api.example")); d.Denied() || d.Reason != audit.ReasonAllowedByRule {
				t.Fatalf("with Redis up: %+v", d)
			}
			r.Stop()
			for i := range 3 {
				d := e.Request(context.Background(), req(id, "api.example"))
				if d.Denied() != tt.denied || d.Reason != tt.reason || (tt.denied && d.StatusCode() != tt.status) {
					t.Fatalf("request %d with Redis down: denied=%v status=%d reason=%q", i, d.Denied(), d.StatusCode(), d.Reason)
				}
			}
			if n := e.Limiters().Faults(); n != 3 {
				t.Fatalf("faults %d, want 3", n)
			}
		})
	}
}
