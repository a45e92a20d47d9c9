package mitm

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
)

// The first request of a connection to the explicit listener, as its
// client sees it: a CONNECT tunnels (also with its first bytes sent in
// the same write), one the chain answers itself leaves the connection
// serving the next request, a denied host is refused inside its tunnel,
// and what is not a plain CONNECT (a probe, a malformed head) is
// answered by net/http's server as before.
func TestExplicitFirstRequest(t *testing.T) {
	up := startPlainUpstream(t, echoHandler())
	dec := &fakeDecider{conn: func(c *policy.Conn) policy.ConnDecision {
		if strings.HasPrefix(c.Host, "deny.test") {
			return policy.ConnDecision{Action: policy.Reject, Decision: policy.Decision{Verdict: policy.Deny, Rule: "deny-hosts", Reason: "host is denied"}}
		}
		return policy.ConnDecision{Action: policy.Decrypt, Decision: policy.Decision{Rule: "test", Reason: "test allows"}}
	}}
	h := newHarness(t, nil, dec)
	dial := func(t *testing.T) (net.Conn, *bufio.Reader) { return dialExplicit(t, h) }
	read := func(t *testing.T, br *bufio.Reader, method string) (int, string) {
		t.Helper()
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("read the answer to %s: %v", method, err)
		}
		defer resp.Body.Close()
		if method == http.MethodConnect && resp.StatusCode == 200 {
			return 200, ""
		}
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	t.Run("CONNECT with the tunnel's first request in the same write", func(t *testing.T) {
		c, br := dial(t)
		target := up.addr.String()
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\nUser-Agent: first-test\r\n\r\n"+
			"GET /inside HTTP/1.1\r\nHost: %[1]s\r\n\r\n", target)
		if code, _ := read(t, br, http.MethodConnect); code != 200 {
			t.Fatalf("CONNECT: %d, want 200", code)
		}
		if code, body := read(t, br, http.MethodGet); code != 200 || !strings.HasPrefix(body, "hello GET /inside HTTP/1.1") {
			t.Fatalf("GET inside the tunnel: %d %q, want the upstream's hello", code, body)
		}
	})
	t.Run("CONNECT answered by the chain, then a probe on the same connection", func(t *testing.T) {
		c, br := dial(t)
		fmt.Fprintf(c, "CONNECT nohost HTTP/1.1\r\nHost: nohost\r\n\r\n")
		code, body := read(t, br, http.MethodConnect)
		if code != http.StatusBadRequest || !strings.Contains(body, "want host:port") {
			t.Fatalf("CONNECT without a port: %d %q, want Sluice's 400", code, body)
		}
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
		if code, body := read(t, br, http.MethodGet); code != 200 || body != "ok\n" {
			t.Fatalf("probe after the answered CONNECT: %d %q, want 200 ok", code, body)
		}
	})
	t.Run("denied host: the tunnel opens, its first request is refused", func(t *testing.T) {
		c, br := dial(t)
		fmt.Fprintf(c, "CONNECT deny.test:80 HTTP/1.1\r\nHost: deny.test:80\r\n\r\nGET / HTTP/1.1\r\nHost: deny.test\r\n\r\n")
		if code, _ := read(t, br, http.MethodConnect); code != 200 {
			t.Fatalf("CONNECT: %d, want 200", code)
		}
		if code, body := read(t, br, http.MethodGet); code != http.StatusForbidden || !strings.Contains(body, `"rule":"deny-hosts"`) {
			t.Fatalf("GET inside the tunnel to a denied host: %d %q, want 403 naming rule deny-hosts", code, body)
		}
	})
	// Heads that are not a plain CONNECT get net/http's 400, at once:
	// with no empty line after them, long before the handshake
	// timeout (10s).
	for _, tc := range []struct{ name, head string }{
		{"two Host fields", "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nHost: b.test:443\r\n\r\n"},
		{"a malformed field line", "CONNECT a.test:443 HTTP/1.1\r\nHost a.test\r\n"},
		{"a target the URL parser refuses", "CONNECT a.test:https HTTP/1.1\r\n"},
	} {
		t.Run(tc.name+" gets net/http's 400 at once", func(t *testing.T) {
			c, br := dial(t)
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			io.WriteString(c, tc.head)
			if code, _ := read(t, br, http.MethodConnect); code != http.StatusBadRequest {
				t.Fatalf("%q: %d, want 400", tc.head, code)
			}
		})
	}
	t.Run("a probe first", func(t *testing.T) {
		c, br := dial(t)
		fmt.Fprintf(c, "GET /readyz HTTP/1.1\r\nHost: proxy\r\n\r\n")
		if code, body := read(t, br, http.MethodGet); code != 200 || body != "ready\n" {
			t.Fatalf("probe: %d %q, want 200 ready", code, body)
		}
	})
}

// The limits net/http's server kept for the first request hold: a
// CONNECT head over proxy.maxHeaderBytes gets 431 however it arrives,
// and after an answered CONNECT the next request has idleTimeout, not
// the handshake's, to begin.
func TestExplicitFirstRequestLimits(t *testing.T) {
	h := newHarness(t, nil, nil, func(c *config.Proxy, _ *Deps) {
		c.MaxHeaderBytes = 1024
		c.HandshakeTimeout = config.Duration(300 * time.Millisecond)
	})
	dial := func(t *testing.T) (net.Conn, *bufio.Reader) { return dialExplicit(t, h) }
	t.Run("a CONNECT head over maxHeaderBytes in one write", func(t *testing.T) {
		c, br := dial(t)
		fmt.Fprintf(c, "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nX-Pad: %s\r\n\r\n", strings.Repeat("p", 2000))
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("CONNECT with a 2 KiB head under a 1 KiB limit: %v %v, want 431", resp, err)
		}
	})
	t.Run("a head cut mid-line at the handshake timeout", func(t *testing.T) {
		// As net/http's server: the line cut short is answered 400,
		// and recorded.
		c, br := dial(t)
		fmt.Fprintf(c, "CONNECT cut.test:443 HTT")
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("a head cut short: %v %v, want 400", resp, err)
		}
		h.recs.wait(t, "the cut head's record", func(r audit.Record) bool { return r.Status == http.StatusBadRequest })
	})
	t.Run("the request after an answered CONNECT, later than the handshake timeout", func(t *testing.T) {
		c, br := dial(t)
		fmt.Fprintf(c, "CONNECT nohost HTTP/1.1\r\nHost: nohost\r\n\r\n")
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("CONNECT without a port: %v %v, want 400", resp, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		time.Sleep(time.Second) // past 300ms, within idleTimeout (90s)
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
		resp, err = http.ReadResponse(br, &http.Request{Method: http.MethodGet})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("probe 1s after the answer: %v %v, want 200", resp, err)
		}
	})
}

// ServeExplicit keeps accepting through an accept error that says it is
// temporary, as net/http's Serve does, and leaves no connection of its
// listener open when it returns, also when its context was cancelled
// before it started.
func TestServeExplicitAcceptErrors(t *testing.T) {
	h := newHarness(t, nil, nil)
	t.Run("a temporary accept error", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- h.p.ServeExplicit(ctx, &failOnceListener{Listener: ln}) }()
		defer func() { cancel(); <-done }()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("probe after an ETIMEDOUT from accept: %v %v, want 200", resp, err)
		}
	})
	t.Run("cancelled before it starts", func(t *testing.T) {
		for range 20 {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var conns []net.Conn
			for range 4 {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				conns = append(conns, c)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := h.p.ServeExplicit(ctx, ln); err != nil {
				t.Fatalf("ServeExplicit on a cancelled context: %v", err)
			}
			for i, c := range conns {
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
					t.Fatalf("connection %d still open after ServeExplicit returned: %v", i, err)
				}
			}
		}
	})
}

// dialExplicit is a connection to h's explicit listener, closed when t
// ends, with a reader of its answers.
func dialExplicit(t *testing.T, h *harness) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", h.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

// failOnceListener fails its first Accept with ETIMEDOUT, which Linux's
// accept may return.
type failOnceListener struct {
	net.Listener
	failed bool
}

func (l *failOnceListener) Accept() (net.Conn, error) {
	if !l.failed {
		l.failed = true
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.ETIMEDOUT)}
	}
	return l.Listener.Accept()
}

// A CONNECT tunnel costs none of net/http's per-connection state: its
// first request is read with a pooled buffer, and net/http's server,
// whose 4 KiB read and write buffers a hijacked connection never gives
// back, does not serve it.
func TestExplicitConnectSkipsNetHTTP(t *testing.T) {
	echo := startEcho(t)
	h := newHarness(t, nil, nil)
	tunnel := func() {
		c, err := net.Dial("tcp", h.url.Host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n\r\nping\n", echo)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("through the tunnel: %q %v, want the echo of ping", line, err)
		}
	}
	if got := netHTTPAllocated(t, 16, tunnel); got >= 16*1024 {
		t.Errorf("16 CONNECT tunnels: net/http's server allocated %d bytes for them, want none", got)
	}
}

// TestExplicit407ThenCredentialsSkipsNetHTTP: a client that sends its
// credentials only once asked (a 407 first, then the CONNECT again on
// the same connection, as browsers, Java and .NET do) gets its tunnel,
// and its second CONNECT is read as the first was, not by net/http's
// server (22 KiB allocated per tunnel there, never given back); what
// follows a 407 and is not a plain CONNECT still goes to net/http's
// server, which answers it.
func TestExplicit407ThenCredentialsSkipsNetHTTP(t *testing.T) {
	echo := startEcho(t)
	users := t.TempDir() + "/users"
	if err := os.WriteFile(users, []byte("alice:open-sesame\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, nil, nil, func(cfg *config.Proxy, _ *Deps) { cfg.Clients.UsersFile = users })
	const alice = "Basic YWxpY2U6b3Blbi1zZXNhbWU=" // alice:open-sesame
	connect := func(c net.Conn, br *bufio.Reader, auth string) int {
		t.Helper()
		if auth != "" {
			auth = "Proxy-Authorization: " + auth + "\r\n"
		}
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n%s\r\n", echo, auth)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			t.Fatalf("CONNECT: %v", err)
		}
		if resp.StatusCode != 200 {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp.StatusCode
	}
	tunnel := func() {
		c, br := dialExplicit(t, h)
		defer c.Close()
		if code := connect(c, br, ""); code != http.StatusProxyAuthRequired {
			t.Fatalf("CONNECT without credentials: %d, want 407", code)
		}
		if code := connect(c, br, alice); code != 200 {
			t.Fatalf("CONNECT with alice's credentials after the 407: %d, want 200", code)
		}
		io.WriteString(c, "ping\n")
		if line, err := br.ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("through the tunnel: %q %v, want the echo of ping", line, err)
		}
	}
	if got := netHTTPAllocated(t, 16, tunnel); got >= 16*1024 {
		t.Errorf("16 tunnels after a 407: net/http's server allocated %d bytes for them, want none", got)
	}
	t.Run("a probe after the 407 goes to net/http's server", func(t *testing.T) {
		c, br := dialExplicit(t, h)
		if code := connect(c, br, ""); code != http.StatusProxyAuthRequired {
			t.Fatalf("CONNECT without credentials: %d, want 407", code)
		}
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read the probe's answer: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "ok\n" {
			t.Fatalf("probe after the 407: %d %q, want 200 ok", resp.StatusCode, b)
		}
	})
	t.Run("a malformed head after a 407 net/http's server gave is not recorded as the CONNECT", func(t *testing.T) {
		c, br := dialExplicit(t, h)
		// A Connection field: not the plain shape, so net/http's server
		// reads this CONNECT, and the framing tracker stops at it.
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\nConnection: keep-alive\r\n\r\n", echo)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusProxyAuthRequired {
			t.Fatalf("CONNECT without credentials: %v %v, want 407", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		io.WriteString(c, "GET /after-407 HTTP/1.1\r\nHost: proxy\r\nNo colon here\r\n\r\n")
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 400 {
			t.Fatalf("malformed head: %v %v, want 400", resp, err)
		}
		rec := h.recs.wait(t, "400", func(r audit.Record) bool { return r.Status == 400 })
		if rec.Method == http.MethodConnect {
			t.Errorf("the 400 is recorded as the CONNECT before it: %+v", rec)
		}
	})
}

// startEcho is a raw TCP echo server, a tunnel's far end with no
// net/http in this process but the proxy's; its address.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// netHTTPAllocated runs do once to warm up and then n times, and says
// how many bytes net/http's server allocated meanwhile (every allocation
// profiled).
func netHTTPAllocated(t *testing.T, n int, do func()) int64 {
	t.Helper()
	do() // warm up
	defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
	runtime.MemProfileRate = 1
	// The profile is as of the last completed cycle, and counts since
	// the process started: what the runs add is the difference.
	runtime.GC()
	runtime.GC()
	_, before := profileFrom(t, "net/http.(*conn).serve", "")
	for range n {
		do()
	}
	runtime.GC()
	runtime.GC()
	_, after := profileFrom(t, "net/http.(*conn).serve", "")
	return after - before
}

// FuzzConnectHead holds readConnect to what net/http's server serves as
// it is: a head it takes is a CONNECT of HTTP/1.1 with no body, to a
// valid host, whose fields net/http's server would not refuse.
func FuzzConnectHead(f *testing.F) {
	for _, s := range []string{
		"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n",
		"CONNECT 198.51.100.7:443 HTTP/1.1\r\nHost: 198.51.100.7:443\r\nUser-Agent: curl/8\r\nProxy-Connection: Keep-Alive\r\n\r\n",
		"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nhost: [2001:db8::1]:443\r\nProxy-Authorization: Basic YTpi\r\n\r\n",
		"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\nHost: b:1\r\n\r\n",
		"CONNECT api.test:443 HTTP/1.0\r\nHost: api.test:443\r\n\r\n",
		"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\nContent-Length: 3\r\n\r\n",
		"CONNECT /path HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"CONNECT  api.test:443 HTTP/1.1\r\nHost: x\r\n\r\n",
		"CONNECT api.test:443 HTTP/1.1\nHost: x\n\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, head []byte) {
		if headEnd(head) != len(head) {
			return
		}
		r := readConnect(head)
		if r == nil {
			return
		}
		// Every start of it may begin one: serveFirst reads on.
		for n := range len(head) {
			if headEnd(head[:n]) == 0 && !connectScan(head[:n], true) {
				t.Fatalf("connectScan refused %q, the start of %q", head[:n], head)
			}
		}
		if r.Method != http.MethodConnect || r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.Close ||
			r.ContentLength != 0 || r.TransferEncoding != nil || !httpguts.ValidHostHeader(r.Host) {
			t.Fatalf("readConnect took %q: %s HTTP/%d.%d close %v length %d TE %v host %q", head,
				r.Method, r.ProtoMajor, r.ProtoMinor, r.Close, r.ContentLength, r.TransferEncoding, r.Host)
		}
		for k, vs := range r.Header {
			if !httpguts.ValidHeaderFieldName(k) {
				t.Fatalf("readConnect took %q with field name %q", head, k)
			}
			for _, v := range vs {
				if !httpguts.ValidHeaderFieldValue(v) {
					t.Fatalf("readConnect took %q with field value %q", head, v)
				}
			}
		}
	})
}
