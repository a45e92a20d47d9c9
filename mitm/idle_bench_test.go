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
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/sluicehq/sluice/workload"
)

// BenchmarkIdleConn holds b.N idle decrypted HTTP/1.1 connections (one
// request each) through the transparent path and reports what each costs
// the proxy's process: heap and goroutine stacks in use, goroutines.
// SLUICE_IDLE_HEAPPROFILE=FILE writes a heap profile while they are held.
func BenchmarkIdleConn(b *testing.B) {
	if os.Getenv("SLUICE_IDLE_HEAPPROFILE") != "" {
		runtime.MemProfileRate = 1 // every allocation: a per-connection account
	}
	tca := newTestCA(b, "upstream test CA")
	up := startUpstream(b, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	}))
	h := newHarness(b, tca, nil)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	dst := Destination{Addr: up.addr}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go h.p.Handle(context.Background(), c, dst, workload.Identity{PID: 1, Comm: "idle"})
		}
	}()
	cfg := &tls.Config{RootCAs: pool, ServerName: "api.test", NextProtos: []string{"http/1.1"}}
	open := func() net.Conn {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d through the proxy, want 200", resp.StatusCode)
		}
		return c
	}
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
	b.ReportMetric(float64(m1.HeapInuse-m0.HeapInuse)/n/1024, "heap-KiB/conn")
	b.ReportMetric(float64(m1.StackInuse-m0.StackInuse)/n/1024, "stack-KiB/conn")
	b.ReportMetric(float64(g1-g0)/n, "goroutines/conn")
	if f := os.Getenv("SLUICE_IDLE_HEAPPROFILE"); f != "" {
		out, err := os.Create(f)
		if err == nil {
			_ = pprof.WriteHeapProfile(out)
			out.Close()
		}
	}
	for _, c := range conns {
		c.Close()
	}
}
