package mitm

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/flows"
	"github.com/sluicehq/sluice/metrics"
	"github.com/sluicehq/sluice/workload"
)

// noNames is a DNS server that knows no name for any address (the
// benchmark's upstream is reached by its address).
type noNames struct{}

func (noNames) NamesFor(workload.Identity, netip.Addr) []string { return nil }

// BenchmarkEmit is the end of every proxied request: the record to the
// JSON audit log, the metrics and the flows table (as the node wires
// them), and the decision line at sluice run's default level (Warn, so
// an allow is not written).
func BenchmarkEmit(b *testing.B) {
	sinks := audit.Multi{audit.NewJSONLog(io.Discard), metrics.New(metrics.Options{}), flows.New(flows.Options{})}
	p := &Proxy{
		deps: Deps{Audit: sinks, Names: noNames{}},
		log:  slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	rec := audit.Record{
		Time: time.Now(), Kind: audit.KindHTTP,
		Workload: workload.Identity{
			Client: netip.MustParseAddrPort("10.42.0.17:51234"), PID: 4242, UID: 1000, Comm: "python3",
			Exe: "/usr/local/bin/python3.12", Cgroup: "/kubepods.slice/kubepods-pod0f1e.slice/cri-containerd-3f4e.scope",
			ContainerID: "3f4e8c3b5d2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e", PodUID: "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
			Container: "agent", Image: "registry.example.com/ai/agent:1.4.2", Namespace: "ai", Pod: "agent-7d9f8b6c5-x2k4q",
			Labels: map[string]string{"app": "agent", "team": "research"},
		},
		Host: "api.example.com", DstIP: netip.MustParseAddr("192.0.2.10"), Port: 443, SNI: "api.example.com",
		TLS: audit.TLSDecrypted, ALPN: "http/1.1", Proto: "HTTP/1.1", Method: "POST", Path: "/v1/messages", Status: 200,
		Source: audit.SourceUpstream, BytesIn: 512, BytesOut: 4096, Duration: 1234567 * time.Nanosecond,
		UpstreamDuration: 987654 * time.Nanosecond, UpstreamAddr: "192.0.2.10:443", Decision: audit.DecisionAllow,
		Rule: "llm-apis", Reason: audit.ReasonAllowedByRule,
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := rec
		for pb.Next() {
			p.emit(&r)
		}
	})
}
