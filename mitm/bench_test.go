package mitm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/cache"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/policy"
)

// allowAllDecider allows everything without recording anything.
type allowAllDecider struct{}

func (allowAllDecider) Connection(context.Context, *policy.Conn) policy.ConnDecision {
	return policy.ConnDecision{Action: policy.Decrypt, Decision: policy.Decision{Rule: "bench"}}
}

func (allowAllDecider) Request(context.Context, *policy.Request) policy.Decision {
	return policy.Decision{Rule: "bench"}
}

// countSink counts records, as a cheap stand-in for the JSON log.
type countSink struct{ n atomic.Int64 }

func (s *countSink) Record(*audit.Record) { s.n.Add(1) }

// benchResults keeps the last run of each sub-benchmark so the proxied
// run can print its ratio to the direct one.
var benchResults = struct {
	sync.Mutex
	rps map[string]float64
}{rps: map[string]float64{}}

// BenchmarkHTTPS measures keep-alive HTTPS requests per second and p50/p99
// latency, direct to a Go upstream and through Sluice's explicit proxy
// (decrypt, policy, re-encrypt), for HTTP/1.1 and HTTP/2; and, for scale,
// HTTP/1.1 with a new connection per request (TCP and TLS handshakes, and
// through Sluice a CONNECT and a cached leaf). Client, proxy and upstream
// share this process and its CPUs.
func BenchmarkHTTPS(b *testing.B) {
	tca := newTestCA(b, "upstream test CA")
	payload := []byte("hello from the upstream\n")
	for _, proto := range []string{"h1", "h2", "h1-newconn"} {
		h2, newConn := proto == "h2", proto == "h1-newconn"
		up := startUpstream(b, tca, h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Write(payload)
		}))
		h := newHarness(b, tca, allowAllDecider{}, func(_ *config.Proxy, d *Deps) { d.Audit = &countSink{} })
		upPool := x509.NewCertPool()
		upPool.AppendCertsFromPEM(tca.pem)
		direct := &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: upPool, ServerName: "api.test"},
			ForceAttemptHTTP2:   h2,
			MaxIdleConnsPerHost: 64,
		}
		proxied := h.client(h2).Transport.(*http.Transport)
		proxied.MaxIdleConnsPerHost = 64
		direct.DisableKeepAlives, proxied.DisableKeepAlives = newConn, newConn
		if !h2 {
			direct.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		for _, mode := range []struct {
			name string
			rt   http.RoundTripper
			url  string
		}{
			{"direct", direct, fmt.Sprintf("https://127.0.0.1:%d/bench", up.addr.Port())},
			{"sluice", proxied, fmt.Sprintf("https://api.test:%d/bench", up.addr.Port())},
		} {
			name := proto + "/" + mode.name
			b.Run(name, func(b *testing.B) {
				c := &http.Client{Transport: mode.rt, Timeout: 30 * time.Second}
				// Warm the connections and the leaf cache.
				for i := 0; i < 8; i++ {
					resp, err := c.Get(mode.url)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				var mu sync.Mutex
				var lat []time.Duration
				b.SetParallelism(4)
				b.ResetTimer()
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					local := make([]time.Duration, 0, 1024)
					for pb.Next() {
						t0 := time.Now()
						resp, err := c.Get(mode.url)
						if err != nil {
							b.Error(err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 {
							b.Errorf("status %d", resp.StatusCode)
							return
						}
						local = append(local, time.Since(t0))
					}
					mu.Lock()
					lat = append(lat, local...)
					mu.Unlock()
				})
				elapsed := time.Since(start)
				b.StopTimer()
				if len(lat) == 0 {
					return
				}
				slices.Sort(lat)
				rps := float64(len(lat)) / elapsed.Seconds()
				p50 := lat[len(lat)*50/100]
				p99 := lat[min(len(lat)-1, len(lat)*99/100)]
				b.ReportMetric(rps, "req/s")
				b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
				benchResults.Lock()
				benchResults.rps[name] = rps
				d := benchResults.rps[proto+"/direct"]
				benchResults.Unlock()
				if mode.name == "sluice" && d > 0 {
					b.ReportMetric(rps/d, "x-direct")
					if b.N > 100 {
						b.Logf("%s: %.0f req/s through Sluice vs %.0f direct: ratio %.2f; p50 %.2f ms, p99 %.2f ms", proto, rps, d, rps/d,
							float64(p50.Microseconds())/1000, float64(p99.Microseconds())/1000)
					}
				}
			})
		}
		direct.CloseIdleConnections()
		proxied.CloseIdleConnections()
	}
}

// cachingDecider allows everything under a rule whose cache is c.
type cachingDecider struct{ c *cache.Rule }

func (cachingDecider) Connection(context.Context, *policy.Conn) policy.ConnDecision {
	return policy.ConnDecision{Action: policy.Decrypt, Decision: policy.Decision{Rule: "bench"}}
}

func (d cachingDecider) Request(context.Context, *policy.Request) policy.Decision {
	return policy.Decision{Rule: "bench", Cache: d.c}
}

// BenchmarkCache compares a request answered from the response cache with
// the same request proxied to the upstream (keep-alive HTTPS/1.1 through
// the explicit proxy, a 4 KiB cacheable JSON body). The target: a hit
// costs less than half a proxied request. Cost is the process's CPU time
// per request (client, proxy and upstream together, as they share this
// process): wall time on a shared machine says more about the neighbours.
func BenchmarkCache(b *testing.B) {
	tca := newTestCA(b, "upstream test CA")
	payload := make([]byte, 4<<10)
	var upstreamHits atomic.Int64
	up := startUpstream(b, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamHits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "max-age=3600")
		w.Write(payload)
	}))
	url := fmt.Sprintf("https://api.test:%d/bench", up.addr.Port())
	var cpuPerOp [2]float64
	for i, mode := range []struct {
		name string
		dec  policy.Decider
	}{
		{"proxied", cachingDecider{}},
		{"hit", cachingDecider{&cache.Rule{}}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			h := newHarness(b, tca, mode.dec, func(_ *config.Proxy, d *Deps) { d.Audit = &countSink{} })
			c := h.client(false)
			c.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
			get := func() error {
				resp, err := c.Get(url)
				if err != nil {
					return err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return nil
			}
			if err := get(); err != nil { // fills the cache for "hit"
				b.Fatal(err)
			}
			before := upstreamHits.Load()
			cpuPerOp[i] = cpuPerRequest(b, get)
			if mode.name == "hit" && upstreamHits.Load() != before {
				b.Errorf("the upstream was asked %d times during cache hits", upstreamHits.Load()-before)
			}
			if mode.name == "hit" && cpuPerOp[0] > 0 {
				b.ReportMetric(cpuPerOp[1]/cpuPerOp[0], "cpu-x-proxied")
			}
		})
	}
}

// BenchmarkMCP measures what reading MCP costs per request: a small
// tools/call (keep-alive HTTPS/1.1 through the explicit proxy, a small
// JSON-RPC result back) sent as an opaque text/plain body without MCP's
// headers (the MCP stage leaves it alone), as the same MCP request
// (JSON, MCP headers) through a proxy whose chain lacks the MCP stage
// ("json": what the request costs without MCP parsing), as MCP under a
// policy that allows everything, and as MCP under a policy with an mcp
// rule (a deny rule for another tool, so the call is judged and
// allowed). Cost is the process's CPU time per request (client, proxy
// and upstream together). The target: MCP parsing adds at most 10%
// (cpu-x-json); cpu-x-opaque also counts the extra headers' cost in
// client, proxy and upstream.
func BenchmarkMCP(b *testing.B) {
	tca := newTestCA(b, "upstream test CA")
	result := []byte(`{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hello"}]}}`)
	up := startUpstream(b, tca, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(result)
	}))
	url := fmt.Sprintf("https://api.test:%d/mcp", up.addr.Port())
	call := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"query":"sluice","limit":5}}}`
	withRule, err := policy.Parse([]byte(`
version: 1
ssrf: {allowCIDRs: ["127.0.0.0/8"]}
defaults: {action: allow}
rules:
  - name: no-shell
    mcp: {tools: ["shell_*"]}
    action: deny
`), "bench.yaml")
	if err != nil {
		b.Fatal(err)
	}
	var base, json float64
	for _, mode := range []struct {
		name, ct string
		mcp      bool
		dec      policy.Decider
	}{
		{"opaque", "text/plain", false, allowAllDecider{}},
		{"json", "application/json", true, allowAllDecider{}},
		{"mcp", "application/json", true, allowAllDecider{}},
		{"mcp-rule", "application/json", true, withRule},
	} {
		b.Run(mode.name, func(b *testing.B) {
			h := newHarnessWith(b, tca, mode.dec, func(p *Proxy) {
				if mode.name == "json" { // the chain without the MCP stage
					p.stages = slices.DeleteFunc(p.stages, func(s Stage) bool { _, ok := s.(mcpStage); return ok })
				}
			}, func(_ *config.Proxy, d *Deps) { d.Audit = &countSink{} })
			c := h.client(false)
			c.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
			post := func() error {
				req, _ := http.NewRequest("POST", url, strings.NewReader(call))
				req.Header.Set("Content-Type", mode.ct)
				if mode.mcp {
					req.Header.Set("Accept", "application/json, text/event-stream")
					req.Header.Set("Mcp-Protocol-Version", "2025-06-18")
					req.Header.Set("Mcp-Session-Id", "bench-session")
				}
				resp, err := c.Do(req)
				if err != nil {
					return err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return nil
			}
			cpu := cpuPerRequest(b, post)
			switch {
			case mode.name == "opaque":
				base = cpu
			case mode.name == "json":
				json = cpu
			case json > 0:
				b.ReportMetric(cpu/json, "cpu-x-json")
			}
			if mode.name != "opaque" && base > 0 {
				b.ReportMetric(cpu/base, "cpu-x-opaque")
			}
		})
	}
}

// cpuPerRequest warms do's connections with 8 calls, then runs it in
// parallel (4 per CPU) for b.N calls and reports the process's CPU time
// per call (client, proxy and upstream together) as cpu-us/op, which it
// returns.
func cpuPerRequest(b *testing.B, do func() error) float64 {
	for range 8 {
		if err := do(); err != nil {
			b.Fatal(err)
		}
	}
	b.SetParallelism(4)
	b.ResetTimer()
	cpu0 := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := do(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	cpu := float64((processCPU() - cpu0).Microseconds()) / float64(b.N)
	b.StopTimer()
	b.ReportMetric(cpu, "cpu-us/op")
	return cpu
}
