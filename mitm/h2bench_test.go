package mitm

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/config"
)

// BenchmarkH2Request measures one HTTP/2 GET through the proxy (client
// HTTP/2 over TLS to Sluice, Sluice HTTP/2 over TLS to the upstream) with
// many streams in flight on each client connection, as h2load's -c and
// -m do: ns/op, allocs/op and the process's CPU per request (client,
// proxy and upstream together; only the proxy's share changes with
// Sluice's code). c32m10 is bench-peers' h2 load.
func BenchmarkH2Request(b *testing.B) {
	tca := newTestCA(b, "upstream test CA")
	body := []byte("hello from the upstream, a small JSON-sized answer of about one hundred bytes.......\n")
	up := startUpstream(b, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	}))
	h := newHarness(b, tca, allowAllDecider{}, func(_ *config.Proxy, d *Deps) { d.Audit = &countSink{} })
	url := fmt.Sprintf("https://api.test:%d/", up.addr.Port())
	for _, load := range []struct {
		name            string
		conns, inFlight int
	}{{"c1m32", 1, 32}, {"c32m10", 32, 320}} {
		b.Run(load.name, func(b *testing.B) {
			// A client per connection: each keeps one HTTP/2 connection.
			clients := make([]*http.Client, load.conns)
			for i := range clients {
				clients[i] = h.client(true)
				defer clients[i].CloseIdleConnections()
				if err := h2Get(clients[i], url, len(body)); err != nil { // the connection, the leaf, the pool
					b.Fatal(err)
				}
			}
			var next atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(load.inFlight / runtime.GOMAXPROCS(0))
			b.ResetTimer()
			cpu0 := processCPU()
			b.RunParallel(func(pb *testing.PB) {
				c := clients[int(next.Add(1))%len(clients)]
				for pb.Next() {
					if err := h2Get(c, url, len(body)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
		})
	}
}

// h2Get GETs url over HTTP/2 and checks the answer.
func h2Get(c *http.Client, url string, want int) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		return err
	case resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || int(n) != want:
		return fmt.Errorf("got %s %s with %d bytes", resp.Proto, resp.Status, n)
	}
	return nil
}

// BenchmarkH2Upload measures a 256 KiB POST through the proxy over
// HTTP/2 on both sides (the request body read in DATA-frame pieces,
// each read once with its read deadline).
func BenchmarkH2Upload(b *testing.B) {
	tca := newTestCA(b, "upstream test CA")
	up := startUpstream(b, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprint(w, n)
	}))
	h := newHarness(b, tca, allowAllDecider{}, func(_ *config.Proxy, d *Deps) { d.Audit = &countSink{} })
	url := fmt.Sprintf("https://api.test:%d/up", up.addr.Port())
	c := h.client(true)
	defer c.CloseIdleConnections()
	body := make([]byte, 256<<10)
	post := func() error {
		resp, err := c.Post(url, "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			return err
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.ProtoMajor != 2 || string(got) != fmt.Sprint(len(body)) {
			return fmt.Errorf("got %s %q, %v", resp.Proto, got, err)
		}
		return nil
	}
	if err := post(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	cpu0 := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := post(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
}

// BenchmarkH2CoalesceFlush is one small Write into a coalescing conn over
// loopback TCP with a write deadline set before and cleared after it (as
// x/net's HTTP/2 server's WriteByteTimeout did around each flush): what
// holding the deadline, not setting it on the socket, saves.
func BenchmarkH2CoalesceFlush(b *testing.B) {
	client, server := tcpPair(b)
	go io.Copy(io.Discard, server)
	c := coalesce(client)
	defer c.Close()
	p := make([]byte, 120) // a response's HEADERS and DATA
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		_ = c.SetWriteDeadline(time.Now().Add(time.Minute))
		if _, err := c.Write(p); err != nil {
			b.Fatal(err)
		}
		_ = c.SetWriteDeadline(time.Time{})
	}
}

// BenchmarkH2Download measures one 16 MiB download through the proxy over
// HTTP/2 on both sides (the upstream's DATA frames through the pool's
// client, then the client's), one at a time as curl's in bench-peers'
// stream test: MB/s (b.SetBytes) and the process's CPU per MiB.
func BenchmarkH2Download(b *testing.B) {
	const size = 16 << 20
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4<<10) // 64 KiB
	tca := newTestCA(b, "upstream test CA")
	up := startUpstream(b, tca, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(size))
		for n := 0; n < size; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	h := newHarness(b, tca, allowAllDecider{}, func(_ *config.Proxy, d *Deps) { d.Audit = &countSink{} })
	url := fmt.Sprintf("https://api.test:%d/big", up.addr.Port())
	c := h.client(true)
	defer c.CloseIdleConnections()
	if err := h2Get(c, url, size); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ResetTimer()
	cpu0 := processCPU()
	for b.Loop() {
		if err := h2Get(c, url, size); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N)/(size>>20), "cpu-us/MiB")
}
