package mitm

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// These tests try to get a request past the policy by making the proxy
// judge one thing while it forwards another.

// bypassPolicy denies by default, allows public paths on api.test and
// anything on other.test and pass.test (passed through); loopback (the test upstreams) is allowed.
func bypassPolicy(t *testing.T) policy.Decider {
	t.Helper()
	e, err := policy.Parse([]byte(`version: 1
ssrf: {allowCIDRs: ["127.0.0.0/8"]}
defaults: {action: deny}
tls: {passthrough: [pass.test]}
rules:
  - name: api-public
    destinations: {hosts: [api.test], paths: ["/public/**"]}
    action: allow
  - name: other-any
    destinations: {hosts: [other.test, pass.test]}
    action: allow
`), "bypass.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// countingHandler counts the requests that reached the upstream.
func countingHandler(n *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		fmt.Fprintf(w, "REACHED %s %s", r.Host, r.URL.Path)
	})
}

// A request whose Host differs from the SNI the connection was opened
// (and verified) for gets 421 and never reaches the upstream.
func TestHostMustMatchSNI(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var reached atomic.Int64
	up := startUpstream(t, tca, false, countingHandler(&reached))
	h := newHarness(t, tca, bypassPolicy(t))

	tc := connectTLS(t, h, "api.test", up.addr.Port())
	resp, body := rawRequest(t, tc, "GET /secret HTTP/1.1\r\nHost: other.test\r\n\r\n")
	if resp.StatusCode != http.StatusMisdirectedRequest || !strings.Contains(body, "request host") {
		t.Fatalf("Host other.test on an api.test connection: %d %s, want 421", resp.StatusCode, body)
	}
	rec := h.recs.wait(t, "421", func(r audit.Record) bool { return r.Path == "/secret" })
	if rec.Decision != audit.DecisionDeny || rec.Reason != audit.ReasonMisdirected {
		t.Errorf("record %s / %q", rec.Decision, rec.Reason)
	}
	resp, body = rawRequest(t, tc, "GET /public/x HTTP/1.1\r\nHost: API.test.\r\n\r\n")
	if resp.StatusCode != 200 || body != "REACHED API.test. /public/x" {
		t.Fatalf("matching Host (other case, trailing dot): %d %s", resp.StatusCode, body)
	}
	if n := reached.Load(); n != 1 {
		t.Fatalf("upstream reached %d times, want once (the allowed request only)", n)
	}
}

// CONNECT api.test then a ClientHello for pass.test (a pass-through
// host): the tunnel is refused instead of relayed blind to api.test.
func TestTunnelSNIMustMatchConnectHost(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var reached atomic.Int64
	up := startUpstream(t, tca, false, countingHandler(&reached))
	h := newHarness(t, tca, bypassPolicy(t))

	c, err := net.DialTimeout("tcp", h.url.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT api.test:%d HTTP/1.1\r\nHost: api.test\r\n\r\n", up.addr.Port())
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: "pass.test", InsecureSkipVerify: true})
	if err := tc.Handshake(); err == nil {
		t.Fatal("TLS with SNI pass.test inside a tunnel to api.test was served")
	}
	rec := h.recs.wait(t, "sni mismatch", func(r audit.Record) bool { return r.Reason == audit.ReasonSNIMismatch })
	if rec.Decision != audit.DecisionDeny || rec.Host != "api.test" {
		t.Errorf("record %+v", rec)
	}
	if n := reached.Load(); n != 0 {
		t.Fatalf("upstream reached %d times", n)
	}
}

// Transparent mode: an SNI on the pass-through list that does not resolve
// to the address the client connected to is decrypted, not passed
// through: the client gets Sluice's certificate, and the upstream's
// certificate is checked against the name.
func TestPassthroughSNIMustResolveToDestination(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	h := newHarness(t, tca, bypassPolicy(t), func(_ *config.Proxy, d *Deps) {
		d.Resolver = mapResolver{"pass.test": {netipMust("127.0.0.2")}} // not where the client connects
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())
	c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 7})
	tc := tls.Client(c, &tls.Config{ServerName: "pass.test", RootCAs: pool})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("want Sluice's own leaf (decrypted), handshake: %v", err)
	}
	if got := tc.ConnectionState().PeerCertificates[0].Issuer.CommonName; got != h.ca.Certificate().Subject.CommonName {
		t.Fatalf("leaf issued by %q, want Sluice's CA", got)
	}
	tc.Close()
}

// Bytes a server would parse as a request must not be relayed as "other
// TCP": an empty line before the request line, and an extension method.
func TestLeadingEmptyLineAndOddMethodsAreHTTP(t *testing.T) {
	var reached atomic.Int64
	up := startPlainUpstream(t, countingHandler(&reached))
	h := newHarness(t, nil, bypassPolicy(t))
	for _, req := range []string{
		"\r\nGET /admin HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
		"PURGE /admin HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
	} {
		c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 7})
		resp, body := rawRequest(t, c, req)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, `"rule":"default"`) {
			t.Errorf("%q: %d %s, want the default deny", req, resp.StatusCode, body)
		}
	}
	if n := reached.Load(); n != 0 {
		t.Fatalf("upstream reached %d times", n)
	}
}

// A flow that is not HTTP is decided again as opaque: the rule that only
// allows some paths can't match it, so the default deny applies and
// nothing is relayed.
func TestOpaqueFlowIsDecidedWithoutPerRequestRules(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var reached atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			reached.Add(1)
			c.Close()
		}
	}()
	h := newHarness(t, nil, bypassPolicy(t), func(_ *config.Proxy, d *Deps) {
		d.Resolver = mapResolver{"api.test": loopback}
	})
	dst := Destination{Addr: netipPortMust(ln.Addr().String())}
	c := transparent(t, h, dst, workload.Identity{PID: 7})
	fmt.Fprintf(c, "SSH-2.0-OpenSSH_9.2 api.test\r\n")
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _ := io.Copy(io.Discard, c); n != 0 {
		t.Errorf("client got %d bytes", n)
	}
	rec := h.recs.wait(t, "opaque deny", func(r audit.Record) bool { return r.Kind == audit.KindL4 })
	if rec.Decision != audit.DecisionDeny || rec.Rule != policy.RuleDefault {
		t.Errorf("record %s rule %q reason %q, want deny by default", rec.Decision, rec.Rule, rec.Reason)
	}
	if n := reached.Load(); n != 0 {
		t.Fatalf("upstream reached %d times", n)
	}
}

// A client that stops sending in the middle of a request body is dropped
// after IdleTimeout rather than holding its connection forever.
func TestStalledRequestBodyIsDropped(t *testing.T) {
	up := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	h := newHarness(t, nil, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(300 * time.Millisecond) })
	c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 7})
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\n0123456789")
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, c) // returns when the proxy closes
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("a stalled upload was still open after 15s with idleTimeout 300ms")
	}
}

// Transparent plain HTTP: the Host header is judged only where the name
// resolves to the address the client connected to; elsewhere the request
// is judged by the address (here: denied by default).
func TestPlainHTTPHostMustResolveToDestination(t *testing.T) {
	var reached atomic.Int64
	up := startPlainUpstream(t, countingHandler(&reached))
	for _, tc := range []struct {
		name   string
		apiIP  string
		status int
	}{
		{"name resolves to the destination", "127.0.0.1", 200},
		{"name resolves elsewhere", "127.0.0.2", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, nil, bypassPolicy(t), func(_ *config.Proxy, d *Deps) {
				d.Resolver = mapResolver{"api.test": {netipMust(tc.apiIP)}}
			})
			c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 7})
			resp, body := rawRequest(t, c, "GET /public/x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
			if resp.StatusCode != tc.status {
				t.Fatalf("%d %s, want %d", resp.StatusCode, body, tc.status)
			}
		})
	}
	if n := reached.Load(); n != 1 {
		t.Fatalf("upstream reached %d times, want once", n)
	}
}

// rotatingResolver answers each lookup of a name with the next address of
// its list, as DNS that rotates its answers does, and counts lookups of
// api.test (the proxy also looks up the other names the policy lists).
type rotatingResolver struct {
	addrs []netip.Addr
	n     atomic.Int64
}

func (r *rotatingResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if host != "api.test" {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	i := r.n.Add(1) - 1
	return []netip.Addr{r.addrs[int(i)%len(r.addrs)]}, nil
}

// Name binding looks a name up at most once a minute and remembers the
// union of the answers, so a name whose answers rotate still binds.
func TestNameBindingIsCached(t *testing.T) {
	var reached atomic.Int64
	up := startPlainUpstream(t, countingHandler(&reached))
	res := &rotatingResolver{addrs: []netip.Addr{up.addr.Addr(), netipMust("127.0.0.2")}}
	h := newHarness(t, nil, bypassPolicy(t), func(_ *config.Proxy, d *Deps) { d.Resolver = res })
	for i := 0; i < 3; i++ {
		c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 7})
		resp, body := rawRequest(t, c, "GET /public/x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
	if n := res.n.Load(); n != 1 {
		t.Fatalf("%d lookups for 3 connections, want 1", n)
	}
}

// CONNECT to an IP literal, then plain HTTP naming a host: served and
// judged by the address (no 421, as no name was bound to the tunnel).
func TestConnectToIPWithHostName(t *testing.T) {
	var reached atomic.Int64
	up := startPlainUpstream(t, countingHandler(&reached))
	dec := &fakeDecider{}
	h := newHarness(t, nil, dec)
	c, err := net.DialTimeout("tcp", h.url.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", up.addr, up.addr)
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("request in a tunnel to an IP: %v %v", resp, err)
	}
	reqs := dec.requests()
	if len(reqs) != 1 || reqs[0].Host != up.addr.Addr().String() {
		t.Fatalf("policy saw %+v, want the request judged by the tunnel's address", reqs)
	}
}
