package mitm

import (
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
)

func balancePolicy(t *testing.T, groups string) policy.Decider {
	t.Helper()
	e, err := policy.Parse([]byte("version: 1\nssrf: {allowCIDRs: [127.0.0.0/8]}\nupstreams:\n"+groups), "p.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func named(name string, status int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(status)
		io.WriteString(w, name)
	})
}

// get sends a GET through the harness and returns "status body".
func get(t *testing.T, h *harness, url string) string {
	t.Helper()
	resp, err := h.client(false).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}

func TestBalanceWeightsRetriesAndEjection(t *testing.T) {
	a := startPlainUpstream(t, named("a", 200))
	b := startPlainUpstream(t, named("b", 503))
	dec := balancePolicy(t, fmt.Sprintf(`- name: pool
  hosts: [pool.test]
  targets: [{address: %q, weight: 1}, {address: %q, weight: 1}]
  passive: {consecutiveFailures: 2, ejectFor: 1h}
  retries: {attempts: 1, budget: 100}
`, a.addr, b.addr))
	h := newHarness(t, nil, dec)
	for i := range 6 {
		if got := get(t, h, "http://pool.test/x"); got != "200 a" {
			t.Fatalf("request %d: %q, want the 503 retried on a", i, got)
		}
	}
	// b failed twice (ejected), then every request went to a alone.
	var fromB int
	for _, r := range h.recs.all() {
		if r.Kind == audit.KindHTTP && r.UpstreamAddr != a.addr.String() {
			t.Errorf("record names upstream %q, want %s", r.UpstreamAddr, a.addr)
		}
	}
	for _, hl := range h.p.UpstreamHealth() {
		if hl.Target == b.addr.String() && hl.Healthy {
			fromB++
		}
	}
	if fromB != 0 {
		t.Fatalf("b still healthy after two 503s: %+v", h.p.UpstreamHealth())
	}
}

func TestBalanceNoHealthyAndGuard(t *testing.T) {
	dead := startPlainUpstream(t, named("x", 200))
	deadAddr := dead.addr.String()
	dead.Close()
	dec := balancePolicy(t, fmt.Sprintf(`- name: dead
  hosts: [dead.test]
  targets: [{address: %q}]
  passive: {consecutiveFailures: 1, ejectFor: 1h}
- name: meta
  hosts: [meta.test]
  targets: [{address: "169.254.169.254:80"}]
`, deadAddr))
	h := newHarness(t, nil, dec)
	if got := get(t, h, "http://dead.test/"); got[:3] != "503" {
		t.Fatalf("dead target: %q, want 503", got)
	}
	r := h.recs.wait(t, "dead record", func(r audit.Record) bool { return r.Host == "dead.test" })
	if r.Reason != audit.ReasonNoHealthyUpstream || r.Status != 503 {
		t.Fatalf("record %+v", r)
	}
	if got := get(t, h, "http://meta.test/"); got[:3] != "403" {
		t.Fatalf("metadata target: %q, want 403 from the guard", got)
	}
	r = h.recs.wait(t, "meta record", func(r audit.Record) bool { return r.Host == "meta.test" })
	if r.Decision != audit.DecisionDeny || r.Rule != "ssrf" {
		t.Fatalf("record %+v", r)
	}
}

// A retry is for a failed connect or a 5xx: the response header timeout
// bounds the request, not each try, so a try it ended is not retried on
// the group's other target, and that target, never tried, keeps its
// health.
func TestBalanceHeaderTimeoutNotRetried(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	slow := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	var fastHits atomic.Int64
	fast := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fastHits.Add(1)
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "fast")
	}))
	dec := balancePolicy(t, fmt.Sprintf(`- name: pool
  hosts: [pool.test]
  targets: [{address: %q, weight: 1}, {address: %q, weight: 1}]
  passive: {consecutiveFailures: 1, ejectFor: 1h}
  retries: {attempts: 1, budget: 100}
`, slow.addr, fast.addr))
	h := newHarness(t, nil, dec, func(c *config.Proxy, _ *Deps) { c.ResponseHeaderTimeout = config.Duration(200 * time.Millisecond) })
	for i := range 20 { // the first target is picked at random
		req, _ := http.NewRequest("GET", "http://pool.test/x", nil) // idempotent: retried on a 5xx
		before := fastHits.Load()
		resp, err := h.client(false).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusGatewayTimeout {
			if fastHits.Load() != before {
				t.Error("the timed-out try was retried on the other target")
			}
			for _, hl := range h.p.UpstreamHealth() {
				if hl.Target == fast.addr.String() && !hl.Healthy {
					t.Errorf("the target never tried was marked unhealthy: %+v", h.p.UpstreamHealth())
				}
			}
			return
		}
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	t.Fatal("no request went to the slow target first in 20")
}
