package mitm

import (
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/sluicehq/sluice/audit"
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
