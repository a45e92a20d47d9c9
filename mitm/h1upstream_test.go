package mitm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/workload"
)

// connCounter counts an httptest server's new and closed connections.
type connCounter struct{ opened, closed atomic.Int32 }

func (c *connCounter) hook(s *httptest.Server) {
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			c.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			c.closed.Add(1)
		}
	}
}

func doReq(t *testing.T, c *http.Client, method, url, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	return resp.StatusCode, readAll(t, resp.Body)
}

// TestH1UpstreamClosedWhileIdle: an upstream that closes a kept-alive
// connection while it is idle (its own idle timeout, no Connection:
// close) costs the next request nothing, a POST with a body included:
// the pool notices the close before it sends.
func TestH1UpstreamClosedWhileIdle(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var cc connCounter
	up := startUpstreamWith(t, tca, false, echoHandler(), func(s *httptest.Server) {
		cc.hook(s)
		s.Config.IdleTimeout = 50 * time.Millisecond
	})
	h := newHarness(t, tca, nil)
	c := h.client(false)
	url := fmt.Sprintf("https://api.test:%d/idle", up.addr.Port())
	for i, method := range []string{"GET", "POST", "GET", "POST"} {
		if i > 0 {
			// Until the upstream has closed the last one.
			for deadline := time.Now().Add(5 * time.Second); cc.closed.Load() < int32(i); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the upstream closed %d idle connections, want %d", cc.closed.Load(), i)
				}
			}
		}
		payload := ""
		if method == "POST" {
			payload = "payload"
		}
		code, body := doReq(t, c, method, url, payload)
		want := fmt.Sprintf("hello %s /idle HTTP/1.1 body=%s", method, payload)
		if code != 200 || body != want {
			t.Fatalf("request %d (%s) after the upstream closed its idle connection: %d %q", i, method, code, body)
		}
	}
	if n := cc.opened.Load(); n != 4 {
		t.Errorf("%d upstream connections for 4 requests each after an idle close, want 4", n)
	}
}

// rawUpstream is a plain HTTP/1.1 server that answers each request head
// it reads with answer(i, req), i counting the connection's requests; an
// empty answer closes the connection unanswered.
type rawUpstream struct {
	ln       net.Listener
	requests atomic.Int32 // request heads read, answered or not
	conns    atomic.Int32
	wg       sync.WaitGroup
}

func startRawUpstream(t *testing.T, answer func(i int, req *http.Request) string) *rawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.conns.Add(1)
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for i := 0; ; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					u.requests.Add(1)
					a := answer(i, req)
					if a == "" {
						return
					}
					io.WriteString(c, a)
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); u.wg.Wait() })
	return u
}

func (u *rawUpstream) url(path string) string {
	return fmt.Sprintf("http://api.test:%d%s", u.ln.Addr().(*net.TCPAddr).Port, path)
}

// oneShot answers the first request of each connection with keep-alive,
// then reads the next request and closes without a word: what a proxy
// sees when an upstream closes an idle connection just as a request goes
// out on it.
func oneShot(i int, req *http.Request) string {
	if i > 0 {
		return ""
	}
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.Method), req.Method)
}

// TestH1UpstreamClosedOnNextRequest: a request that meets a reused
// connection the upstream closes unanswered is sent once more, on a new
// connection, when repeating it is safe (GET); a POST is not repeated and
// gets a 502 that says the upstream failed.
func TestH1UpstreamClosedOnNextRequest(t *testing.T) {
	up := startRawUpstream(t, oneShot)
	h := newHarness(t, nil, nil)
	c := h.client(false)
	url := up.url("/x")
	if code, body := doReq(t, c, "GET", url, ""); code != 200 || body != "GET" {
		t.Fatalf("first GET: %d %q", code, body)
	}
	// The pooled connection looks open; the upstream closes it when the
	// GET arrives, and the GET goes again on a new one.
	if code, body := doReq(t, c, "GET", url, ""); code != 200 || body != "GET" {
		t.Fatalf("GET on a connection the upstream closed: %d %q", code, body)
	}
	if n, r := up.conns.Load(), up.requests.Load(); n != 2 || r != 3 {
		t.Errorf("%d upstream connections and %d requests, want 2 and 3 (one GET sent twice)", n, r)
	}
	code, body := doReq(t, c, "POST", url, "once")
	if code != 502 || !strings.Contains(body, "upstream api.test") {
		t.Fatalf("POST on a connection the upstream closed: %d %q, want 502", code, body)
	}
	rec := h.recs.wait(t, "the POST's 502", func(r audit.Record) bool { return r.Method == "POST" })
	if rec.Status != 502 || rec.Reason != audit.ReasonUpstreamError || rec.Decision != audit.DecisionError {
		t.Errorf("record %+v", rec)
	}
	if r := up.requests.Load(); r != 4 {
		t.Errorf("the upstream read %d requests, want 4: a POST is not sent twice", r)
	}
}

// TestH1UpstreamConnectionClose: an upstream's Connection: close ends its
// connection; the next request dials a new one, and the client's own
// connection stays open.
func TestH1UpstreamConnectionClose(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var cc connCounter
	up := startUpstreamWith(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		io.WriteString(w, r.URL.Path)
	}), cc.hook)
	var clientConns atomic.Int32
	h := newHarness(t, tca, nil)
	c := h.client(false)
	c.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		clientConns.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	base := fmt.Sprintf("https://api.test:%d", up.addr.Port())
	for _, path := range []string{"/close", "/close", "/keep", "/keep"} {
		code, resp := doReq(t, c, "GET", base+path, "")
		if code != 200 || resp != path {
			t.Fatalf("GET %s: %d %q", path, code, resp)
		}
	}
	if n := cc.opened.Load(); n != 3 {
		t.Errorf("%d upstream connections, want 3 (two closed by the upstream, then one kept)", n)
	}
	if n := clientConns.Load(); n != 1 {
		t.Errorf("the client dialed %d connections, want 1: the upstream's close is its own", n)
	}
}

// TestH1UpstreamIdleTimeout: idle upstream connections are closed after
// proxy.idleTimeout.
func TestH1UpstreamIdleTimeout(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var cc connCounter
	up := startUpstreamWith(t, tca, false, echoHandler(), cc.hook)
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(300 * time.Millisecond) })
	c := h.client(false)
	if code, _ := doReq(t, c, "GET", fmt.Sprintf("https://api.test:%d/", up.addr.Port()), ""); code != 200 {
		t.Fatalf("status %d", code)
	}
	start := time.Now()
	for cc.closed.Load() == 0 {
		if time.Since(start) > 5*time.Second {
			t.Fatal("the idle upstream connection was not closed within 5s (idleTimeout 300ms)")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("the idle upstream connection was closed after %s, before idleTimeout (300ms)", d)
	}
}

// TestH1UpstreamClientLeaves: a client that gives up while the upstream
// thinks ends the upstream request too (its connection is closed, not
// pooled) and leaves a 499 record.
func TestH1UpstreamClientLeaves(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	ended := make(chan struct{})
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			close(ended)
		case <-time.After(10 * time.Second):
		}
	}))
	h := newHarness(t, tca, nil)
	c := h.client(false)
	c.Timeout = 300 * time.Millisecond
	if _, err := c.Get(fmt.Sprintf("https://api.test:%d/slow", up.addr.Port())); err == nil {
		t.Fatal("the client got an answer from an upstream that never answers")
	}
	wantAbandoned(t, h, ended)
}

// wantAbandoned waits for the upstream's handler of /slow to end (ended)
// after its client left, and for the request's record: 499, client
// closed.
func wantAbandoned(t *testing.T, h *harness, ended <-chan struct{}) {
	t.Helper()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream request went on after the client left")
	}
	rec := h.recs.wait(t, "the abandoned request", func(r audit.Record) bool { return r.Path == "/slow" })
	if rec.Status != statusClientClosed || rec.End != audit.EndClientClosed {
		t.Errorf("record %+v", rec)
	}
}

// TestH1UpstreamProxyStops: a proxy that stops while the upstream
// thinks ends the upstream request too (its connection is closed), not
// only the client's. Also with a second request pipelined behind the
// first: net/http's background read then has its byte and reads no
// more, so no failed read of the client's connection says the flow
// ended, and the connection's watch must see the flow's end itself.
func TestH1UpstreamProxyStops(t *testing.T) {
	for _, pipelined := range []bool{false, true} {
		t.Run(fmt.Sprintf("pipelined=%v", pipelined), func(t *testing.T) {
			tca := newTestCA(t, "upstream test CA")
			started, ended := make(chan struct{}), make(chan struct{})
			var once sync.Once
			up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				once.Do(func() { close(started) })
				select {
				case <-r.Context().Done():
					close(ended)
				case <-time.After(10 * time.Second):
				}
			}))
			h := newHarness(t, tca, nil)
			if pipelined {
				// Both requests in one write: the second waits in the server's buffer.
				tc := connectTLS(t, h, "api.test", up.addr.Port())
				get := fmt.Sprintf("GET /slow HTTP/1.1\r\nHost: api.test:%d\r\n\r\n", up.addr.Port())
				if _, err := io.WriteString(tc, get+get); err != nil {
					t.Fatal(err)
				}
			} else {
				c := h.client(false)
				c.Timeout = 10 * time.Second
				go func() {
					if resp, err := c.Get(fmt.Sprintf("https://api.test:%d/slow", up.addr.Port())); err == nil {
						resp.Body.Close()
					}
				}()
			}
			select {
			case <-started:
			case <-time.After(5 * time.Second):
				t.Fatal("the request did not reach the upstream")
			}
			h.cancel()
			select {
			case <-ended:
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream request went on after the proxy stopped")
			}
		})
	}
}

// TestH1UpstreamEarlyHints: informational answers before the final one
// are dropped, as net/http's Transport drops them; the final one arrives
// whole and the connection is reused.
func TestH1UpstreamEarlyHints(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var cc connCounter
	up := startUpstreamWith(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		io.WriteString(w, "final")
	}), cc.hook)
	h := newHarness(t, tca, nil)
	c := h.client(false)
	for i := 0; i < 2; i++ {
		if code, body := doReq(t, c, "GET", fmt.Sprintf("https://api.test:%d/hints", up.addr.Port()), ""); code != 200 || body != "final" {
			t.Fatalf("status %d body %q", code, body)
		}
	}
	if n := cc.opened.Load(); n != 1 {
		t.Errorf("%d upstream connections for 2 requests, want 1", n)
	}
}

// TestH1UpstreamBodyLeftUnread: a response the client stops reading
// halfway can't leave its connection in the pool with the rest of the
// body in it; the next request gets its own answer.
func TestH1UpstreamBodyLeftUnread(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	big := strings.Repeat("x", 4<<20)
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			io.WriteString(w, big)
			return
		}
		io.WriteString(w, "small")
	}))
	h := newHarness(t, tca, nil)
	base := fmt.Sprintf("https://api.test:%d", up.addr.Port())
	c := h.client(false)
	resp, err := c.Get(base + "/big")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // the client's connection closes with most of the body unread
	for i := 0; i < 3; i++ {
		if code, body := doReq(t, h.client(false), "GET", base+"/small", ""); code != 200 || body != "small" {
			t.Fatalf("after an unread body: %d %q", code, body)
		}
	}
}

// TestH1PoolBounds: the pool keeps at most maxIdle connections and closes
// each after idleTimeout.
func TestH1PoolBounds(t *testing.T) {
	hp := newH1Pool(nil, 2, 100*time.Millisecond)
	var peers []net.Conn
	for i := 0; i < 3; i++ {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		peers = append(peers, b)
		hp.put(&h1UpConn{conn: a})
	}
	closed := func(c net.Conn, within time.Duration) bool {
		_ = c.SetReadDeadline(time.Now().Add(within))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF
	}
	if !closed(peers[2], time.Second) {
		t.Error("a connection beyond maxIdle was kept")
	}
	start := time.Now()
	for i, c := range peers[:2] {
		if !closed(c, 5*time.Second) {
			t.Fatalf("idle connection %d still open after 5s (idleTimeout 100ms)", i)
		}
	}
	if d := time.Since(start); d < 80*time.Millisecond {
		t.Errorf("idle connections closed after %s, before idleTimeout", d)
	}
	hp.mu.Lock()
	defer hp.mu.Unlock()
	if len(hp.idle) != 0 || hp.sweep != nil {
		t.Errorf("after the sweep: %d idle, timer %v", len(hp.idle), hp.sweep != nil)
	}
}

// TestH1UpstreamExtraBytes: bytes an upstream sends past the end of its
// response are no answer to the next request: the connection is not
// reused, and the next request gets its own answer.
func TestH1UpstreamExtraBytes(t *testing.T) {
	up := startRawUpstream(t, func(i int, req *http.Request) string {
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" +
			"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
	})
	h := newHarness(t, nil, nil)
	c := h.client(false)
	for i := 0; i < 3; i++ {
		if code, body := doReq(t, c, "GET", up.url("/x"), ""); code != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	if n := up.conns.Load(); n != 3 {
		t.Errorf("%d upstream connections for 3 requests, want 3: none may be reused", n)
	}
}

// TestH1UpstreamHeaderTooLarge: an upstream whose response head never
// ends within 1 MiB (as the Transport's MaxResponseHeaderBytes) gets a
// 502, not the proxy's memory.
func TestH1UpstreamHeaderTooLarge(t *testing.T) {
	huge := "HTTP/1.1 200 OK\r\nX-Huge: " + strings.Repeat("a", 2<<20) + "\r\nContent-Length: 2\r\n\r\nok"
	up := startRawUpstream(t, func(i int, req *http.Request) string { return huge })
	h := newHarness(t, nil, nil)
	if code, body := doReq(t, h.client(false), "GET", up.url("/huge"), ""); code != http.StatusBadGateway {
		t.Fatalf("a 2 MiB response header: %d %.80q, want 502", code, body)
	}
}

// TestH1UpstreamFiveEarlyAnswers: five 1xx answers before the final one
// are dropped (net/http's Transport allows five); a sixth is an error.
func TestH1UpstreamFiveEarlyAnswers(t *testing.T) {
	early := strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", 5)
	up := startRawUpstream(t, func(i int, req *http.Request) string {
		if req.URL.Path == "/six" {
			return early + "HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
		}
		return early + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
	})
	h := newHarness(t, nil, nil)
	if code, body := doReq(t, h.client(false), "GET", up.url("/five"), ""); code != 200 || body != "final" {
		t.Fatalf("five 103s then 200: %d %q", code, body)
	}
	if code, _ := doReq(t, h.client(false), "GET", up.url("/six"), ""); code != http.StatusBadGateway {
		t.Fatalf("six 103s then 200: %d, want 502", code)
	}
}

// TestH1UpstreamExtraBytesInsideTLS: bytes after a response that arrive
// in the same TLS record as the body's end sit inside crypto/tls, not in
// the proxy's buffer; the connection must still not serve the next
// request (which would get them as its answer).
func TestH1UpstreamExtraBytesInsideTLS(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	body := strings.Repeat("b", 100000)
	var first atomic.Bool
	var hijacked []net.Conn
	var mu sync.Mutex
	up := startUpstreamWith(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if first.Swap(true) {
			io.WriteString(w, "fresh")
			return
		}
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		hijacked = append(hijacked, c)
		mu.Unlock()
		// One write: crypto/tls cuts it into records, the last one holds
		// the body's end and the whole "next response".
		io.WriteString(c, fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)+
			"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED")
	}), nil)
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range hijacked {
			c.Close()
		}
	})
	h := newHarness(t, tca, nil)
	c := h.client(false)
	url := fmt.Sprintf("https://api.test:%d/x", up.addr.Port())
	if code, got := doReq(t, c, "GET", url, ""); code != 200 || got != body {
		t.Fatalf("first request: %d, %d bytes", code, len(got))
	}
	if code, got := doReq(t, c, "GET", url, ""); code != 200 || got != "fresh" {
		t.Fatalf("second request: %d %q, want 200 \"fresh\" from a new connection", code, got)
	}
}

// TestH1UpstreamReusedAfterHeaderTimeout: a connection whose small
// response was read whole goes back to the pool without the response
// header deadline, so it still serves a request after that deadline.
func TestH1UpstreamReusedAfterHeaderTimeout(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	var cc connCounter
	up := startUpstreamWith(t, tca, false, echoHandler(), cc.hook)
	h := newHarness(t, tca, nil, func(c *config.Proxy, _ *Deps) { c.ResponseHeaderTimeout = config.Duration(100 * time.Millisecond) })
	c := h.client(false)
	url := fmt.Sprintf("https://api.test:%d/", up.addr.Port())
	for i := 0; i < 2; i++ {
		if i > 0 {
			time.Sleep(300 * time.Millisecond) // past the first request's header deadline
		}
		if code, _ := doReq(t, c, "GET", url, ""); code != 200 {
			t.Fatalf("request %d: status %d", i, code)
		}
	}
	if n := cc.opened.Load(); n != 1 {
		t.Errorf("%d upstream connections for 2 requests 300 ms apart, want 1 (reused)", n)
	}
}

// TestH1UpstreamRequestWithoutHost: an HTTP/1.0 request without a Host
// header (transparent mode) goes upstream with the dialed address as its
// Host, as the Transport sends it, never an empty Host line.
func TestH1UpstreamRequestWithoutHost(t *testing.T) {
	hosts := make(chan string, 1)
	up := startRawUpstream(t, func(i int, req *http.Request) string {
		hosts <- req.Host
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	h := newHarness(t, nil, nil)
	addr := up.ln.Addr().String()
	c := transparent(t, h, Destination{Addr: mustAddrPort(addr)}, workload.Identity{PID: 9})
	if _, err := io.WriteString(c, "GET /nohost HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	select {
	case got := <-hosts:
		if got != addr {
			t.Errorf("the upstream got Host %q, want the dialed address %q", got, addr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream got no request")
	}
}

// heldWrites holds what is written through it while hold is set (a TLS
// server's records, one Write each), so a test can put them on the wire
// cut where it likes.
type heldWrites struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	recs [][]byte
}

func (c *heldWrites) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hold {
		c.recs = append(c.recs, append([]byte(nil), p...))
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// An upstream, as the attacker, sends the first bytes of a record nobody
// asked for with its answer's last record (so crypto/tls reads them off
// the socket with it and holds them, where neither the socket peek nor a
// read with a past deadline sees them) and the rest of that record, a
// whole "response", once the next request comes. The next client request
// must not get it: the connection is not reused.
func TestH1UpstreamStrayPartialTLSRecord(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cfg := &tls.Config{Certificates: []tls.Certificate{tca.leaf(t, "api.test")}}
	var attacked atomic.Bool
	acceptEach(ln, func(c net.Conn) {
		hw := &heldWrites{Conn: c}
		tc := tls.Server(hw, cfg)
		defer tc.Close()
		br := bufio.NewReader(tc)
		var rest []byte
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if rest != nil {
				c.Write(rest) // the stray record's rest, before the answer
				rest = nil
				time.Sleep(50 * time.Millisecond)
			}
			if attacked.Swap(true) {
				io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
				continue
			}
			hw.mu.Lock()
			hw.hold = true
			hw.mu.Unlock()
			io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED")
			hw.mu.Lock()
			hw.hold = false
			answer, stray := hw.recs[0], hw.recs[1]
			hw.recs = nil
			hw.mu.Unlock()
			c.Write(append(answer, stray[:3]...))
			rest = stray[3:]
		}
	})
	h := newHarness(t, tca, nil)
	c := h.client(false)
	url := fmt.Sprintf("https://api.test:%d/x", ln.Addr().(*net.TCPAddr).Port)
	if code, got := doReq(t, c, "GET", url, ""); code != 200 || got != "ok" {
		t.Fatalf("first request: %d %q", code, got)
	}
	time.Sleep(20 * time.Millisecond)
	if code, got := doReq(t, c, "GET", url, ""); code != 200 || got != "fresh" {
		t.Fatalf("second request: %d %q, want 200 \"fresh\" from a new connection", code, got)
	}
}

// recordConn follows record boundaries however the bytes come: whole,
// a byte at a time, or cut anywhere; it is mid-record exactly when the
// bytes so far end inside a record.
func FuzzRecordConnBoundaries(f *testing.F) {
	f.Add([]byte{0, 5, 0, 16, 3}, uint8(1))
	f.Add([]byte{0x40, 0x00, 0x00, 1, 2}, uint8(7))
	f.Fuzz(func(t *testing.T, sizes []byte, cut uint8) {
		// Records of the given small lengths, with 1-byte bodies
		// repeated; the last "size" byte picks a 16 KiB record too.
		var stream []byte
		var ends []int // the offsets where a record ends
		for i, s := range sizes {
			n := int(s)
			if i == len(sizes)-1 && s&1 == 1 {
				n = 16 << 10
			}
			stream = append(stream, 23, 3, 3, byte(n>>8), byte(n))
			stream = append(stream, make([]byte, n)...)
			ends = append(ends, len(stream))
		}
		step := int(cut)%7 + 1
		rc := &recordConn{}
		for off := 0; off < len(stream); {
			k := min(step, len(stream)-off)
			rc.follow(stream[off : off+k])
			off += k
			want := !slices.Contains(ends, off)
			if rc.midRecord() != want {
				t.Fatalf("at %d of %d (steps of %d): midRecord %v, want %v", off, len(stream), step, rc.midRecord(), want)
			}
		}
	})
}

// TestH1PoolProbeFindsHeldBytes: an upstream, as the attacker, puts
// what follows its answer on the wire in the same write as the
// answer's record, so that crypto/tls reads it off the socket with it
// and holds it, where the socket peek (idleOpen) no longer sees it: a
// whole record (a "response" nobody asked for), the first bytes of one,
// or a close_notify. The check before reuse, which asks the recordConn
// under the tls.Conn (probe) instead of setting a deadline, must find
// each, so that the next request goes on a new connection and never
// gets those bytes; with nothing held, the connection is reused. The
// second request is a POST, which a failed reused connection does not
// retry, so that a miss shows. Each case runs over a plain socket and
// over the proxy's own (sysConn), whose requests are held.
func TestH1PoolProbeFindsHeldBytes(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	cfg := &tls.Config{Certificates: []tls.Certificate{tca.leaf(t, "api.test")}}
	for _, c := range []struct {
		name  string
		after func(tc *tls.Conn) // writes what follows the answer
		cut   int                // how much of what follows goes on the wire; 0: all
		conns int32              // connections for two requests
	}{
		{"nothing", nil, 0, 1},
		{"whole record", func(tc *tls.Conn) {
			io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED")
		}, 0, 2},
		{"partial record", func(tc *tls.Conn) {
			io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED")
		}, 3, 2},
		{"close_notify", func(tc *tls.Conn) { tc.CloseWrite() }, 0, 2},
	} {
		for _, held := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/held=%v", c.name, held), func(t *testing.T) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				var conns atomic.Int32
				acceptEach(ln, func(nc net.Conn) {
					conns.Add(1)
					hw := &heldWrites{Conn: nc}
					tc := tls.Server(hw, cfg)
					defer tc.Close()
					br := bufio.NewReader(tc)
					for i := 0; ; i++ {
						req, err := http.ReadRequest(br)
						if err != nil {
							return
						}
						io.Copy(io.Discard, req.Body)
						if i > 0 {
							io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
							continue
						}
						if c.after == nil {
							io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
							continue
						}
						hw.mu.Lock()
						hw.hold = true
						hw.mu.Unlock()
						io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
						c.after(tc)
						hw.mu.Lock()
						hw.hold = false
						wire := hw.recs[0]
						for _, r := range hw.recs[1:] {
							wire = append(wire, r...)
						}
						if c.cut > 0 {
							wire = wire[:len(hw.recs[0])+c.cut]
						}
						hw.recs = nil
						hw.mu.Unlock()
						nc.SetWriteDeadline(time.Time{}) // CloseWrite leaves one in the past
						nc.Write(wire)                   // one write: one segment on loopback
					}
				})
				addr := ln.Addr().String()
				hp := tlsPool(t, tca, addr, held)
				if got := poolGet(t, hp, addr, time.Second); got != "first" {
					t.Fatalf("first request: %q", got)
				}
				time.Sleep(20 * time.Millisecond) // anything left on the wire is in by now
				want := "fresh"
				if c.after != nil {
					want = "first" // a new connection's first answer
				}
				// A POST: not sent again on a new connection when the
				// reused one fails, so only the check before reuse saves it.
				r, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", nil)
				resp, err := hp.roundTrip(context.Background(), &h1Request{r: r, host: addr}, time.Second)
				if err != nil {
					t.Fatalf("second request: %v", err)
				}
				if got := readAll(t, resp.Body); got != want {
					t.Fatalf("second request: %q, want %q", got, want)
				}
				resp.Body.Close()
				if n := conns.Load(); n != c.conns {
					t.Errorf("%d upstream connections for two requests, want %d", n, c.conns)
				}
			})
		}
	}
}

// TestH1PoolHeaderTimeoutKeptDeadline: a request on a busy connection
// keeps the read deadline the last one set when it ends late enough
// (headerSlack), and its response header timeout still fires: an
// upstream that never answers it fails it no sooner than the timeout
// after the request went out and no later than headerSlack after that
// (plus the test's scheduling allowance), on a plain connection and
// through the proxy (a 504).
func TestH1PoolHeaderTimeoutKeptDeadline(t *testing.T) {
	const rht = 200 * time.Millisecond
	const allowance = 150 * time.Millisecond // timers and scheduling on a loaded machine
	never := make(chan struct{})
	u := startRawUpstream(t, func(i int, req *http.Request) string {
		if req.URL.Path == "/never" {
			<-never
			return ""
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	t.Cleanup(func() { close(never) }) // before the upstream's cleanup, which waits for its handlers
	addr := u.ln.Addr().String()

	t.Run("pool", func(t *testing.T) {
		var dl deadlineLog
		hp := newH1Pool(func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, "tcp", addr)
			return deadlineConn{nc, &dl}, err
		}, 4, time.Minute)
		defer hp.closeIdle()
		if got := poolGet(t, hp, addr, rht); got != "ok" {
			t.Fatalf("first request: %q", got)
		}
		set, first := len(dl.times()), time.Now()
		r, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/never", nil)
		start := time.Now()
		_, err := hp.roundTrip(context.Background(), &h1Request{r: r, host: addr}, rht)
		took := time.Since(start)
		if !errors.Is(err, errResponseHeaderTimeout) {
			t.Fatalf("no answer: %v, want the header timeout", err)
		}
		if n := len(dl.times()) - set; n != 0 && start.Sub(first) < headerSlack(rht)/2 {
			t.Errorf("the second request set %d read deadlines, want the first's kept", n)
		}
		if took < rht || took > rht+headerSlack(rht)+allowance {
			t.Errorf("the header timeout of %v fired after %v, want %v to %v", rht, took, rht, rht+headerSlack(rht)+allowance)
		}
	})

	t.Run("proxy", func(t *testing.T) {
		h := newHarness(t, nil, nil, func(c *config.Proxy, _ *Deps) { c.ResponseHeaderTimeout = config.Duration(rht) })
		c := h.client(false)
		if code, got := doReq(t, c, "GET", u.url("/"), ""); code != 200 || got != "ok" {
			t.Fatalf("first request: %d %q", code, got)
		}
		start := time.Now()
		code, body := doReq(t, c, "GET", u.url("/never"), "")
		took := time.Since(start)
		if code != 504 || !strings.Contains(body, "sent no response headers within 200ms") {
			t.Fatalf("status %d body %q", code, body)
		}
		if took < rht || took > rht+headerSlack(rht)+allowance {
			t.Errorf("the 504 for a header timeout of %v came after %v, want %v to %v", rht, took, rht, rht+headerSlack(rht)+allowance)
		}
	})
}

// TestH1UpstreamPlainBodyArrivesWhole: a request body of declared length,
// larger than the pool's 4 KiB write buffer, reaches a plain-HTTP
// upstream whole and after its head: the request is held for the read
// of its answer (sysConn.holdWrites), and the part of the body the
// buffer hands to the socket's ReadFrom must not overtake it.
func TestH1UpstreamPlainBodyArrivesWhole(t *testing.T) {
	body := make([]byte, 10000)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, err := io.ReadAll(r.Body)
		if err != nil || !bytes.Equal(got, body) {
			http.Error(w, fmt.Sprintf("body of %d bytes, %v", len(got), err), http.StatusBadRequest)
			return
		}
		io.WriteString(w, "whole")
	}))
	defer up.Close()
	h := newHarness(t, nil, nil)
	c := h.client(false)
	url := fmt.Sprintf("http://api.test:%d/upload", up.Listener.Addr().(*net.TCPAddr).Port)
	for i := range 3 { // the first on a new upstream connection, the others on it again
		if code, got := doReq(t, c, "POST", url, string(body)); code != 200 || got != "whole" {
			t.Fatalf("POST %d: %d %q", i, code, got)
		}
	}
}

// tlsPool is a pool over TLS connections to addr (newUpstreamTLS). held:
// dialed as the proxy dials them, over newSysConn, so that its requests
// without a body are held for the read of their answer; else over a
// plain net.TCPConn, whose requests are written at once.
func tlsPool(t *testing.T, tca *testCA, addr string, held bool) *h1Pool {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(tca.cert)
	ccfg := &tls.Config{RootCAs: roots, ServerName: "api.test"}
	hp := newH1Pool(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		if held {
			nc = newSysConn(nc)
		}
		tc := newUpstreamTLS(nc, ccfg)
		if (heldSocket(tc) != nil) != held {
			t.Errorf("the pool's connection holds its requests: %v, want %v", !held, held)
		}
		return tc, tc.HandshakeContext(ctx)
	}, 4, time.Minute)
	t.Cleanup(hp.closeIdle)
	return hp
}

// TestH1PoolHeldRequestChecksTheSocket: an upstream, as the attacker,
// acts on a pooled connection after its answer, while the connection is
// idle: it sends a response nobody asked for, closes (close_notify and
// FIN), or half-closes (a FIN, its side still reading). The check that
// the socket is quiet now comes with the held request's send, after the
// poller's reset: each must be found there, the request not sent on
// that connection, and sent on a new one instead, a POST included (it
// went nowhere); it must never get the stray answer, nor wait for the
// response header timeout. A quiet connection is reused.
func TestH1PoolHeldRequestChecksTheSocket(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	cfg := &tls.Config{Certificates: []tls.Certificate{tca.leaf(t, "api.test")}}
	const rht = 3 * time.Second
	for _, c := range []struct {
		name  string
		after func(nc net.Conn, tc *tls.Conn) // what the upstream does once the first answer is out
		conns int32
	}{
		{"quiet", nil, 1},
		{"stray answer", func(nc net.Conn, tc *tls.Conn) {
			io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED")
		}, 2},
		{"close", func(nc net.Conn, tc *tls.Conn) { tc.Close() }, 2},
		{"half close", func(nc net.Conn, tc *tls.Conn) { nc.(*net.TCPConn).CloseWrite() }, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			var conns, posts atomic.Int32
			acceptEach(ln, func(nc net.Conn) {
				n := conns.Add(1)
				tc := tls.Server(nc, cfg)
				defer tc.Close()
				br := bufio.NewReader(tc)
				for i := 0; ; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if req.Method == http.MethodPost {
						posts.Add(1)
					}
					answer := "again"
					switch {
					case n > 1:
						answer = "fresh"
					case i == 0:
						answer = "first"
					}
					fmt.Fprintf(tc, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(answer), answer)
					if i == 0 && n == 1 && c.after != nil {
						time.Sleep(20 * time.Millisecond)
						c.after(nc, tc)
					}
				}
			})
			hp := tlsPool(t, tca, ln.Addr().String(), true)
			addr := ln.Addr().String()
			if got := poolGet(t, hp, addr, rht); got != "first" {
				t.Fatalf("first request: %q", got)
			}
			time.Sleep(60 * time.Millisecond) // what the upstream did is on the wire by now
			want := "fresh"
			if c.after == nil {
				want = "again"
			}
			r, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", nil)
			start := time.Now()
			resp, err := hp.roundTrip(context.Background(), &h1Request{r: r, host: addr}, rht)
			if err != nil {
				t.Fatalf("POST after the upstream's %s: %v", c.name, err)
			}
			if got := readAll(t, resp.Body); got != want {
				t.Fatalf("POST after the upstream's %s: %q, want %q", c.name, got, want)
			}
			resp.Body.Close()
			if took := time.Since(start); took > rht/2 {
				t.Errorf("the POST took %v: it waited on the connection the upstream left", took)
			}
			if n := conns.Load(); n != c.conns {
				t.Errorf("%d upstream connections, want %d", n, c.conns)
			}
			if n := posts.Load(); n != 1 {
				t.Errorf("the upstream read the POST %d times, want once", n)
			}
		})
	}
}

// TestH1PoolHeldRequestUpstreamSpeaksFirst: an upstream, as the
// attacker, sends an answer on a new connection before any request, in
// the same write as the end of its handshake, so that crypto/tls holds
// it and the held request's read is answered without reaching the
// socket. That request fails (it was never sent) and is not left held
// to go out in front of the next one: the next request, on a new
// connection, gets its own answer, never the first one's.
func TestH1PoolHeldRequestUpstreamSpeaksFirst(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	cfg := &tls.Config{Certificates: []tls.Certificate{tca.leaf(t, "api.test")}, MaxVersion: tls.VersionTLS12}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns atomic.Int32
	acceptEach(ln, func(nc net.Conn) {
		first := conns.Add(1) == 1
		lw := &laterWrites{Conn: nc, holding: first} // the handshake's last flight and the unasked answer in one write
		tc := tls.Server(lw, cfg)
		defer tc.Close()
		if err := tc.Handshake(); err != nil {
			return
		}
		if first {
			io.WriteString(tc, "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nUNASKED")
			lw.release()
		}
		br := bufio.NewReader(tc)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			fmt.Fprintf(tc, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(req.URL.Path), req.URL.Path)
		}
	})
	hp := tlsPool(t, tca, ln.Addr().String(), true)
	addr := ln.Addr().String()
	get := func(path string) (string, error) {
		r, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		resp, err := hp.roundTrip(context.Background(), &h1Request{r: r, host: addr}, 3*time.Second)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	if got, err := get("/first"); !errors.Is(err, errAnsweredUnasked) {
		t.Fatalf("/first on the connection whose upstream spoke first: %q, %v; want errAnsweredUnasked", got, err)
	}
	if got, err := get("/second"); err != nil || got != "/second" {
		t.Fatalf("/second: %q, %v; want its own answer", got, err)
	}
}

// laterWrites holds every write after the first while holding, and
// sends them in one write at release: a TLS 1.2 server's last
// handshake flight and what it writes next reach the peer together.
type laterWrites struct {
	net.Conn
	mu      sync.Mutex
	n       int
	holding bool
	held    []byte
}

func (w *laterWrites) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.n++
	if w.holding && w.n > 1 {
		w.held = append(w.held, p...)
		w.mu.Unlock()
		return len(p), nil
	}
	w.mu.Unlock()
	return w.Conn.Write(p)
}

func (w *laterWrites) release() {
	w.mu.Lock()
	b := w.held
	w.holding, w.held = false, nil
	w.mu.Unlock()
	w.Conn.Write(b)
}
