package mitm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// benchResponse is what a Go upstream (benchpeers) answers: a short body
// of declared length.
const benchResponse = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	"Date: Sun, 29 Nov 2026 16:00:00 GMT\r\n\r\nhello, world\n"

// serveCanned answers every request head read on the connections ln
// accepts (no request bodies) with resp, in as few reads and writes as
// it can, so that the benchmark measures the pool's side.
func serveCanned(b testing.TB, ln net.Listener, resp string) {
	b.Helper()
	acceptEach(ln, func(c net.Conn) {
		defer c.Close()
		buf := make([]byte, 8<<10)
		n := 0
		for {
			m, err := c.Read(buf[n:])
			if err != nil {
				return
			}
			n += m
			for {
				i := bytes.Index(buf[:n], []byte("\r\n\r\n"))
				if i < 0 {
					break
				}
				n = copy(buf, buf[i+4:n])
				if _, err := io.WriteString(c, resp); err != nil {
					return
				}
			}
		}
	})
	b.Cleanup(func() { ln.Close() })
}

// BenchmarkH1PoolExchange: one request and its response through an
// h1Pool on a kept-alive upstream connection, over plain TCP and TLS
// (dialed as Sluice dials it, over a recordConn).
func BenchmarkH1PoolExchange(b *testing.B) {
	for _, useTLS := range []bool{false, true} {
		name := "tcp"
		if useTLS {
			name = "tls"
		}
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			var ccfg *tls.Config
			if useTLS {
				tca := newTestCA(b, "bench CA")
				ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{tca.leaf(b, "api.test")}})
				ccfg = &tls.Config{InsecureSkipVerify: true, ServerName: "api.test"} //nolint:gosec // a test's own upstream
			}
			serveCanned(b, ln, benchResponse)
			addr := ln.Addr().String()
			dial := func(ctx context.Context) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp", addr)
				if err != nil || ccfg == nil {
					return c, err
				}
				tc := newUpstreamTLS(c, ccfg)
				return tc, tc.HandshakeContext(ctx)
			}
			hp := newH1Pool(dial, 4, time.Minute)
			defer hp.closeIdle()
			r, _ := http.NewRequest(http.MethodGet, "http://api.test/bench?q=1", nil)
			r.Header.Set("User-Agent", "bench")
			r.Header.Set("Accept", "*/*")
			req := &h1Request{r: r, host: "api.test"}
			ctx := context.Background()
			buf := make([]byte, 512)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := processCPU()
			for range b.N {
				resp, err := hp.roundTrip(ctx, req, time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				n := 0
				for {
					m, err := resp.Body.Read(buf[n:])
					n += m
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				resp.Body.Close()
				if resp.StatusCode != 200 || n != 13 {
					b.Fatalf("%d, %d bytes", resp.StatusCode, n)
				}
			}
			// The process's CPU (the upstream's included, the same
			// before and after): wall time here is mostly loopback waits.
			b.ReportMetric(float64((processCPU()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// BenchmarkH1UpConnUsable: the check before an idle TLS connection is
// reused (socket peek and bytes held inside crypto/tls), over a
// recordConn (the probe it answers) and over a bare socket (a read
// deadline in the past, and the timeout error it makes).
func BenchmarkH1UpConnUsable(b *testing.B) {
	for _, records := range []bool{true, false} {
		name := "recordConn"
		if !records {
			name = "deadline"
		}
		b.Run(name, func(b *testing.B) {
			tca := newTestCA(b, "bench CA")
			cc, sc := tcpPair(b)
			srv := tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{tca.leaf(b, "api.test")}})
			go srv.Handshake()
			ccfg := &tls.Config{InsecureSkipVerify: true, ServerName: "api.test"} //nolint:gosec // a test's own upstream
			var tc *tls.Conn
			if records {
				tc = newUpstreamTLS(cc, ccfg)
			} else {
				tc = tls.Client(cc, ccfg)
			}
			if err := tc.Handshake(); err != nil {
				b.Fatal(err)
			}
			uc := &h1UpConn{conn: tc, lim: limitedReader{r: tc, n: noLimit}}
			uc.br = bufio.NewReaderSize(&uc.lim, 4<<10)
			uc.raw = rawSocketOf(tc)
			if uc.raw == nil {
				b.Fatal("no socket under the connection")
			}
			time.Sleep(10 * time.Millisecond) // the server's session tickets are in
			if !uc.usable(time.Now(), false) {
				b.Fatal("an idle connection is not usable")
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if !uc.usable(time.Now(), false) {
					b.Fatal("an idle connection is not usable")
				}
			}
		})
	}
}
