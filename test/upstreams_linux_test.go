package test

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// groupTarget is one target of an upstream group in a test namespace: it
// answers its name, or 503 while failing is set, and can be stopped and
// started again.
type groupTarget struct {
	name    string
	host    *Host
	addr    netip.AddrPort
	failing atomic.Bool
	failed  atomic.Int64 // requests answered 503
	srv     *http.Server
}

func (g *groupTarget) start(t *testing.T) {
	t.Helper()
	ln := g.host.Listen(t, g.addr)
	g.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.failing.Load() && r.URL.Path != "/healthz" {
			g.failed.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, "failing "+g.name)
			return
		}
		fmt.Fprint(w, g.name)
	})}
	go func() { _ = g.srv.Serve(ln) }()
	t.Cleanup(func() { g.srv.Close() })
}

func TestProxyUpstreamGroup(t *testing.T) {
	curl := RequireTool(t, "curl")
	RequireE2E(t)
	tp := NewTopology(t, 2)
	a := &groupTarget{name: "a", host: tp.Hosts[0], addr: netip.AddrPortFrom(tp.Hosts[0].IP4, 80)}
	b := &groupTarget{name: "b", host: tp.Hosts[1], addr: netip.AddrPortFrom(tp.Hosts[1].IP4, 80)}
	a.start(t)
	b.start(t)
	dir := t.TempDir()
	cfg, pol := filepath.Join(dir, "config.yaml"), filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("ca:\n  dir: %s\n", filepath.Join(dir, "ca"))), 0o600); err != nil {
		t.Fatal(err)
	}
	// The group serves a's address: requests for it are balanced over a
	// and b, weighted 3:1.
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
ssrf:
  allowCIDRs: ["198.18.0.0/15"]
upstreams:
- name: pool
  hosts: [%q]
  targets: [{address: %q, weight: 3}, {address: %q, weight: 1}]
  healthCheck: {http: /healthz, interval: 300ms, healthy: 1, unhealthy: 1}
  passive: {consecutiveFailures: 2, ejectFor: 1h}
  retries: {attempts: 1, budget: 100}
`, a.addr.Addr(), a.addr, b.addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, logs := startProxy(t, "--config", cfg, "--policy", pol, "--audit-log", filepath.Join(dir, "audit.jsonl"))

	// picks sends n GETs and lists the answers.
	picks := func(n int) string {
		t.Helper()
		var out []string
		for range n {
			b, err := exec.Command(curl, "-sS", "--proxy", "http://"+addr, "-w", " %{http_code}", "http://"+a.addr.Addr().String()+"/who").CombinedOutput()
			if err != nil {
				t.Fatalf("curl: %v: %s\nproxy: %s", err, b, logs.String())
			}
			out = append(out, string(b))
		}
		return strings.Join(out, ",")
	}
	count := func(s, name string) int {
		n := 0
		for _, x := range strings.Split(s, ",") {
			if x == name+" 200" {
				n++
			}
		}
		return n
	}
	// eventually waits for n GETs to give want.
	eventually := func(what string, n int, ok func(string) bool) {
		t.Helper()
		var got string
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if got = picks(n); ok(got) {
				return
			}
		}
		t.Fatalf("%s: last answers %s\nproxy: %s", what, got, logs.String())
	}

	if got := picks(8); count(got, "a") != 6 || count(got, "b") != 2 {
		t.Fatalf("weighted 3:1 over 8 requests: %s", got)
	}
	// b stopped: the active check takes it out, then brings it back.
	b.srv.Close()
	time.Sleep(time.Second)
	if got := picks(8); count(got, "a") != 8 {
		t.Fatalf("with b stopped: %s", got)
	}
	b.start(t)
	eventually("b restored by the active check", 8, func(s string) bool { return count(s, "b") == 2 && count(s, "a") == 6 })

	// b answers 503: every GET is retried on a, and two failures in a row
	// eject b.
	b.failing.Store(true)
	if got := picks(12); count(got, "a") != 12 {
		t.Fatalf("with b failing, GETs retried on a: %s", got)
	}
	if n := b.failed.Load(); n != 2 {
		t.Fatalf("b answered %d requests with 503, want 2 before passive ejection", n)
	}
	log, err := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), `"upstream_addr":"`+a.addr.String()+`"`) || !strings.Contains(string(log), `"upstream_addr":"`+b.addr.String()+`"`) {
		t.Fatalf("audit records do not name both targets:\n%s", log)
	}
}
