package mitm

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// namesResolver puts denied.test on 127.0.0.2 and api.test on 127.0.0.1.
var namesResolver = mapResolver{
	"api.test":    loopback,
	"denied.test": {netip.MustParseAddr("127.0.0.2")},
}

// startUpstreamAt serves TLS for the names on ip (a loopback address).
func startUpstreamAt(t *testing.T, tca *testCA, ip string, names ...string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "reached %s", ip)
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{tca.leaf(t, append(names, ip)...)}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(ln.Addr().String())
}

// The attacker's moves against a hostname deny, with TLS that names no
// host (no SNI, or an IP as SNI) and requests without Host or with a Host
// that does not go where the connection goes: none reaches denied.test.
func TestNoSNIOrNoHostCannotDodgeHostRules(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	api := startUpstreamAt(t, tca, "127.0.0.1", "api.test")
	denied := startUpstreamAt(t, tca, "127.0.0.2", "denied.test")
	e, err := policy.Parse([]byte(`version: 1
ssrf: {allowCIDRs: [127.0.0.0/8]}
rules:
  - name: no-denied
    destinations: {hosts: [denied.test]}
    action: deny
`), "test-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, tca, e, loopbackOnly, func(_ *config.Proxy, d *Deps) {
		d.Policy = &policy.Current{}
		d.Policy.Store(e)
		d.Resolver = namesResolver
	})
	for _, tc := range []struct {
		name   string
		to     netip.AddrPort
		sni    string // "" sends none
		head   string // request line and headers
		status int    // 0: the TLS connection is refused
		reason string
	}{
		{name: "no SNI, Host names the allowed host at its address", to: api, head: "GET /ok HTTP/1.1\r\nHost: api.test\r\n", status: 200},
		{name: "no SNI, Host names denied.test at another address: misdirected", to: api, head: "GET /front HTTP/1.1\r\nHost: denied.test\r\n",
			status: 421, reason: audit.ReasonMisdirected},
		{name: "no SNI to denied.test's address", to: denied, head: "GET /direct HTTP/1.1\r\nHost: denied.test\r\n"},
		{name: "no SNI and no Host to denied.test's address", to: denied, head: "GET /nohost HTTP/1.0\r\n"},
		{name: "an IP as SNI to denied.test's address", to: denied, sni: "127.0.0.2", head: "GET /ipsni HTTP/1.1\r\nHost: 127.0.0.2\r\n"},
		{name: "no SNI, no Host to the allowed address", to: api, head: "GET /ok-nohost HTTP/1.0\r\n", status: 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", h.url.Host, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", tc.to, tc.to)
			br := bufio.NewReader(c)
			if resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
				t.Fatalf("CONNECT: %v %v", resp, err)
			}
			tc2 := tls.Client(newBufferedConn(c, br), &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true})
			if err := tc2.Handshake(); err != nil {
				if tc.status == 0 {
					return // refused before any request: nothing reached the upstream
				}
				t.Fatalf("handshake: %v", err)
			}
			fmt.Fprintf(tc2, "%sConnection: close\r\n\r\n", tc.head)
			resp, err := http.ReadResponse(bufio.NewReader(tc2), nil)
			switch {
			case tc.status == 0 && err == nil:
				t.Fatalf("got %d from the upstream at %s; want the connection refused", resp.StatusCode, tc.to)
			case tc.status == 0:
				return
			case err != nil:
				t.Fatal(err)
			case resp.StatusCode != tc.status:
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.reason != "" {
				rec := h.recs.wait(t, tc.name, func(r audit.Record) bool { return r.Status == tc.status && r.Reason == tc.reason })
				if rec.Decision != audit.DecisionDeny {
					t.Errorf("record %+v", rec)
				}
			}
		})
	}
	// Every refusal left a record naming the rule.
	rec := h.recs.wait(t, "a refused connection", func(r audit.Record) bool { return r.Kind == audit.KindL4 && r.Rule == "no-denied" })
	if rec.Decision != audit.DecisionDeny {
		t.Errorf("record %+v", rec)
	}
}

// fixedNames is what a DNS server saw one workload resolve.
type fixedNames map[netip.Addr][]string

func (f fixedNames) NamesFor(_ workload.Identity, a netip.Addr) []string { return f[a] }

// A name the workload itself resolved (through the agent's DNS server) to
// the address it dials binds a destination that names nothing: a deny by
// that name holds for plain HTTP dialled by address, even where the proxy's
// own lookups know nothing of the name.
func TestNamesTheWorkloadResolved(t *testing.T) {
	var reached atomic.Int64
	up := startPlainUpstream(t, countingHandler(&reached))
	e, err := policy.Parse([]byte(`version: 1
ssrf: {allowCIDRs: [127.0.0.0/8]}
rules:
  - name: no-evil
    destinations: {hosts: [evil.test]}
    action: deny
`), "test-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, nil, e, func(_ *config.Proxy, d *Deps) {
		d.Policy = &policy.Current{}
		d.Policy.Store(e)
		d.Resolver = mapResolver{} // the proxy's own lookups find nothing
		d.Names = fixedNames{up.addr.Addr(): {"Evil.Test."}}
	})
	c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 9})
	resp, body := rawRequest(t, c, "GET /x HTTP/1.0\r\n\r\n")
	if resp.StatusCode != 403 || !strings.Contains(body, "no-evil") || reached.Load() != 0 {
		t.Fatalf("%d %s, upstream reached %d times; want the deny by the resolved name", resp.StatusCode, body, reached.Load())
	}
}

// Records carry the name the workload resolved to the dialed address
// (dns_name); with requireResolved, an address it did not resolve is
// refused before the upstream is reached.
func TestResolvedNamesAndRequireResolved(t *testing.T) {
	var reached atomic.Int64
	up := startPlainUpstream(t, countingHandler(&reached))
	e, err := policy.Parse([]byte("version: 1\nssrf: {allowCIDRs: [127.0.0.0/8]}\nresolution: {requireResolved: true}\n"), "test-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		names  fixedNames
		status int
	}{
		{"resolved", fixedNames{up.addr.Addr(): {"api.test"}}, 200},
		{"unresolved", fixedNames{}, 403},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := reached.Load()
			h := newHarness(t, nil, e, func(_ *config.Proxy, d *Deps) {
				d.Policy = &policy.Current{}
				d.Policy.Store(e)
				d.Resolver = mapResolver{}
				d.Names = tt.names
			})
			c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 9})
			resp, body := rawRequest(t, c, "GET /x HTTP/1.0\r\n\r\n")
			if resp.StatusCode != tt.status {
				t.Fatalf("%d %s, want %d", resp.StatusCode, body, tt.status)
			}
			if tt.status == 200 {
				rec := h.recs.wait(t, "the request", func(r audit.Record) bool { return r.Kind == audit.KindHTTP })
				if rec.DNSName != "api.test" {
					t.Errorf("dns_name %q, want api.test", rec.DNSName)
				}
				return
			}
			if reached.Load() != before || !strings.Contains(body, policy.RuleRequireResolved) {
				t.Errorf("body %s, upstream reached %d times", body, reached.Load()-before)
			}
			rec := h.recs.wait(t, "the refusal", func(r audit.Record) bool { return r.Rule == policy.RuleRequireResolved })
			if rec.Decision != audit.DecisionDeny || rec.Reason != audit.ReasonUnresolved {
				t.Errorf("record %+v", rec)
			}
		})
	}
}

// changingNames is a DNS server's view that a test changes, counting the
// lookups made of it.
type changingNames struct {
	mu      sync.Mutex
	names   []string
	lookups int
}

func (c *changingNames) NamesFor(workload.Identity, netip.Addr) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lookups++
	return c.names
}

func (c *changingNames) set(names ...string) (lookups int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.names = names
	return c.lookups
}

// A connection's records take dns_name from a lookup made at most
// dnsNamesFor before: a name resolved meanwhile shows on a request that
// starts after that, and requests in between ask the DNS server's view
// nothing.
func TestDNSNameLookedUpOncePerWindow(t *testing.T) {
	up := startPlainUpstream(t, countingHandler(new(atomic.Int64)))
	names := &changingNames{names: []string{"a.test"}}
	h := newHarness(t, nil, allowAllDecider{}, func(_ *config.Proxy, d *Deps) {
		d.Resolver = mapResolver{}
		d.Names = names
	})
	c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 9})
	br := bufio.NewReader(c)
	get := func(path string) audit.Record {
		t.Helper()
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: a.test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return h.recs.wait(t, path, func(r audit.Record) bool { return r.Path == path })
	}
	if rec := get("/1"); rec.DNSName != "a.test" {
		t.Fatalf("first request: dns_name %q, want a.test", rec.DNSName)
	}
	before := names.set("b.test")
	for i := 2; i <= 5; i++ {
		if rec := get(fmt.Sprintf("/%d", i)); rec.DNSName != "a.test" {
			t.Errorf("request %d, within the window: dns_name %q, want a.test (the flow's lookup)", i, rec.DNSName)
		}
	}
	if n := names.set("b.test") - before; n != 0 {
		t.Errorf("%d lookups for 4 records within the window, want 0", n)
	}
	time.Sleep(dnsNamesFor + 100*time.Millisecond)
	if rec := get("/6"); rec.DNSName != "b.test" {
		t.Errorf("after the window: dns_name %q, want b.test", rec.DNSName)
	}
}

// A Host the workload resolved through the agent's DNS server to the
// address it dials is bound at once: the proxy asks no resolver of its own.
func TestHostBoundByTheWorkloadsOwnResolution(t *testing.T) {
	up := startPlainUpstream(t, echoHandler())
	// A resolver whose every answer points elsewhere, counting lookups.
	lookups := &countingResolver{answers: [][]netip.Addr{{netip.MustParseAddr("127.0.0.9")}}}
	h := newHarness(t, nil, nil, func(_ *config.Proxy, d *Deps) {
		d.Resolver = lookups
		d.Names = fixedNames{up.addr.Addr(): {"api.test"}}
	})
	c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 10})
	resp, body := rawRequest(t, c, "GET /bound HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	rec := h.recs.wait(t, "the request", func(r audit.Record) bool { return r.Path == "/bound" })
	if rec.Host != "api.test" || rec.Error != "" {
		t.Errorf("record host %q error %q; want api.test bound, not judged by the address", rec.Host, rec.Error)
	}
	if n := lookups.n.Load(); n != 0 {
		t.Errorf("the proxy looked names up %d times; want none", n)
	}
}
