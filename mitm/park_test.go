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
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/workload"
)

// An idle keep-alive connection is let go by net/http and parked (see
// h1Conn.park); the requests that follow, whole, split around a pause or
// pipelined, are answered as before, on the same connection.
func TestIdleKeepAliveConnectionServesLaterRequests(t *testing.T) {
	var served atomic.Int64
	up := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		fmt.Fprintf(w, "%s %s\n", r.Method, r.URL.Path)
	}))
	h := newHarness(t, nil, nil)
	c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 7})
	br := bufio.NewReader(c)
	read := func(want string) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read response for %s: %v", want, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "GET "+want+"\n" {
			t.Fatalf("%s: %d %q", want, resp.StatusCode, b)
		}
	}
	io.WriteString(c, "GET /one HTTP/1.1\r\nHost: api.test\r\n\r\n")
	read("/one")
	time.Sleep(h1ParkAfter + 200*time.Millisecond) // idle: parked
	io.WriteString(c, "GET /two HTTP/1.1\r\nHost: api.test\r\n\r\n")
	read("/two")
	time.Sleep(h1ParkAfter + 200*time.Millisecond)
	io.WriteString(c, "G") // one byte wakes the parked connection, the rest follows
	time.Sleep(100 * time.Millisecond)
	io.WriteString(c, "ET /three HTTP/1.1\r\nHost: api.test\r\n\r\n")
	read("/three")
	time.Sleep(h1ParkAfter + 200*time.Millisecond)
	io.WriteString(c, "GET /four HTTP/1.1\r\nHost: api.test\r\n\r\nGET /five HTTP/1.1\r\nHost: api.test\r\n\r\n")
	read("/four")
	read("/five")
	if n := served.Load(); n != 5 {
		t.Fatalf("upstream served %d requests, want 5", n)
	}
}

// A parked connection is closed after proxy.idleTimeout, like one net/http
// holds idle.
func TestParkedConnectionClosedAfterIdleTimeout(t *testing.T) {
	up := startPlainUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	h := newHarness(t, nil, nil, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(300 * time.Millisecond) })
	c := transparent(t, h, Destination{Addr: up.addr}, workload.Identity{PID: 7})
	resp, body := rawRequest(t, c, "GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
	if resp.StatusCode != 200 || body != "ok\n" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err != io.EOF {
		t.Fatalf("read on the idle connection: %d, %v; want the proxy to close it (EOF)", n, err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("closed after %v with idleTimeout 300ms", d)
	}
}

// parkedClient is a decrypted HTTP/1.1 client connection to the proxy,
// transparent (served by Handle under ctx) or through the explicit
// proxy's CONNECT, after one request: about to be parked.
type parkedClient struct {
	*tls.Conn
	br *bufio.Reader
	w  *splitWriter // under the TLS client
}

func dialParked(t *testing.T, h *harness, ctx context.Context, up *upstream, explicit bool) *parkedClient {
	t.Helper()
	tc, w := dialProxyTLS(t, h, ctx, up, explicit, "http/1.1")
	c := &parkedClient{Conn: tc, w: w}
	c.br = bufio.NewReader(c.Conn)
	c.get(t, "/first")
	return c
}

// dialProxyTLS is a TLS client connection to the proxy for api.test,
// offering ALPN proto: transparent (served by Handle under ctx) or
// inside the explicit proxy's CONNECT. Its writes go through w.
func dialProxyTLS(t *testing.T, h *harness, ctx context.Context, up *upstream, explicit bool, proto string) (*tls.Conn, *splitWriter) {
	t.Helper()
	var raw net.Conn
	var err error
	if explicit {
		raw, err = net.Dial("tcp", h.url.Host)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(raw, "CONNECT api.test:%d HTTP/1.1\r\nHost: api.test\r\n\r\n", up.addr.Port())
		resp, err := http.ReadResponse(bufio.NewReaderSize(byteReader{raw}, 16), &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
	} else {
		addr := serveTransparent(t, h, ctx, 1, Destination{Addr: up.addr}, workload.Identity{PID: 7, Comm: "parked"})
		if raw, err = net.Dial("tcp", addr); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { raw.Close() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())
	w := &splitWriter{Conn: raw}
	return tls.Client(w, &tls.Config{ServerName: "api.test", RootCAs: pool, NextProtos: []string{proto}}), w
}

// get sends a request and checks the upstream's answer.
func (c *parkedClient) get(t *testing.T, path string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: api.test\r\n\r\n", path)
	c.answer(t, "GET", path)
}

func (c *parkedClient) answer(t *testing.T, method, path string) {
	t.Helper()
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != method+" "+path+"\n" {
		t.Fatalf("%s %s: %d %q", method, path, resp.StatusCode, b)
	}
}

// closedByProxy waits up to within for the proxy to close the connection.
func (c *parkedClient) closedByProxy(t *testing.T, within time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	n, err := c.br.Read(make([]byte, 1))
	if n != 0 || err != io.EOF {
		t.Fatalf("read on the parked connection: %d, %v; want the proxy to close it (EOF) within %v", n, err, within)
	}
}

// parkHarness is a proxy and a TLS upstream answering "METHOD PATH".
func parkHarness(t *testing.T, opts ...harnessOpt) (*harness, *upstream) {
	tca := newTestCA(t, "upstream test CA")
	up := startUpstream(t, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s\n", r.Method, r.URL.Path)
	}))
	return newHarness(t, tca, nil, opts...), up
}

// A parked connection is woken by its next request, by the client
// closing (its connection slot is free again), closed at the idle
// timeout and at shutdown (the proxy's context ends); the explicit
// proxy's CONNECT tunnels likewise.
func TestParkedConnectionWakesAndCloses(t *testing.T) {
	for _, explicit := range []bool{false, true} {
		mode := map[bool]string{false: "transparent", true: "explicit"}[explicit]
		t.Run(mode+"/next request", func(t *testing.T) {
			h, up := parkHarness(t)
			c := dialParked(t, h, context.Background(), up, explicit)
			time.Sleep(h1ParkAfter + 300*time.Millisecond)
			c.get(t, "/second")
			time.Sleep(h1ParkAfter + 300*time.Millisecond)
			c.get(t, "/third")
		})
		t.Run(mode+"/client closes", func(t *testing.T) {
			// One connection at a time: the next is refused until the
			// parked one's close has been noticed and its slot freed.
			h, up := parkHarness(t, func(c *config.Proxy, _ *Deps) { c.MaxConnections = 1 })
			c := dialParked(t, h, context.Background(), up, explicit)
			time.Sleep(h1ParkAfter + 300*time.Millisecond)
			c.Close()
			deadline := time.Now().Add(5 * time.Second)
			for {
				if served := tryDialParked(t, h, up, explicit); served {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the parked connection's slot was not freed within 5s of the client closing it")
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
		t.Run(mode+"/idle timeout", func(t *testing.T) {
			idle := h1ParkAfter + 700*time.Millisecond // parked for 700ms, then closed
			h, up := parkHarness(t, func(c *config.Proxy, _ *Deps) { c.IdleTimeout = config.Duration(idle) })
			c := dialParked(t, h, context.Background(), up, explicit)
			start := time.Now()
			c.closedByProxy(t, 10*time.Second)
			if d := time.Since(start); d < idle-200*time.Millisecond {
				t.Fatalf("closed after %v, before the idle timeout %v", d, idle)
			}
		})
		t.Run(mode+"/shutdown", func(t *testing.T) {
			h, up := parkHarness(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			c := dialParked(t, h, ctx, up, explicit)
			time.Sleep(h1ParkAfter + 300*time.Millisecond)
			if explicit {
				h.stop() // ServeExplicit's context
			} else {
				cancel() // Handle's
			}
			c.closedByProxy(t, 5*time.Second)
			// and its flow finished: its connection slot is free (and
			// sluice_proxy_open_connections down, in the same clean-up).
			for deadline := time.Now().Add(5 * time.Second); len(h.p.slots.all) > 0; {
				if time.Now().After(deadline) {
					t.Fatalf("%d connection slots still held 5s after shutdown", len(h.p.slots.all))
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// tryDialParked reports whether a new connection is served (not refused
// as one too many).
func tryDialParked(t *testing.T, h *harness, up *upstream, explicit bool) bool {
	t.Helper()
	var ok bool
	t.Run("attempt", func(t *testing.T) {
		defer func() {
			if !ok {
				t.SkipNow() // refused: the caller tries again
			}
		}()
		if explicit {
			c, err := net.Dial("tcp", h.url.Host)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "CONNECT api.test:%d HTTP/1.1\r\nHost: api.test\r\n\r\n", up.addr.Port())
			resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: http.MethodConnect})
			ok = err == nil && resp.StatusCode == http.StatusOK
			return
		}
		raw, err := net.Dial("tcp", serveTransparent(t, h, context.Background(), 1, Destination{Addr: up.addr}, workload.Identity{PID: 7}))
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(h.ca.BundlePEM())
		tc := tls.Client(raw, &tls.Config{ServerName: "api.test", RootCAs: pool})
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		ok = tc.Handshake() == nil // refused: closed before the handshake
	})
	return ok
}

// splitWriter holds, while holding, what a tls.Conn writes until the
// test sends it, in pieces of its choosing.
type splitWriter struct {
	net.Conn
	holding bool
	held    []byte
}

func (w *splitWriter) Write(b []byte) (int, error) {
	if !w.holding {
		return w.Conn.Write(b)
	}
	w.held = append(w.held, b...)
	return len(b), nil
}

func (w *splitWriter) send(t *testing.T, n int) {
	t.Helper()
	if _, err := w.Conn.Write(w.held[:n]); err != nil {
		t.Fatal(err)
	}
	w.held = w.held[n:]
}

// Part of a TLS record read into crypto/tls before the connection was
// parked is not stranded: the rest wakes it, and the request is served.
func TestParkedConnectionWithPartialTLSRecord(t *testing.T) {
	h, up := parkHarness(t)
	c := dialParked(t, h, context.Background(), up, false)
	c.w.holding = true
	fmt.Fprintf(c, "GET /split HTTP/1.1\r\nHost: api.test\r\n\r\n")
	if len(c.w.held) < 20 {
		t.Fatalf("request record of %d bytes", len(c.w.held))
	}
	c.w.send(t, 10) // the record's header and a little: read while idle
	time.Sleep(h1ParkAfter + 300*time.Millisecond)
	c.w.send(t, len(c.w.held))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	c.answer(t, "GET", "/split")
}
