package mitm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluicehq/sluice/workload"
)

// BenchmarkIdleConn holds b.N idle decrypted HTTP/1.1 connections (one
// request each) through the transparent path and through the explicit
// proxy (CONNECT), and reports what each costs the proxy's process: heap
// and goroutine stacks in use, goroutines.
// SLUICE_IDLE_HEAPPROFILE=FILE writes a heap profile while they are held
// (FILE-transparent, FILE-explicit). Each connection holds about four
// open files in this process, so run it with a count that the open-file
// limit allows (make bench: -benchtime 1000x), not a time.
func BenchmarkIdleConn(b *testing.B) {
	benchmarkIdleModes(b, "http/1.1", "", func(b *testing.B, c *tls.Conn) net.Conn { return idleGet(b, c) })
}

// benchmarkIdleModes runs benchmarkIdle transparent and explicit, each
// connection a TLS client offering proto to a proxy with an upstream
// speaking it, and readied by get (one request). name follows the
// mode's in the heap profile's file name.
func benchmarkIdleModes(b *testing.B, proto, name string, get func(*testing.B, *tls.Conn) net.Conn) {
	if os.Getenv("SLUICE_IDLE_HEAPPROFILE") != "" {
		runtime.MemProfileRate = 1 // every allocation: a per-connection account
	}
	tca := newTestCA(b, "upstream test CA")
	up := startUpstream(b, tca, proto == "h2", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	h := newHarness(b, tca, nil)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())
	addr := serveTransparent(b, h, context.Background(), -1, Destination{Addr: up.addr}, workload.Identity{PID: 1, Comm: "idle"})
	cfg := &tls.Config{RootCAs: pool, ServerName: "api.test", NextProtos: []string{proto}}
	for _, mode := range []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"transparent", func() (net.Conn, error) { return net.Dial("tcp", addr) }},
		{"explicit", func() (net.Conn, error) { return idleDialConnect(h.url.Host, up.addr.String()) }},
	} {
		b.Run(mode.name, func(b *testing.B) {
			benchmarkIdle(b, mode.name+name, func() net.Conn {
				raw, err := mode.dial()
				if err != nil {
					b.Fatal(err)
				}
				return get(b, tls.Client(raw, cfg))
			})
		})
	}
}

// idleDialConnect opens a CONNECT tunnel to target through the explicit
// proxy at proxyAddr.
func idleDialConnect(proxyAddr, target string) (net.Conn, error) {
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n\r\n", target)
	// Read the answer byte by byte: nothing of the TLS stream may
	// stay behind in a bufio.Reader.
	resp, err := http.ReadResponse(bufio.NewReaderSize(byteReader{c}, 16), &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("CONNECT: status %d", resp.StatusCode)
	}
	return c, nil
}

// idleGet sends one GET on c and reads its answer, and returns c, left
// open and idle.
func idleGet(tb testing.TB, c *tls.Conn) net.Conn {
	tb.Helper()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		tb.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("status %d through the proxy, want 200", resp.StatusCode)
	}
	return c
}

// byteReader reads one byte at a time.
type byteReader struct{ r io.Reader }

func (o byteReader) Read(p []byte) (int, error) { return o.r.Read(p[:min(len(p), 1)]) }

func benchmarkIdle(b *testing.B, name string, open func() net.Conn) {
	open().Close() // warm up
	time.Sleep(100 * time.Millisecond)
	measure := func() (runtime.MemStats, int) {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m, runtime.NumGoroutine()
	}
	m0, g0 := measure()
	b.ResetTimer()
	conns := make([]net.Conn, 0, b.N)
	for range b.N {
		conns = append(conns, open())
	}
	b.StopTimer()
	time.Sleep(h1ParkAfter + 500*time.Millisecond)
	m1, g1 := measure()
	n := float64(b.N)
	// The client's side lives in this process too; a tls.Conn with its
	// buffers and no goroutine, counted in the figure (an upper bound).
	b.ReportMetric(float64(int64(m1.HeapInuse)-int64(m0.HeapInuse))/n/1024, "heap-KiB/conn")
	b.ReportMetric(float64(int64(m1.StackInuse)-int64(m0.StackInuse))/n/1024, "stack-KiB/conn")
	b.ReportMetric(float64(g1-g0)/n, "goroutines/conn")
	if f := os.Getenv("SLUICE_IDLE_HEAPPROFILE"); f != "" {
		out, err := os.Create(f + "-" + name)
		if err == nil {
			_ = pprof.WriteHeapProfile(out)
			out.Close()
		}
	}
	for _, c := range conns {
		c.Close()
	}
	time.Sleep(100 * time.Millisecond)
}

// BenchmarkIdleConnH2 is BenchmarkIdleConn for HTTP/2: b.N idle
// decrypted HTTP/2 connections, one request each, through the HTTP/2
// server, transparent and inside the explicit proxy's CONNECT. The
// client is a bare Framer on a tls.Conn (its part is counted too: an
// upper bound).
func BenchmarkIdleConnH2(b *testing.B) {
	benchmarkIdleModes(b, "h2", "-h2", idleGetH2)
}

// idleGetH2 sends one GET over HTTP/2 on c and reads its answer, and
// returns c, left open and idle.
func idleGetH2(b *testing.B, c *tls.Conn) net.Conn {
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "api.test"}, {":path", "/"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			b.Fatal(err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			fr.WriteSettingsAck()
		}
		if d, ok := f.(*http2.DataFrame); ok && d.StreamEnded() {
			return c
		}
	}
}
