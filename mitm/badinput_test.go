package mitm

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
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

// connectTLS opens a CONNECT tunnel through the explicit proxy and a TLS
// session (HTTP/1.1) trusting Sluice's CA.
func connectTLS(t *testing.T, h *harness, host string, port uint16) *tls.Conn {
	t.Helper()
	return connectTLSProto(t, h, host, port, "http/1.1")
}

// dialProxy opens a TCP connection to the harness's explicit proxy,
// closed when the test ends, with 20 s for everything on it.
func dialProxy(t *testing.T, h *harness) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", h.url.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

// connectTLSProto is connectTLS offering ALPN proto only.
func connectTLSProto(t *testing.T, h *harness, host string, port uint16, proto string) *tls.Conn {
	t.Helper()
	c := dialProxy(t, h)
	fmt.Fprintf(c, "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n", host, port, host, port)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())
	tc := tls.Client(c, &tls.Config{ServerName: host, RootCAs: pool, NextProtos: []string{proto}})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS through the proxy: %v", err)
	}
	return tc
}

// pipelined writes reqs, requests back to back, to c in one write and
// reads an answer for each status in want, failing on any other status.
func pipelined(t *testing.T, c net.Conn, reqs string, want ...int) {
	t.Helper()
	if _, err := io.WriteString(c, reqs); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for _, code := range want {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read the %d: %v", code, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Fatalf("status %d, want %d", resp.StatusCode, code)
		}
	}
}

func rawRequest(t *testing.T, c net.Conn, req string) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestHeaderTooLarge431(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	h := newHarness(t, tca, nil)
	limit := h.cfg.MaxHeaderBytes
	for _, tc := range []struct {
		name string
		size int
	}{
		{"just over the limit (Sluice's check)", limit + 100},
		{"far over the limit (net/http's check)", limit + 10000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := connectTLS(t, h, "api.test", up.addr.Port())
			path := fmt.Sprintf("/big-%d", tc.size)
			req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: api.test\r\nX-Big: %s\r\n\r\n", path, strings.Repeat("a", tc.size))
			resp, _ := rawRequest(t, c, req)
			if resp.StatusCode != 431 {
				t.Fatalf("status %d, want 431", resp.StatusCode)
			}
			rec := h.recs.wait(t, "431", func(r audit.Record) bool { return r.Status == 431 && r.Path == path })
			if rec.Reason != "request header fields too large" || rec.Source != "sluice" || rec.Decision != "error" || rec.Method != "GET" || rec.SNI != "api.test" {
				t.Errorf("record %+v", rec)
			}
		})
	}
	t.Run("HTTP/2", func(t *testing.T) {
		up2 := startUpstream(t, tca, true, echoHandler())
		req, _ := http.NewRequest("GET", fmt.Sprintf("https://api.test:%d/big-h2", up2.addr.Port()), nil)
		req.Header.Set("X-Big", strings.Repeat("a", limit+100))
		resp, err := h.client(true).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 431 || resp.ProtoMajor != 2 {
			t.Fatalf("status %d proto %s", resp.StatusCode, resp.Proto)
		}
		rec := h.recs.wait(t, "h2 431", func(r audit.Record) bool { return r.Status == 431 && r.Path == "/big-h2" })
		if rec.Reason != "request header fields too large" || rec.Proto != "HTTP/2.0" {
			t.Errorf("record %+v", rec)
		}
	})
	// Under the limit passes.
	c := connectTLS(t, h, "api.test", up.addr.Port())
	resp, body := rawRequest(t, c, fmt.Sprintf("GET /ok HTTP/1.1\r\nHost: api.test\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", limit-200)))
	if resp.StatusCode != 200 || body != "hello GET /ok HTTP/1.1 body=" {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
}

func TestContentLengthAndTransferEncoding400(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	hits := 0
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits++ }))
	h := newHarness(t, tca, nil)
	c := connectTLS(t, h, "api.test", up.addr.Port())
	// A first well-formed request with a body keeps the tracker in step.
	resp, _ := rawRequest(t, c, "POST /first HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhello")
	if resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	resp, body := rawRequest(t, c, "POST /smuggle HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	if resp.StatusCode != 400 || !strings.Contains(body, "both Content-Length and Transfer-Encoding") {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	rec := h.recs.wait(t, "400", func(r audit.Record) bool { return r.Status == 400 })
	if rec.Reason != "both Content-Length and Transfer-Encoding" || rec.Path != "/smuggle" || rec.Decision != "error" {
		t.Errorf("record %+v", rec)
	}
	if hits != 1 {
		t.Errorf("upstream saw %d requests, want only the first", hits)
	}
	// Plain HTTP on the explicit listener too.
	pc, err := net.Dial("tcp", h.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	resp, _ = rawRequest(t, pc, fmt.Sprintf("POST http://api.test:%d/x HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", up.addr.Port()))
	if resp.StatusCode != 400 {
		t.Fatalf("plain: status %d", resp.StatusCode)
	}
}

// TestNetHTTPAnswersRecordTheirRequest: a request net/http's server
// rejects itself (a header field without a colon, a malformed or a
// second Host, a request line without a version) is answered 400 and
// recorded with the method and path it named, as nginx's access log
// keeps the request line of a 400; a good request pipelined before it
// keeps its own.
func TestNetHTTPAnswersRecordTheirRequest(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	h := newHarness(t, tca, nil)
	for _, tc := range []struct {
		name, req, method, path string
	}{
		{"field without a colon", "GET /no-colon HTTP/1.1\r\nHost: api.test\r\nNo colon here\r\n\r\n", "GET", "/no-colon"},
		{"malformed Host", "POST /bad-host?q=1 HTTP/1.1\r\nHost: a b\r\n\r\n", "POST", "/bad-host"},
		{"two Hosts", "DELETE /two-hosts HTTP/1.1\r\nHost: api.test\r\nHost: other.test\r\n\r\n", "DELETE", "/two-hosts"},
		{"no version", "PURGE /no-version\r\n\r\n", "PURGE", "/no-version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := connectTLS(t, h, "api.test", up.addr.Port())
			resp, _ := rawRequest(t, c, tc.req)
			if resp.StatusCode != 400 {
				t.Fatalf("status %d, want 400", resp.StatusCode)
			}
			rec := h.recs.wait(t, tc.path, func(r audit.Record) bool { return r.Status == 400 && r.Path == tc.path })
			if rec.Method != tc.method || rec.Reason != audit.ReasonMalformed || rec.Decision != "error" || rec.Source != "sluice" {
				t.Errorf("record %+v, want method %s, reason %q", rec, tc.method, audit.ReasonMalformed)
			}
		})
	}
	t.Run("after a good request on the connection", func(t *testing.T) {
		c := connectTLS(t, h, "api.test", up.addr.Port())
		pipelined(t, c, "GET /good HTTP/1.1\r\nHost: api.test\r\n\r\nGET /bad-after-good HTTP/1.1\r\nHost: api.test\r\nNo colon here\r\n\r\n", 200, 400)
		good := h.recs.wait(t, "/good", func(r audit.Record) bool { return r.Path == "/good" })
		bad := h.recs.wait(t, "/bad-after-good", func(r audit.Record) bool { return r.Status == 400 && r.Path == "/bad-after-good" })
		if good.Status != 200 || bad.Method != "GET" {
			t.Errorf("records %+v and %+v", good, bad)
		}
	})
}

// TestUnsupportedExpectationRecorded, as an attacker: a request whose
// Expect field asks for more than 100-continue is answered 417 by
// net/http's server itself, before any handler. It is not forwarded, and
// it is recorded (status 417, its method and path, reason "expectation
// not supported"): a client cannot get an answer from Sluice that leaves
// no audit record, alone, pipelined behind a good request, or sent to
// the explicit proxy itself (a plain-HTTP request, a CONNECT). A 417 the
// upstream gives is recorded once, as the upstream's.
func TestUnsupportedExpectationRecorded(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var seen sync.Map // paths the upstream was asked for
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.URL.Path, true)
		if r.URL.Path == "/upstream-417" {
			w.WriteHeader(http.StatusExpectationFailed)
			return
		}
		io.WriteString(w, "ok")
	}))
	h := newHarness(t, tca, nil)
	recordsFor := func(path string) []audit.Record {
		var out []audit.Record
		for _, r := range h.recs.all() {
			if r.Path == path {
				out = append(out, r)
			}
		}
		return out
	}
	for _, tc := range []struct{ name, method, path, expect string }{
		{"a made-up expectation", "GET", "/made-up", "foo"},
		{"100-continue inside a longer token", "POST", "/longer-token", "100-continued"},
		{"another expectation beside 100-continue's look-alike", "PUT", "/beside", "x100-continue, bar"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := connectTLS(t, h, "api.test", up.addr.Port())
			resp, _ := rawRequest(t, c, tc.method+" "+tc.path+"?q=1 HTTP/1.1\r\nHost: api.test\r\nExpect: "+tc.expect+"\r\n\r\n")
			if resp.StatusCode != http.StatusExpectationFailed {
				t.Fatalf("status %d, want 417", resp.StatusCode)
			}
			rec := h.recs.wait(t, tc.path, func(r audit.Record) bool { return r.Path == tc.path })
			if rec.Status != 417 || rec.Method != tc.method || rec.Decision != audit.DecisionError ||
				rec.Reason != audit.ReasonExpectation || rec.Source != audit.SourceSluice || !strings.Contains(rec.Error, strconv.Quote(tc.expect)) {
				t.Errorf("record %+v", rec)
			}
			if _, ok := seen.Load(tc.path); ok {
				t.Error("the upstream was asked")
			}
			if n := len(recordsFor(tc.path)); n != 1 {
				t.Errorf("%d records, want 1", n)
			}
		})
	}
	t.Run("to the explicit proxy itself", func(t *testing.T) {
		for _, tc := range []struct{ req, path string }{
			{"GET http://api.test/absolute HTTP/1.1\r\nHost: api.test\r\nExpect: foo\r\n\r\n", "/absolute"},
			{"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\nExpect: foo\r\n\r\n", "api.test:443"},
		} {
			resp, _ := rawRequest(t, dialProxy(t, h), tc.req)
			if resp.StatusCode != http.StatusExpectationFailed {
				t.Fatalf("%s: status %d, want 417", tc.path, resp.StatusCode)
			}
			rec := h.recs.wait(t, tc.path, func(r audit.Record) bool { return r.Path == tc.path })
			if rec.Status != 417 || rec.Reason != audit.ReasonExpectation {
				t.Errorf("record %+v", rec)
			}
		}
	})
	t.Run("pipelined behind a good request", func(t *testing.T) {
		c := connectTLS(t, h, "api.test", up.addr.Port())
		pipelined(t, c, "GET /before HTTP/1.1\r\nHost: api.test\r\n\r\nGET /behind HTTP/1.1\r\nHost: api.test\r\nExpect: foo\r\n\r\n", 200, 417)
		before := h.recs.wait(t, "/before", func(r audit.Record) bool { return r.Path == "/before" })
		behind := h.recs.wait(t, "/behind", func(r audit.Record) bool { return r.Path == "/behind" })
		if before.Status != 200 || behind.Status != 417 || behind.Reason != audit.ReasonExpectation {
			t.Errorf("records %+v and %+v", before, behind)
		}
	})
	t.Run("100-continue is no unsupported expectation", func(t *testing.T) {
		c := connectTLS(t, h, "api.test", up.addr.Port())
		resp, body := rawRequest(t, c, "POST /continue HTTP/1.1\r\nHost: api.test\r\nExpect: 100-Continue\r\nContent-Length: 0\r\n\r\n")
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("status %d, body %q", resp.StatusCode, body)
		}
	})
	t.Run("the upstream's own 417", func(t *testing.T) {
		c := connectTLS(t, h, "api.test", up.addr.Port())
		resp, _ := rawRequest(t, c, "GET /upstream-417 HTTP/1.1\r\nHost: api.test\r\n\r\n")
		if resp.StatusCode != http.StatusExpectationFailed {
			t.Fatalf("status %d, want 417", resp.StatusCode)
		}
		recs := recordsFor("/upstream-417")
		if len(recs) != 1 || recs[0].Source != audit.SourceUpstream || recs[0].Reason == audit.ReasonExpectation {
			t.Errorf("records %+v, want one, the upstream's", recs)
		}
	})
}

// TestHTTP10TransferEncodingRefused, as an attacker: an HTTP/1.0 request
// with Transfer-Encoding, whose framing RFC 9112 6.1 calls faulty
// (net/http ignores the field and reads no body), carrying a second
// request in what a chunked reader would take for its body. It is
// refused with 400 and the connection closes, as a request with both
// Content-Length and Transfer-Encoding is; the upstream sees neither
// request, and no record names the one inside the body.
func TestHTTP10TransferEncodingRefused(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var hits atomic.Int32
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	h := newHarness(t, tca, nil)
	c := connectTLS(t, h, "api.test", up.addr.Port())
	io.WriteString(c, "POST /one HTTP/1.0\r\nHost: api.test\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"5\r\nhello\r\n0\r\n\r\nDELETE /decoy HTTP/1.1\r\nHost: api.test\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "before HTTP/1.1 has Transfer-Encoding") {
		t.Fatalf("status %d body %q, want 400 for Transfer-Encoding before HTTP/1.1", resp.StatusCode, b)
	}
	if _, err := http.ReadResponse(br, nil); err == nil {
		t.Fatal("a second answer on the connection, want it closed after the 400")
	}
	rec := h.recs.wait(t, "400", func(r audit.Record) bool { return r.Status == 400 })
	if rec.Method != "POST" || rec.Path != "/one" || rec.Reason != audit.ReasonSmuggling || rec.Decision != "error" {
		t.Errorf("record %+v, want POST /one refused as smuggling", rec)
	}
	time.Sleep(100 * time.Millisecond) // a record of the decoy would be in by now
	for _, r := range h.recs.all() {
		if r.Path == "/decoy" {
			t.Errorf("a record names the request inside the body: %+v", r)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the upstream saw %d requests, want none", n)
	}
}

// TestExplicitProbeKeepsFramingInStep, as an attacker: a probe of the
// explicit listener's own (/healthz) answered before the chain takes its
// head from the connection's framing tracker, so the request after it
// is judged by its own head: Content-Length with Transfer-Encoding is
// refused (before, it was judged by the probe's head and forwarded), and
// a malformed head net/http's server refuses is recorded as itself, not
// as the probe.
func TestExplicitProbeKeepsFramingInStep(t *testing.T) {
	var hits atomic.Int32
	up := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	h := newHarness(t, nil, nil)
	probe := func(c net.Conn, br *bufio.Reader) {
		t.Helper()
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("probe: %v %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	t.Run("smuggling after a probe", func(t *testing.T) {
		c, br := dialExplicit(t, h)
		probe(c, br)
		fmt.Fprintf(c, "POST http://%s/smuggle HTTP/1.1\r\nHost: %[1]s\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", up.addr)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read the answer: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Fatalf("status %d, want 400 for Content-Length with Transfer-Encoding", resp.StatusCode)
		}
		rec := h.recs.wait(t, "/smuggle", func(r audit.Record) bool { return r.Path == "/smuggle" })
		if rec.Reason != audit.ReasonSmuggling || hits.Load() != 0 {
			t.Errorf("record %+v, upstream hits %d; want refused as smuggling, none", rec, hits.Load())
		}
	})
	t.Run("a malformed head after a probe", func(t *testing.T) {
		c, br := dialExplicit(t, h)
		probe(c, br)
		fmt.Fprintf(c, "POST http://%s/bad HTTP/1.1\r\nHost: %[1]s\r\nNo colon here\r\n\r\n", up.addr)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 400 {
			t.Fatalf("malformed head: %v %v, want 400", resp, err)
		}
		rec := h.recs.wait(t, "/bad", func(r audit.Record) bool { return r.Status == 400 && r.Path == "/bad" })
		if rec.Method != "POST" {
			t.Errorf("record %+v, want POST /bad", rec)
		}
	})
}

func TestUpstreamFailures(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	t.Run("unreachable 502", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		port := uint16(ln.Addr().(*net.TCPAddr).Port)
		ln.Close()
		h := newHarness(t, tca, nil)
		c := connectTLS(t, h, "api.test", port)
		for i := 0; i < 2; i++ {
			resp, body := rawRequest(t, c, "GET /down HTTP/1.1\r\nHost: api.test\r\n\r\n")
			if resp.StatusCode != 502 || !strings.Contains(body, "upstream api.test unreachable") || !strings.Contains(body, "connection refused") {
				t.Fatalf("status %d body %q", resp.StatusCode, body)
			}
		}
		rec := h.recs.wait(t, "502", func(r audit.Record) bool { return r.Status == 502 })
		if rec.Reason != "upstream unreachable" || rec.Decision != "error" || rec.Source != "sluice" || !strings.Contains(rec.Error, "connection refused") {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("plain unreachable 502", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		h := newHarness(t, tca, nil)
		resp, err := h.client(false).Get(fmt.Sprintf("http://api.test:%d/x", port))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 502 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("verification failure 502", func(t *testing.T) {
		other := newTestCA(t, "some other CA")
		up := startUpstream(t, other, true, echoHandler())
		h := newHarness(t, tca, nil)
		for _, h2 := range []bool{false, true} {
			resp, err := h.client(h2).Get(fmt.Sprintf("https://api.test:%d/v", up.addr.Port()))
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp.Body)
			resp.Body.Close()
			want := "upstream certificate verification failed for api.test: x509: certificate signed by unknown authority"
			if resp.StatusCode != 502 || !strings.Contains(body, want) {
				t.Fatalf("status %d body %q, want 502 naming %q", resp.StatusCode, body, want)
			}
		}
		rec := h.recs.wait(t, "verify", func(r audit.Record) bool { return r.Status == 502 })
		if rec.Reason != "upstream certificate verification failed" || rec.Decision != "error" || rec.TLS != audit.TLSDecrypted {
			t.Errorf("record %+v", rec)
		}
	})
	for _, h2 := range []bool{false, true} {
		// Over HTTP/2 a GET comes with an empty, non-nil body; the timeout
		// must run all the same.
		t.Run(fmt.Sprintf("response header timeout 504 h2=%v", h2), func(t *testing.T) {
			release := make(chan struct{})
			up := startUpstream(t, tca, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}))
			defer close(release)
			h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.ResponseHeaderTimeout = config.Duration(200 * time.Millisecond) })
			resp, err := h.client(h2).Get(fmt.Sprintf("https://api.test:%d/slow", up.addr.Port()))
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 504 || !strings.Contains(body, "sent no response headers within 200ms") {
				t.Fatalf("status %d body %q", resp.StatusCode, body)
			}
			if h2 && resp.ProtoMajor != 2 {
				t.Fatalf("client spoke %s, want HTTP/2", resp.Proto)
			}
			rec := h.recs.wait(t, "504", func(r audit.Record) bool { return r.Status == 504 })
			if rec.Reason != "upstream response header timeout" || rec.Decision != "error" {
				t.Errorf("record %+v", rec)
			}
		})
	}
}

func TestGarbageClientHelloClosed(t *testing.T) {
	h := newHarness(t, nil, nil)
	c := transparent(t, h, Destination{Addr: mustAddrPort("127.0.0.1:1")}, workload.Identity{PID: 7})
	// A TLS handshake record header followed by a body that is no ClientHello.
	c.Write([]byte{0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef})
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 10)); err == nil {
		t.Fatalf("read %d bytes from a connection that should be closed", n)
	}
	rec := h.recs.wait(t, "garbage hello", func(r audit.Record) bool { return r.Kind == audit.KindL4 })
	if rec.Decision != "error" || rec.Reason != "malformed client hello" || !strings.HasPrefix(rec.Error, "parse client hello: ") || rec.Workload.PID != 7 {
		t.Errorf("record %+v", rec)
	}
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestRandomBytesRelayedAsTCP(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	h := newHarness(t, nil, nil)
	c := transparent(t, h, Destination{Addr: mustAddrPort(echo.Addr().String())}, workload.Identity{PID: 8})
	r := rand.New(rand.NewPCG(1, 2))
	msg := make([]byte, 5000)
	for i := range msg {
		msg[i] = byte(r.IntN(256))
	}
	msg[0] = 0x00 // neither TLS nor a method
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo differs")
	}
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
	rec := h.recs.wait(t, "L4 relay", func(r audit.Record) bool { return r.Kind == audit.KindL4 && r.Workload.PID == 8 })
	if rec.TLS != audit.TLSNone || rec.BytesIn != 5000 || rec.BytesOut != 5000 || rec.Decision != "allow" || rec.UpstreamAddr != echo.Addr().String() || rec.Duration <= 0 {
		t.Errorf("record %+v", rec)
	}
}

func TestClientGoneMidStream(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			cancelled := make(chan struct{})
			up := startUpstream(t, tca, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				rc := http.NewResponseController(w)
				for i := 0; i < 1000; i++ {
					fmt.Fprintf(w, "data: %d\n\n", i)
					if rc.Flush() != nil {
						break
					}
					select {
					case <-r.Context().Done():
						close(cancelled)
						return
					case <-time.After(20 * time.Millisecond):
					}
				}
			}))
			h := newHarness(t, tca, nil)
			cl := h.client(h2)
			resp, err := cl.Get(fmt.Sprintf("https://api.test:%d/stream", up.addr.Port()))
			if err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(resp.Body)
			if l, err := br.ReadString('\n'); err != nil || l != "data: 0\n" {
				t.Fatalf("first line %q %v", l, err)
			}
			resp.Body.Close()
			cl.CloseIdleConnections()
			cl.Transport.(*http.Transport).CloseIdleConnections()
			select {
			case <-cancelled:
			case <-time.After(10 * time.Second):
				t.Fatal("the upstream request was not cancelled after the client left")
			}
			// A client that cancels a stream ends it normally: the
			// record keeps the policy's decision and says who ended it.
			rec := h.recs.wait(t, "client closed", func(r audit.Record) bool { return r.Path == "/stream" })
			if rec.Decision != audit.DecisionAllow || rec.Reason != "test allows" || rec.End != audit.EndClientClosed ||
				rec.Error != "" || rec.Status != 200 {
				t.Errorf("record %+v", rec)
			}
		})
	}
}

func TestBodyLimits(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var hits int
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		switch r.URL.Path {
		case "/big-cl":
			w.Header().Set("Content-Length", "20")
			io.WriteString(w, strings.Repeat("x", 20))
		case "/big-chunked":
			rc := http.NewResponseController(w)
			for i := 0; i < 4; i++ {
				io.WriteString(w, "12345")
				rc.Flush()
			}
		default:
			io.WriteString(w, "ok")
		}
	}))
	dec := &fakeDecider{req: func(r *policy.Request) policy.Decision {
		return policy.Decision{Rule: "sizes", MaxRequestBody: 10, MaxResponseBody: 12}
	}}
	h := newHarness(t, tca, dec)
	port := up.addr.Port()

	t.Run("content-length over the limit 413", func(t *testing.T) {
		before := hits
		c := connectTLS(t, h, "api.test", port)
		resp, body := rawRequest(t, c, "POST /up HTTP/1.1\r\nHost: api.test\r\nContent-Length: 20\r\n\r\n"+strings.Repeat("y", 20))
		if resp.StatusCode != 413 || !strings.Contains(body, "exceeds the limit of 10") {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
		if hits != before {
			t.Fatal("the upstream was contacted")
		}
	})
	t.Run("expect 100-continue 417", func(t *testing.T) {
		c := connectTLS(t, h, "api.test", port)
		resp, _ := rawRequest(t, c, "POST /up HTTP/1.1\r\nHost: api.test\r\nContent-Length: 20\r\nExpect: 100-continue\r\n\r\n")
		if resp.StatusCode != 417 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("chunked over the limit 413", func(t *testing.T) {
		c := connectTLS(t, h, "api.test", port)
		resp, body := rawRequest(t, c, "POST /chunked HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
		if resp.StatusCode != 413 || !strings.Contains(body, "exceeds the limit of 10") {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
		rec := h.recs.wait(t, "chunked 413", func(r audit.Record) bool { return r.Path == "/chunked" })
		if rec.Reason != "request body exceeds limit" || rec.Decision != "deny" || rec.Rule != "sizes" {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("chunked under the limit passes", func(t *testing.T) {
		c := connectTLS(t, h, "api.test", port)
		resp, body := rawRequest(t, c, "POST /small HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n1234\r\n0\r\n\r\n")
		if resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
	})
	t.Run("response content-length over the limit 502", func(t *testing.T) {
		c := connectTLS(t, h, "api.test", port)
		resp, body := rawRequest(t, c, "GET /big-cl HTTP/1.1\r\nHost: api.test\r\n\r\n")
		if resp.StatusCode != 502 || !strings.Contains(body, "response body of 20 bytes exceeds the limit of 12") {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
	})
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("streamed response cut h2=%v", h2), func(t *testing.T) {
			resp, err := h.client(h2).Get(fmt.Sprintf("https://api.test:%d/big-chunked", port))
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil || string(b) != "123451234512" {
				t.Fatalf("read %q, %v: want the first 12 bytes and an error", b, err)
			}
		})
	}
	rec := h.recs.wait(t, "cut", func(r audit.Record) bool { return r.Path == "/big-chunked" })
	if rec.Reason != "response body exceeds limit" || rec.BytesOut != 12 || rec.Status != 200 {
		t.Errorf("record %+v", rec)
	}
}

// TestResponseHeaderTimeoutCountsFromBodyEnd: a slow upload is not a
// slow upstream, on every upstream path: over HTTP/1.1 a body of unknown
// length goes through net/http's Transport, a short one of declared
// length on the handler's goroutine (h1upstream.go); over HTTP/2 both go
// through Sluice's client, which keeps the timeout itself.
func TestResponseHeaderTimeoutCountsFromBodyEnd(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) { testHeaderTimeoutFromBodyEnd(t, h2) })
	}
}

func testHeaderTimeoutFromBodyEnd(t *testing.T, h2 bool) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, h2, echoHandler())
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.ResponseHeaderTimeout = config.Duration(time.Second) })
	for _, declared := range []int64{-1, 16} {
		pr, pw := io.Pipe()
		go func() {
			for i := 0; i < 4; i++ {
				pw.Write([]byte("part"))
				time.Sleep(400 * time.Millisecond) // 1.6s in all, longer than the timeout
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", fmt.Sprintf("https://api.test:%d/upload", up.addr.Port()), pr)
		req.ContentLength = declared
		resp, err := h.client(h2).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp.Body)
		resp.Body.Close()
		proto := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]
		if resp.StatusCode != 200 || body != "hello POST /upload "+proto+" body=partpartpartpart" {
			t.Fatalf("body of length %d: status %d body %q", declared, resp.StatusCode, body)
		}
	}
}

// The response header timeout on an HTTP/1.1 pool's Transport path (a
// body of unknown length is not sent on the handler's goroutine): 504,
// through the context forward cancels (Exchange.cancelOut).
func TestH1TransportPathHeaderTimeout(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	release := make(chan struct{})
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer close(release)
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.ResponseHeaderTimeout = config.Duration(200 * time.Millisecond) })
	req, _ := http.NewRequest("POST", fmt.Sprintf("https://api.test:%d/slow", up.addr.Port()), io.NopCloser(strings.NewReader("abc")))
	req.ContentLength = -1
	start := time.Now()
	resp, err := h.client(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 504 || !strings.Contains(body, "sent no response headers within 200ms") {
		t.Fatalf("status %d body %q after %v", resp.StatusCode, body, time.Since(start))
	}
}
