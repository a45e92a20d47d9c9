package mitm

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
)

// countingResolver answers from a list that changes on every lookup, as a
// DNS-rebinding attacker's server would.
type countingResolver struct {
	n       atomic.Int32
	answers [][]netip.Addr
}

func (r *countingResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	i := int(r.n.Add(1)) - 1
	if i >= len(r.answers) {
		i = len(r.answers) - 1
	}
	return r.answers[i], nil
}

func TestExplicitDialsOnlyCheckedAddresses(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	res := &countingResolver{answers: [][]netip.Addr{
		// First answer: a dead loopback address, then the upstream's.
		{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")},
		// Any later lookup would point elsewhere.
		{netip.MustParseAddr("127.0.0.3")},
	}}
	h := newHarness(t, tca, nil, func(_ *config.Proxy, d *Deps) { d.Resolver = res })
	c := h.client(false)
	for i := 0; i < 3; i++ {
		resp, err := c.Get(fmt.Sprintf("https://multi.test:%d/m", up.addr.Port()))
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || body != "hello GET /m HTTP/1.1 body=" {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
	}
	if n := res.n.Load(); n != 1 {
		t.Fatalf("resolved %d times for one connection, want 1", n)
	}
	conns := h.dec.connections()
	want := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")}
	if len(conns) != 1 || !reflect.DeepEqual(conns[0].Addrs, want) || conns[0].Host != "multi.test" {
		t.Fatalf("Connection saw %+v, want the two answers", conns)
	}
	rec := h.recs.wait(t, "m", func(r audit.Record) bool { return r.Path == "/m" })
	if rec.UpstreamAddr != up.addr.String() {
		t.Fatalf("dialed %s, want %s (the second checked address)", rec.UpstreamAddr, up.addr)
	}
}

func TestClientDistrustingCARecorded(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	h := newHarness(t, tca, nil)
	// The default client trusts only the system roots.
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(h.url), TLSClientConfig: &tls.Config{}}}
	if _, err := c.Get(fmt.Sprintf("https://api.test:%d/", up.addr.Port())); err == nil {
		t.Fatal("a client that does not trust Sluice's CA got through")
	}
	rec := h.recs.wait(t, "handshake failure", func(r audit.Record) bool { return r.Kind == audit.KindL4 })
	if rec.Reason != audit.ReasonClientUntrusted || rec.Decision != audit.DecisionClientUntrusted || rec.SNI != "api.test" || rec.Host != "api.test" {
		t.Errorf("record %+v", rec)
	}
}

func TestHeadersRedactedInRecord(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	h := newHarness(t, tca, nil, func(_ *config.Proxy, d *Deps) {
		d.LogHeaders = true
		d.RedactHeaders = []string{"X-Secret"}
	})
	req, _ := http.NewRequest("GET", fmt.Sprintf("https://api.test:%d/h", up.addr.Port()), nil)
	req.Header.Set("Authorization", "Bearer sk-live-123")
	req.Header.Set("X-Secret", "hunter2")
	req.Header.Set("X-Plain", "not-allowlisted")
	req.Header.Set("Accept", "application/json")
	resp, err := h.client(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	rec := h.recs.wait(t, "headers", func(r audit.Record) bool { return r.Path == "/h" })
	if rec.Header["Authorization"] != audit.Redacted || rec.Header["X-Secret"] != audit.Redacted || rec.Header["X-Plain"] != audit.Redacted || rec.Header["Accept"] != "application/json" {
		t.Fatalf("headers %v", rec.Header)
	}
	for _, r := range h.recs.all() {
		for _, v := range r.Header {
			if strings.Contains(v, "sk-live") || strings.Contains(v, "hunter2") {
				t.Fatalf("secret in record %+v", r)
			}
		}
	}
}

func TestExplicitRejectsOriginForm(t *testing.T) {
	h := newHarness(t, nil, nil)
	c, err := net.Dial("tcp", h.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, body := rawRequest(t, c, "GET /not-a-proxy-request HTTP/1.1\r\nHost: api.test\r\n\r\n")
	if resp.StatusCode != 400 || !strings.Contains(body, "CONNECT or absolute-form") {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
}

func TestFramerSkipsOptionsStar(t *testing.T) {
	f := newFramer()
	f.feed([]byte("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\n\r\n"))
	if len(f.heads) != 1 || f.heads[0].target != "/a" {
		t.Fatalf("heads %+v", f.heads)
	}
}

func TestMaxConnections(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.MaxConnections = 1 })
	first := connectTLS(t, h, "api.test", up.addr.Port()) // holds the only slot
	c, err := net.Dial("tcp", h.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, body := rawRequest(t, c, "GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n")
	if resp.StatusCode != 503 || !strings.Contains(body, "too many connections") {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	rec := h.recs.wait(t, "refused", func(r audit.Record) bool { return r.Reason == "too many connections" })
	if rec.Kind != audit.KindL4 || rec.Decision != "error" || !rec.Workload.Client.IsValid() {
		t.Errorf("record %+v", rec)
	}
	// The slot comes back when the first connection ends.
	first.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c2, err := net.Dial("tcp", h.url.Host)
		if err != nil {
			t.Fatal(err)
		}
		resp, _ := rawRequest(t, c2, fmt.Sprintf("GET http://api.test:%d/ HTTP/1.1\r\nHost: api.test\r\n\r\n", up.addr.Port()))
		c2.Close()
		if resp.StatusCode != 503 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slot was not released")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The explicit listener answers its own probes in origin form, without
// a record; the same paths in absolute form are proxied as usual.
func TestExplicitHealth(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startPlainUpstream(t, echoHandler())
	h := newHarness(t, tca, nil)
	base := "http://" + h.url.Host
	for _, tc := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/healthz", 200, "ok\n"},
		{"GET", "/readyz", 200, "ready\n"},
		{"HEAD", "/readyz", 200, ""},
		{"POST", "/healthz", 405, ""},
	} {
		req, _ := http.NewRequest(tc.method, base+tc.path, nil)
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || body != tc.body {
			t.Errorf("%s %s: %d %q, want %d %q", tc.method, tc.path, resp.StatusCode, body, tc.code, tc.body)
		}
	}
	if n := len(h.recs.all()); n != 0 {
		t.Errorf("probes left %d records, want none", n)
	}
	resp, err := h.client(false).Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", up.addr.Port()))
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(body, "hello GET /healthz") {
		t.Errorf("absolute-form /healthz was not proxied: %d %q", resp.StatusCode, body)
	}
}
