// Package audittest holds test helpers for code that takes audit records:
// a realistic record to benchmark a sink with, and the benchmark.
package audittest

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

// PodRecord is the record of one proxied keep-alive request from a
// Kubernetes pod at time at, as the proxy emits it: a workload with
// everything the agent and the container runtime name (so metrics'
// sluice_workload_info too), and the request's own fields.
func PodRecord(at time.Time) audit.Record {
	return audit.Record{
		Time: at, Kind: audit.KindHTTP,
		Workload: workload.Identity{
			Client: netip.MustParseAddrPort("10.42.0.17:51234"), PID: 4242, UID: 1000, Comm: "python3",
			Exe:         "/usr/local/bin/python3.12",
			Cgroup:      "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b.slice/cri-containerd-3f4e8c3b5d2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e.scope",
			ContainerID: "3f4e8c3b5d2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e",
			PodUID:      "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
			Container:   "agent", Image: "registry.example.com/ai/agent:1.4.2", Namespace: "ai", Pod: "agent-7d9f8b6c5-x2k4q",
			Labels: map[string]string{"app": "agent", "pod-template-hash": "7d9f8b6c5", "team": "research"},
		},
		Host: "api.example.com", DstIP: netip.MustParseAddr("192.0.2.10"), Port: 443, SNI: "api.example.com",
		TLS: audit.TLSDecrypted, ALPN: "http/1.1", Proto: "HTTP/1.1", Method: "POST", Path: "/v1/messages", Status: 200,
		Source: audit.SourceUpstream, BytesIn: 512, BytesOut: 4096, Duration: 1234567 * time.Nanosecond,
		UpstreamDuration: 987654 * time.Nanosecond, UpstreamAddr: "192.0.2.10:443", Decision: audit.DecisionAllow,
		Rule: "llm-apis", Reason: audit.ReasonAllowedByRule, DNSName: "api.example.com",
	}
}

// RecordPodInParallel benchmarks s.Record with PodRecord(at) from
// parallel goroutines, as the proxy's connections emit: each goroutine
// records its own copy (a sink keeps nothing of a record).
func RecordPodInParallel(b *testing.B, s audit.Sink, at time.Time) {
	r := PodRecord(at)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		r := r
		for pb.Next() {
			s.Record(&r)
		}
	})
}
