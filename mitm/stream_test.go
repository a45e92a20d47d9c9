package mitm

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// TestSSEEventsArriveAsFlushed: the upstream writes event N+1 only after
// the client has read event N, so a proxy that buffered would deadlock
// (and the client's timeout fails the test).
func TestSSEEventsArriveAsFlushed(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			const events = 5
			ack := make(chan int)
			sent := make(chan int, events)
			up := startUpstream(t, tca, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				rc := http.NewResponseController(w)
				for i := 0; i < events; i++ {
					fmt.Fprintf(w, "id: %d\ndata: event %d\n\n", i, i)
					if err := rc.Flush(); err != nil {
						return
					}
					sent <- i
					select {
					case got := <-ack:
						if got != i {
							return
						}
					case <-r.Context().Done():
						return
					case <-time.After(15 * time.Second):
						return
					}
				}
			}))
			h := newHarness(t, tca, nil)
			resp, err := h.client(h2).Get(fmt.Sprintf("https://api.test:%d/events", up.addr.Port()))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			for i := 0; i < events; i++ {
				var lines []string
				for {
					l, err := br.ReadString('\n')
					if err != nil {
						t.Fatalf("event %d: %v", i, err)
					}
					if l == "\n" {
						break
					}
					lines = append(lines, strings.TrimSpace(l))
				}
				if want := fmt.Sprintf("data: event %d", i); len(lines) != 2 || lines[1] != want {
					t.Fatalf("event %d: got %q", i, lines)
				}
				// The upstream has sent exactly events 0..i: nothing later.
				if got := <-sent; got != i {
					t.Fatalf("upstream sent %d while the client read %d", got, i)
				}
				select {
				case s := <-sent:
					t.Fatalf("upstream sent event %d before the client acknowledged %d", s, i)
				default:
				}
				ack <- i
			}
			if rest := readAll(t, br); rest != "" {
				t.Fatalf("trailing bytes %q", rest)
			}
		})
	}
}

func TestWebSocketEcho(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	}))
	h := newHarness(t, tca, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, fmt.Sprintf("wss://api.test:%d/ws", up.addr.Port()), &websocket.DialOptions{HTTPClient: h.client(false)})
	if err != nil {
		t.Fatalf("dial: %v (resp %v)", err, resp)
	}
	for i := 0; i < 3; i++ {
		msg := fmt.Sprintf("message %d", i)
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "echo: "+msg {
			t.Fatalf("got %q", got)
		}
	}
	c.Close(websocket.StatusNormalClosure, "bye")
	rec := h.recs.wait(t, "for the websocket", func(r audit.Record) bool { return r.Path == "/ws" })
	if rec.Status != 101 || rec.BytesIn == 0 || rec.BytesOut == 0 || rec.Source != "upstream" {
		t.Errorf("record %+v", rec)
	}
}

func TestTrailersKept(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			up := startUpstream(t, tca, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Trailer", "X-Checksum")
				io.WriteString(w, "body")
				w.Header().Set("X-Checksum", "abc123")
				w.Header().Set(http.TrailerPrefix+"X-Late", "late")
			}))
			h := newHarness(t, tca, nil)
			resp, err := h.client(h2).Get(fmt.Sprintf("https://api.test:%d/t", up.addr.Port()))
			if err != nil {
				t.Fatal(err)
			}
			if b := readAll(t, resp.Body); b != "body" {
				t.Fatalf("body %q", b)
			}
			resp.Body.Close()
			if resp.Trailer.Get("X-Checksum") != "abc123" || resp.Trailer.Get("X-Late") != "late" {
				t.Fatalf("trailers %v", resp.Trailer)
			}
		})
	}
}

func TestPassthroughShowsUpstreamCertificate(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, true, echoHandler())
	dec := &fakeDecider{conn: func(c *policy.Conn) policy.ConnDecision {
		if policy.MatchHost("*.pass.test", c.Host) || c.Host == "pass.test" {
			return policy.ConnDecision{Action: policy.Passthrough, Decision: policy.Decision{Rule: "pass", Reason: "host is on the pass-through list"}}
		}
		return policy.ConnDecision{Action: policy.Decrypt}
	}}
	h := newHarness(t, tca, dec)
	// The client trusts the upstream's CA, not Sluice's.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(tca.pem)
	c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(h.url), TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	resp, err := c.Get(fmt.Sprintf("https://pass.test:%d/x", up.addr.Port()))
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp.Body)
	resp.Body.Close()
	c.CloseIdleConnections()
	if body != "hello GET /x HTTP/2.0 body=" {
		t.Fatalf("body %q", body)
	}
	if got, want := fingerprint(resp.TLS.PeerCertificates[0].Raw), fingerprint(up.cert.Certificate[0]); got != want {
		t.Fatalf("client saw certificate %s, upstream's is %s", got, want)
	}
	rec := h.recs.wait(t, "L4 passthrough", func(r audit.Record) bool { return r.Kind == audit.KindL4 })
	if rec.TLS != audit.TLSPassthrough || rec.SNI != "pass.test" || rec.Host != "pass.test" || rec.BytesIn == 0 || rec.BytesOut == 0 ||
		rec.Decision != "allow" || rec.Rule != "pass" || rec.UpstreamAddr != up.addr.String() || rec.Duration <= 0 {
		t.Errorf("record %+v", rec)
	}
	for _, r := range h.recs.all() {
		if r.Kind == audit.KindHTTP {
			t.Errorf("a pass-through flow produced an HTTP record: %+v", r)
		}
	}
}

func TestDenyAnswers403JSON(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	hits := 0
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits++ }))
	deny := policy.Decision{Verdict: policy.Deny, Rule: "no-admin", Reason: "path is denied", Header: http.Header{"X-Sluice-Rule": {"no-admin"}}}
	dec := &fakeDecider{req: func(r *policy.Request) policy.Decision {
		if strings.HasPrefix(r.Path, "/admin") {
			return deny
		}
		return policy.Decision{Rule: "default"}
	}}
	h := newHarness(t, tca, dec)
	for _, h2 := range []bool{false, true} {
		resp, err := h.client(h2).Get(fmt.Sprintf("https://api.test:%d/admin/users", up.addr.Port()))
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("X-Sluice-Rule") != "no-admin" {
			t.Fatalf("status %d header %v", resp.StatusCode, resp.Header)
		}
		if body != string(deny.DenyBody()) {
			t.Fatalf("body %q, want %q", body, deny.DenyBody())
		}
		var v map[string]string
		if err := json.Unmarshal([]byte(body), &v); err != nil || v["error"] != "Forbidden" || v["rule"] != "no-admin" || v["reason"] != "path is denied" {
			t.Fatalf("body %q: %v", body, err)
		}
	}
	if hits != 0 {
		t.Fatalf("upstream saw %d denied requests", hits)
	}
	rec := h.recs.wait(t, "deny", func(r audit.Record) bool { return r.Decision == "deny" })
	if rec.Status != 403 || rec.Source != "sluice" || rec.Rule != "no-admin" || rec.Reason != "path is denied" || rec.Path != "/admin/users" {
		t.Errorf("record %+v", rec)
	}
}

func TestConnectionRejectClosesTLS(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, echoHandler())
	dec := &fakeDecider{conn: func(c *policy.Conn) policy.ConnDecision {
		return policy.ConnDecision{Action: policy.Reject, Decision: policy.Decision{Verdict: policy.Deny, Rule: "deny-hosts", Reason: "host is denied"}}
	}}
	h := newHarness(t, tca, dec)
	_, err := h.client(false).Get(fmt.Sprintf("https://deny.test:%d/", up.addr.Port()))
	if err == nil {
		t.Fatal("request to a rejected host succeeded")
	}
	rec := h.recs.wait(t, "L4 deny", func(r audit.Record) bool { return r.Kind == audit.KindL4 })
	if rec.Decision != "deny" || rec.SNI != "deny.test" || rec.Rule != "deny-hosts" || rec.Reason != "host is denied" {
		t.Errorf("record %+v", rec)
	}
	// Plain HTTP to a rejected host gets the deny answer.
	plain := startPlainUpstream(t, echoHandler())
	resp, err := h.client(false).Get(fmt.Sprintf("http://deny.test:%d/x", plain.addr.Port()))
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || !strings.Contains(body, `"rule":"deny-hosts"`) {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
}

func TestPlainHTTPAbsoluteForm(t *testing.T) {
	plain := startPlainUpstream(t, echoHandler())
	h := newHarness(t, nil, nil)
	c := h.client(false)
	for i := 0; i < 2; i++ {
		resp, err := c.Get(fmt.Sprintf("http://api.test:%d/plain", plain.addr.Port()))
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp.Body)
		resp.Body.Close()
		if body != "hello GET /plain HTTP/1.1 body=" {
			t.Fatalf("body %q", body)
		}
	}
	rec := h.recs.wait(t, "plain", func(r audit.Record) bool { return r.Path == "/plain" })
	if rec.TLS != audit.TLSNone || rec.Host != "api.test" || rec.Port != plain.addr.Port() || rec.Status != 200 || rec.UpstreamAddr != plain.addr.String() {
		t.Errorf("record %+v", rec)
	}
	if n := len(h.dec.connections()); n != 1 {
		t.Errorf("Connection called %d times for one host, want 1", n)
	}
}

// serveTransparent serves the next n connections (n < 0: every one)
// accepted on a loopback listener with Handle under ctx, as the agent
// does, with dst the original destination and id the workload; it
// returns the listener's address. Its accept loop ends with the n-th
// connection, so it holds no goroutine after.
func serveTransparent(tb testing.TB, h *harness, ctx context.Context, n int, dst Destination, id workload.Identity) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		defer ln.Close()
		for ; n != 0; n-- {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go h.p.Handle(ctx, c, dst, id)
		}
	}()
	return ln.Addr().String()
}

// transparent is a client connection served by serveTransparent.
func transparent(t *testing.T, h *harness, dst Destination, id workload.Identity) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", serveTransparent(t, h, context.Background(), 1, dst, id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestTransparentHandle(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, true, echoHandler())
	h := newHarness(t, tca, nil)
	id := workload.Identity{PID: 4242, Comm: "agent-tool", Cgroup: "/test.slice/x.scope"}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())

	t.Run("tls with SNI over h2", func(t *testing.T) {
		c := transparent(t, h, Destination{Addr: up.addr}, id)
		tc := tls.Client(c, &tls.Config{ServerName: "api.test", RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
			t.Fatalf("ALPN %q, want h2 (the upstream speaks it)", p)
		}
		tc.Close()
	})
	t.Run("tls without SNI gets an IP leaf", func(t *testing.T) {
		c := transparent(t, h, Destination{Addr: up.addr}, id)
		tc := tls.Client(c, &tls.Config{ServerName: "127.0.0.1", RootCAs: pool})
		fmt.Fprintf(tc, "GET /nosni HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			t.Fatal(err)
		}
		if b := readAll(t, resp.Body); b != "hello GET /nosni HTTP/1.1 body=" {
			t.Fatalf("body %q", b)
		}
		if ips := tc.ConnectionState().PeerCertificates[0].IPAddresses; len(ips) != 1 || ips[0].String() != "127.0.0.1" {
			t.Fatalf("leaf IPs %v", ips)
		}
		rec := h.recs.wait(t, "nosni", func(r audit.Record) bool { return r.Path == "/nosni" })
		if rec.Workload.PID != 4242 || rec.Workload.Comm != "agent-tool" || rec.SNI != "" || rec.Host != "api.test" || rec.DstIP.String() != "127.0.0.1" || rec.Port != up.addr.Port() {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("plain http", func(t *testing.T) {
		plain := startPlainUpstream(t, echoHandler())
		c := transparent(t, h, Destination{Addr: plain.addr}, id)
		fmt.Fprintf(c, "GET /plain HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if b := readAll(t, resp.Body); b != "hello GET /plain HTTP/1.1 body=" {
			t.Fatalf("body %q", b)
		}
		rec := h.recs.wait(t, "plain", func(r audit.Record) bool { return r.Path == "/plain" && r.Workload.PID == 4242 })
		if rec.TLS != audit.TLSNone || rec.Host != "api.test" || rec.UpstreamAddr != plain.addr.String() {
			t.Errorf("record %+v", rec)
		}
	})
	t.Run("h2 through http.Transport", func(t *testing.T) {
		tr := &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool},
			ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return transparent(t, h, Destination{Addr: up.addr}, id), nil
			},
		}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 20 * time.Second}).Get("https://api.test/h2")
		if err != nil {
			t.Fatal(err)
		}
		if b := readAll(t, resp.Body); b != "hello GET /h2 HTTP/2.0 body=" || resp.Proto != "HTTP/2.0" {
			t.Fatalf("body %q proto %s", b, resp.Proto)
		}
		resp.Body.Close()
	})
}

// TestTransparentH2C: HTTP/2 with prior knowledge (gRPC without TLS) is
// parsed and decided per request, not relayed blind.
func TestTransparentH2C(t *testing.T) {
	up := startPlainUpstream(t, h2c.NewHandler(echoHandler(), &http2.Server{}))
	dec := &fakeDecider{req: func(r *policy.Request) policy.Decision {
		if r.Path == "/blocked" {
			return policy.Decision{Verdict: policy.Deny, Rule: "r", Reason: "blocked path"}
		}
		return policy.Decision{Rule: "ok"}
	}}
	h := newHarness(t, nil, dec)
	id := workload.Identity{PID: 99}
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			return transparent(t, h, Destination{Addr: up.addr}, id), nil
		},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	resp, err := c.Get("http://api.test/h2c")
	if err != nil {
		t.Fatal(err)
	}
	if b := readAll(t, resp.Body); b != "hello GET /h2c HTTP/2.0 body=" || resp.ProtoMajor != 2 {
		t.Fatalf("body %q proto %s", b, resp.Proto)
	}
	resp.Body.Close()
	resp, err = c.Get("http://api.test/blocked")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	rec := h.recs.wait(t, "h2c", func(r audit.Record) bool { return r.Path == "/h2c" })
	if rec.Proto != "HTTP/2.0" || rec.TLS != audit.TLSNone || rec.Host != "api.test" || rec.Workload.PID != 99 || rec.UpstreamAddr != up.addr.String() {
		t.Errorf("record %+v", rec)
	}
}

func TestRequestTrailersForwarded(t *testing.T) {
	tca := newTestCA(t, "upstream test CA")
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			up := startUpstream(t, tca, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				fmt.Fprintf(w, "%s trailer=%s te=%s", b, r.Trailer.Get("X-Sum"), r.Header.Get("Te"))
			}))
			h := newHarness(t, tca, nil)
			req, _ := http.NewRequest("POST", fmt.Sprintf("https://api.test:%d/rt", up.addr.Port()), io.MultiReader(strings.NewReader("data")))
			req.Trailer = http.Header{"X-Sum": {"42"}}
			req.Header.Set("Te", "trailers")
			resp, err := h.client(h2).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readAll(t, resp.Body)
			resp.Body.Close()
			if body != "data trailer=42 te=trailers" {
				t.Fatalf("upstream saw %q", body)
			}
		})
	}
}
