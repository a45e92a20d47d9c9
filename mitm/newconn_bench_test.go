package mitm

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime/metrics"
	"testing"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/workload"
)

// BenchmarkNewConn is the accept path of a transparent decrypted
// connection, one per request, as wrk with "Connection: close" drives it:
// Handle, the ClientHello peek, the connection's policy decision, the
// client TLS handshake (resumed with a session ticket, as repeat clients
// do), one HTTP/1.1 request to an upstream from the pool, the records, the
// close; for a client that offers X25519 alone and one that offers the
// hybrid post-quantum key exchange too, both resuming, and one that does
// a full handshake each time (the leaf from the cache, a signature). Client, proxy and upstream share
// this process; allocs/op and B/op are mostly the proxy's (the client's
// and the upstream's are constant), cpu-us/op is the process's CPU time
// per connection (the client's handshake included), goroutines/op the
// goroutines started per connection (the harness's accept loop starts one
// per connection as the agent's does; the upstream's HTTP server one per
// request).
func BenchmarkNewConn(b *testing.B) {
	tca := newTestCA(b, "upstream test CA")
	// Port 443, as wrk's connections have: to another port the proxy
	// races the upstream for the first byte (server-first protocols),
	// which costs an upstream dial per connection that HTTPS never pays.
	// Binding 443 needs root (or a low ip_unprivileged_port_start).
	ln443, err := net.Listen("tcp", "127.0.0.77:443")
	if err != nil {
		b.Skipf("listen on 127.0.0.77:443 for the upstream: %v (run as root)", err)
	}
	up := startUpstreamWith(b, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from the upstream\n")
	}), func(s *httptest.Server) { s.Listener.Close(); s.Listener = ln443 })
	h := newHarness(b, tca, allowAllDecider{}, func(_ *config.Proxy, d *Deps) {
		d.Audit = &countSink{}
		// sluice run logs at Warn: an allowed connection writes no line.
		d.Log = slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.ca.BundlePEM())
	addr := serveTransparent(b, h, context.Background(), -1, Destination{Addr: up.addr}, workload.Identity{PID: 1, Comm: "wrk", Cgroup: "/bench.scope"})
	clients := []struct {
		name   string
		curves []tls.CurveID
		full   bool // no session resumption: a new process per request (curl)
	}{
		// OpenSSL 3.0 (wrk, curl and Python on Debian 12) offers an
		// X25519 key share.
		{"x25519", []tls.CurveID{tls.X25519}, false},
		// Go 1.24+, OpenSSL 3.5 and browsers offer X25519MLKEM768 too.
		{"hybrid", nil, false},
		{"x25519-full", []tls.CurveID{tls.X25519}, true},
	}
	req := []byte("GET /bench HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
	for _, cl := range clients {
		b.Run(cl.name, func(b *testing.B) {
			cfg := &tls.Config{
				RootCAs:            pool,
				ServerName:         "api.test",
				NextProtos:         []string{"http/1.1"},
				ClientSessionCache: tls.NewLRUClientSessionCache(64),
				CurvePreferences:   cl.curves,
			}
			if cl.full {
				cfg.ClientSessionCache = nil
			}
			one := func() error {
				c, err := tls.Dial("tcp", addr, cfg)
				if err != nil {
					return err
				}
				defer c.Close()
				if _, err := c.Write(req); err != nil {
					return err
				}
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					return err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Errorf("status %d through the proxy, want 200", resp.StatusCode)
				}
				return nil
			}
			for range 4 { // the leaf, a session ticket, an upstream in the pool
				if err := one(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.SetParallelism(2)
			cpu0, g0 := processCPU(), goroutinesCreated()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := one(); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
			b.ReportMetric(float64(goroutinesCreated()-g0)/float64(b.N), "goroutines/op")
		})
	}
}

// goroutinesCreated is how many goroutines the process has started.
func goroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
