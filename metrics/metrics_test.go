package metrics_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/metrics"
	"github.com/sluicehq/sluice/workload"
)

// scrape gathers g into "name{k="v",…}" -> value, with histograms as
// name_count and name_sum, the way a Prometheus query would name them.
func scrape(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := func(name string) string {
				ls := make([]string, 0, len(m.GetLabel()))
				for _, l := range m.GetLabel() {
					ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				sort.Strings(ls)
				return name + "{" + strings.Join(ls, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key(mf.GetName())] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key(mf.GetName())] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key(mf.GetName()+"_count")] = float64(m.GetHistogram().GetSampleCount())
				out[key(mf.GetName()+"_sum")] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

func expect(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			var near []string
			name := k[:strings.IndexByte(k, '{')]
			for gk := range got {
				if strings.HasPrefix(gk, name+"{") {
					near = append(near, gk)
				}
			}
			sort.Strings(near)
			t.Errorf("%s: missing; present with that name:\n  %s", k, strings.Join(near, "\n  "))
			continue
		}
		if g != v {
			t.Errorf("%s = %v, want %v", k, g, v)
		}
	}
}

var (
	pod = workload.Identity{PID: 4242, Comm: "node", Namespace: "ai", Pod: "agent-0", Client: netip.MustParseAddrPort("10.0.0.5:40000")}
	ctr = workload.Identity{PID: 7, ContainerID: "0123456789abcdef0123"}
)

func TestRecordHTTP(t *testing.T) {
	m := metrics.New(metrics.Options{})
	recs := []audit.Record{
		{Kind: audit.KindHTTP, Workload: pod, Host: "api.example.com", Method: "POST", Status: 200, Source: "upstream",
			Decision: audit.DecisionAllow, BytesIn: 100, BytesOut: 2000, Duration: 300 * time.Millisecond, UpstreamDuration: 250 * time.Millisecond, TLS: audit.TLSDecrypted},
		{Kind: audit.KindHTTP, Workload: pod, Host: "api.example.com", Method: "POST", Status: 200, Source: "upstream",
			Decision: audit.DecisionAllow, BytesIn: 50, BytesOut: 1000, Duration: 100 * time.Millisecond, UpstreamDuration: 50 * time.Millisecond},
		{Kind: audit.KindHTTP, Workload: pod, Host: "api.example.com", Method: "GET", Status: 429, Source: "sluice",
			Decision: audit.DecisionDeny, Rule: "llm-rate", Reason: "rate limit exceeded", BytesOut: 80, Duration: time.Millisecond},
		{Kind: audit.KindHTTP, Workload: ctr, Host: "evil.example", Method: "BREW", Status: 403, Source: "sluice",
			Decision: audit.DecisionDeny, Rule: "deny-evil", Reason: "host denied", Duration: time.Millisecond},
		{Kind: audit.KindHTTP, Workload: ctr, Host: "maybe.example", Method: "GET", Status: 200, Source: "upstream",
			Decision: audit.DecisionWouldDeny, Rule: "deny-maybe", Reason: "host denied", Duration: time.Millisecond, UpstreamDuration: time.Millisecond},
	}
	for i := range recs {
		m.Record(&recs[i])
	}
	got := scrape(t, m.Registry())
	expect(t, got, map[string]float64{
		`sluice_proxy_requests_total{code="200",decision="allow",host="api.example.com",method="POST",source="upstream",workload="ai/agent-0"}`:               2,
		`sluice_proxy_requests_total{code="429",decision="deny",host="api.example.com",method="GET",source="sluice",workload="ai/agent-0"}`:                   1,
		`sluice_proxy_requests_total{code="403",decision="deny",host="evil.example",method="OTHER",source="sluice",workload="container:0123456789ab"}`:        1,
		`sluice_proxy_requests_total{code="200",decision="would_deny",host="maybe.example",method="GET",source="upstream",workload="container:0123456789ab"}`: 1,
		`sluice_proxy_request_duration_seconds_count{decision="allow",host="api.example.com"}`:                                                                2,
		`sluice_proxy_request_duration_seconds_sum{decision="allow",host="api.example.com"}`:                                                                  0.4,
		`sluice_proxy_request_duration_seconds_count{decision="deny",host="api.example.com"}`:                                                                 1,
		`sluice_proxy_upstream_duration_seconds_count{host="api.example.com"}`:                                                                                2,
		`sluice_proxy_upstream_duration_seconds_sum{host="api.example.com"}`:                                                                                  0.3,
		`sluice_proxy_upstream_duration_seconds_count{host="maybe.example"}`:                                                                                  1,
		`sluice_proxy_transferred_bytes_total{direction="in",host="api.example.com",kind="http",workload="ai/agent-0"}`:                                       150,
		`sluice_proxy_transferred_bytes_total{direction="out",host="api.example.com",kind="http",workload="ai/agent-0"}`:                                      3080,
		`sluice_policy_rate_limited_total{host="api.example.com",rule="llm-rate",workload="ai/agent-0"}`:                                                      1,
		`sluice_policy_denials_total{decision="deny",reason="rate limit exceeded",rule="llm-rate"}`:                                                           1,
		`sluice_policy_denials_total{decision="deny",reason="host denied",rule="deny-evil"}`:                                                                  1,
		`sluice_policy_denials_total{decision="would_deny",reason="host denied",rule="deny-maybe"}`:                                                           1,
	})
	// A denied request that Sluice answered itself has no upstream latency.
	if _, ok := got[`sluice_proxy_upstream_duration_seconds_count{host="evil.example"}`]; ok {
		t.Error("upstream latency observed for a request that never reached an upstream")
	}
	// A 429 from the upstream is not Sluice's rate limiting.
	m.Record(&audit.Record{Kind: audit.KindHTTP, Workload: pod, Host: "api.example.com", Method: "GET", Status: 429, Source: "upstream", Decision: audit.DecisionAllow})
	got = scrape(t, m.Registry())
	expect(t, got, map[string]float64{
		`sluice_policy_rate_limited_total{host="api.example.com",rule="llm-rate",workload="ai/agent-0"}`: 1,
	})
	for k := range got {
		if strings.Contains(k, "4242") {
			t.Errorf("a pid leaked into a label: %s", k)
		}
	}
}

func TestRecordL4AndTLS(t *testing.T) {
	m := metrics.New(metrics.Options{})
	for _, r := range []audit.Record{
		{Kind: audit.KindL4, Workload: pod, Host: "bank.example", SNI: "bank.example", TLS: audit.TLSPassthrough, Decision: audit.DecisionAllow, BytesIn: 10, BytesOut: 20},
		{Kind: audit.KindL4, Workload: pod, Host: "bank.example", SNI: "bank.example", TLS: audit.TLSPassthrough, Decision: audit.DecisionAllow, BytesIn: 1, BytesOut: 2},
		{Kind: audit.KindL4, Workload: pod, Host: "pinned.example", TLS: audit.TLSDecrypted, Decision: audit.DecisionError, Reason: "client TLS handshake failed", Error: "tls handshake with client: remote error: tls: bad certificate"},
		{Kind: audit.KindL4, Workload: pod, Host: "db.internal", TLS: audit.TLSNone, Decision: audit.DecisionDeny, Rule: "no-db", Reason: "port denied"},
		{Kind: audit.KindL4, Workload: pod, Host: "pinned.example", TLS: audit.TLSDecrypted, Decision: audit.DecisionClientUntrusted, Reason: audit.ReasonClientUntrusted, Error: "remote error: tls: unknown certificate authority"},
		{Kind: audit.KindConnect, Decision: "redirected"},
		{Kind: audit.KindConnect, Decision: "redirected"},
	} {
		m.Record(&r)
	}
	m.TLSConnection(audit.TLSDecrypted)
	m.ConnectEvent("denied")
	m.ConnOpened()
	m.ConnOpened()
	m.ConnClosed()
	expect(t, scrape(t, m.Registry()), map[string]float64{
		`sluice_proxy_l4_flows_total{decision="allow",host="bank.example",tls="passthrough",workload="ai/agent-0"}`:            2,
		`sluice_proxy_l4_flows_total{decision="error",host="pinned.example",tls="decrypted",workload="ai/agent-0"}`:            1,
		`sluice_proxy_transferred_bytes_total{direction="in",host="bank.example",kind="l4",workload="ai/agent-0"}`:             11,
		`sluice_proxy_transferred_bytes_total{direction="out",host="bank.example",kind="l4",workload="ai/agent-0"}`:            22,
		`sluice_proxy_tls_connections_total{mode="passthrough"}`:                                                               2,
		`sluice_proxy_tls_connections_total{mode="failed"}`:                                                                    2,
		`sluice_proxy_untrusted_clients_total{host="pinned.example",workload="ai/agent-0"}`:                                    1,
		`sluice_proxy_l4_flows_total{decision="client_untrusted",host="pinned.example",tls="decrypted",workload="ai/agent-0"}`: 1,
		`sluice_proxy_tls_connections_total{mode="decrypted"}`:                                                                 1,
		`sluice_policy_denials_total{decision="deny",reason="port denied",rule="no-db"}`:                                       1,
		`sluice_agent_connect_events_total{decision="redirected"}`:                                                             2,
		`sluice_agent_connect_events_total{decision="denied"}`:                                                                 1,
		`sluice_proxy_open_connections{}`:                                                                                      1,
	})
}

func TestFuncSources(t *testing.T) {
	m := metrics.New(metrics.Options{})
	got := scrape(t, m.Registry())
	if _, ok := got[`sluice_agent_events_dropped_total{}`]; ok {
		t.Error("ring drops exported before a source was set")
	}
	var drops uint64 = 3
	stats := metrics.LeafStats{Size: 5, Hits: 10, Misses: 6, Issued: 5}
	m.SetRingDrops(func() uint64 { return drops })
	m.SetLeafStats(func() metrics.LeafStats { return stats })
	expect(t, scrape(t, m.Registry()), map[string]float64{
		`sluice_agent_events_dropped_total{}`: 3,
		`sluice_ca_leaf_cache_size{}`:         5,
		`sluice_ca_leaf_cache_hits_total{}`:   10,
		`sluice_ca_leaf_cache_misses_total{}`: 6,
		`sluice_ca_leaf_issued_total{}`:       5,
	})
	// Read at scrape time: a later scrape sees the new values.
	drops, stats.Size, stats.Issued = 9, 7, 8
	expect(t, scrape(t, m.Registry()), map[string]float64{
		`sluice_agent_events_dropped_total{}`: 9,
		`sluice_ca_leaf_cache_size{}`:         7,
		`sluice_ca_leaf_issued_total{}`:       8,
	})
	m.SetRingDrops(nil)
	if _, ok := scrape(t, m.Registry())[`sluice_agent_events_dropped_total{}`]; ok {
		t.Error("ring drops still exported after the source was removed")
	}
}

func TestMapErrors(t *testing.T) {
	m := metrics.New(metrics.Options{})
	if _, ok := scrape(t, m.Registry())[`sluice_bpf_map_update_errors_total{map="sluice_origins"}`]; ok {
		t.Error("map errors exported before a source was set")
	}
	errs := map[string]uint64{"sluice_origins": 0, "sluice_peers": 2}
	m.SetMapErrors(func() map[string]uint64 { return errs })
	expect(t, scrape(t, m.Registry()), map[string]float64{
		`sluice_bpf_map_update_errors_total{map="sluice_origins"}`: 0,
		`sluice_bpf_map_update_errors_total{map="sluice_peers"}`:   2,
	})
	// Read at scrape time: a later scrape sees the new totals.
	errs = map[string]uint64{"sluice_origins": 5, "sluice_peers": 2}
	expect(t, scrape(t, m.Registry()), map[string]float64{
		`sluice_bpf_map_update_errors_total{map="sluice_origins"}`: 5,
	})
	// A source with nothing to report (the agent on another OS) yields no
	// sample and no error.
	m.SetMapErrors(func() map[string]uint64 { return nil })
	for k := range scrape(t, m.Registry()) {
		if strings.HasPrefix(k, "sluice_bpf_map_update_errors_total") {
			t.Errorf("%s exported from an empty source", k)
		}
	}
	m.SetMapErrors(nil)
	if _, ok := scrape(t, m.Registry())[`sluice_bpf_map_update_errors_total{map="sluice_peers"}`]; ok {
		t.Error("map errors still exported after the source was removed")
	}
}

func TestCardinalityFolds(t *testing.T) {
	m := metrics.New(metrics.Options{MaxHosts: 3, MaxWorkloads: 2})
	for i := range 10 {
		m.Record(&audit.Record{
			Kind: audit.KindHTTP, Host: fmt.Sprintf("h%d.example", i), Method: "GET", Status: 200, Source: "upstream", Decision: audit.DecisionAllow,
			Workload: workload.Identity{Cgroup: fmt.Sprintf("/wl%d", i%4)},
		})
	}
	got := scrape(t, m.Registry())
	hosts, workloads := map[string]bool{}, map[string]bool{}
	var total float64
	for k, v := range got {
		if !strings.HasPrefix(k, "sluice_proxy_requests_total{") {
			continue
		}
		total += v
		for _, part := range strings.Split(strings.Trim(k[len("sluice_proxy_requests_total"):], "{}"), ",") {
			kv := strings.SplitN(part, "=", 2)
			switch kv[0] {
			case "host":
				hosts[strings.Trim(kv[1], `"`)] = true
			case "workload":
				workloads[strings.Trim(kv[1], `"`)] = true
			}
		}
	}
	if total != 10 {
		t.Errorf("requests counted %v, want 10: folding must not lose counts", total)
	}
	wantHosts := map[string]bool{"h0.example": true, "h1.example": true, "h2.example": true, "other": true}
	if fmt.Sprint(hosts) != fmt.Sprint(wantHosts) {
		t.Errorf("host labels %v, want %v", hosts, wantHosts)
	}
	wantWl := map[string]bool{"/wl0": true, "/wl1": true, "other": true}
	if fmt.Sprint(workloads) != fmt.Sprint(wantWl) {
		t.Errorf("workload labels %v, want %v", workloads, wantWl)
	}
	// A host admitted early keeps its own label later.
	m.Record(&audit.Record{Kind: audit.KindHTTP, Host: "h1.example", Method: "GET", Status: 200, Source: "upstream", Decision: audit.DecisionAllow, Workload: workload.Identity{Cgroup: "/wl1"}})
	expect(t, scrape(t, m.Registry()), map[string]float64{
		`sluice_proxy_requests_total{code="200",decision="allow",host="h1.example",method="GET",source="upstream",workload="/wl1"}`: 2,
	})
}

func TestLint(t *testing.T) {
	m := metrics.New(metrics.Options{})
	m.Record(&audit.Record{Kind: audit.KindHTTP, Host: "a", Method: "GET", Status: 200, Source: "upstream", Decision: audit.DecisionAllow, BytesIn: 1, BytesOut: 1, UpstreamDuration: 1})
	m.SetRingDrops(func() uint64 { return 0 })
	m.SetMapErrors(func() map[string]uint64 { return map[string]uint64{"sluice_origins": 0} })
	m.SetLeafStats(func() metrics.LeafStats { return metrics.LeafStats{} })
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// BenchmarkRecord is the per-request cost the proxy pays for metrics.
func BenchmarkRecord(b *testing.B) {
	m := metrics.New(metrics.Options{})
	r := &audit.Record{Kind: audit.KindHTTP, Workload: pod, Host: "api.example.com", Method: "POST", Status: 200, Source: "upstream",
		Decision: audit.DecisionAllow, BytesIn: 100, BytesOut: 2000, Duration: 300 * time.Millisecond, UpstreamDuration: 250 * time.Millisecond}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Record(r)
		}
	})
}

// MCP records count by method and tool, time tools/call per tool, and
// fold a method outside the specification into "other".
func TestMCPMetrics(t *testing.T) {
	m := metrics.New(metrics.Options{})
	for _, r := range []*audit.Record{
		{Kind: audit.KindHTTP, Host: "mcp.test", Decision: "allow", MCPMethod: "tools/call", MCPTool: "echo", Duration: 20 * time.Millisecond},
		{Kind: audit.KindHTTP, Host: "mcp.test", Decision: "deny", MCPMethod: "tools/call", MCPTool: "rm"},
		{Kind: audit.KindHTTP, Host: "mcp.test", Decision: "allow", MCPMethod: "x/made-up"},
		{Kind: audit.KindMCPToolChanged, Host: "mcp.test", MCPTool: "echo"},
	} {
		m.Record(r)
	}
	expect(t, scrape(t, m.Registry()), map[string]float64{
		`sluice_mcp_requests_total{decision="allow",method="tools/call",server="mcp.test",tool="echo",workload="unknown"}`: 1,
		`sluice_mcp_requests_total{decision="deny",method="tools/call",server="mcp.test",tool="rm",workload="unknown"}`:    1,
		`sluice_mcp_requests_total{decision="allow",method="other",server="mcp.test",tool="none",workload="unknown"}`:      1,
		`sluice_mcp_tool_duration_seconds_count{server="mcp.test",tool="echo"}`:                                            1,
		`sluice_mcp_tool_changes_total{server="mcp.test",tool="echo",workload="unknown"}`:                                  1,
	})
}

// DNS records count as queries; a denied name and a flagged query count
// as denials by their rule; flagged queries count by the guard's reason
// (a short label) and decision; and the policy's resolution denials of
// connections (public-resolver, require-resolved) flow into the denials
// metric from their HTTP and L4 records.
func TestDNSMetrics(t *testing.T) {
	m := metrics.New(metrics.Options{})
	for _, r := range []audit.Record{
		{Kind: audit.KindDNS, Workload: pod, DNSName: "api.test", QType: "A", Rcode: "NOERROR", Decision: audit.DecisionAllow, Reason: audit.ReasonDNSAllowed},
		{Kind: audit.KindDNS, Workload: pod, DNSName: "x.denied.test", QType: "A", Rcode: "NXDOMAIN", Decision: audit.DecisionDeny, Rule: "no-denied", Reason: audit.ReasonDNSDenied},
		{Kind: audit.KindDNS, Workload: pod, DNSName: "aaaa.t.exfil.test", Rcode: "NXDOMAIN", Decision: audit.DecisionDeny, Rule: "dns-exfiltration", Reason: audit.ReasonDNSExfilLabelLength},
		{Kind: audit.KindDNS, Workload: pod, DNSName: "aaaa.t.exfil.test", Rcode: "NXDOMAIN", Decision: audit.DecisionDeny, Rule: "dns-exfiltration", Reason: audit.ReasonDNSExfilLabelLength},
		{Kind: audit.KindDNS, Workload: pod, DNSName: "q.exfil.test", Rcode: "NOERROR", Decision: audit.DecisionWouldDeny, Rule: "dns-exfiltration", Reason: audit.ReasonDNSExfilRate},
		{Kind: audit.KindL4, Workload: pod, Host: "198.18.0.1", Decision: audit.DecisionDeny, Rule: "require-resolved", Reason: audit.ReasonUnresolved},
		{Kind: audit.KindHTTP, Workload: pod, Host: "dns.google", Method: "POST", Status: 403, Source: "sluice", Decision: audit.DecisionDeny, Rule: "public-resolver", Reason: audit.ReasonPublicResolver},
	} {
		m.Record(&r)
	}
	wl := pod.Name()
	got := scrape(t, m.Registry())
	expect(t, got, map[string]float64{
		fmt.Sprintf(`sluice_dns_queries_total{decision="allow",rcode="NOERROR",workload=%q}`, wl):                                      1,
		fmt.Sprintf(`sluice_dns_queries_total{decision="deny",rcode="NXDOMAIN",workload=%q}`, wl):                                      3,
		fmt.Sprintf(`sluice_dns_exfil_flags_total{decision="deny",reason="label_length",workload=%q}`, wl):                             2,
		fmt.Sprintf(`sluice_dns_exfil_flags_total{decision="would_deny",reason="rate",workload=%q}`, wl):                               1,
		fmt.Sprintf(`sluice_policy_denials_total{decision="deny",reason=%q,rule="no-denied"}`, audit.ReasonDNSDenied):                  1,
		fmt.Sprintf(`sluice_policy_denials_total{decision="deny",reason=%q,rule="dns-exfiltration"}`, audit.ReasonDNSExfilLabelLength): 2,
		fmt.Sprintf(`sluice_policy_denials_total{decision="would_deny",reason=%q,rule="dns-exfiltration"}`, audit.ReasonDNSExfilRate):  1,
		fmt.Sprintf(`sluice_policy_denials_total{decision="deny",reason=%q,rule="require-resolved"}`, audit.ReasonUnresolved):          1,
		fmt.Sprintf(`sluice_policy_denials_total{decision="deny",reason=%q,rule="public-resolver"}`, audit.ReasonPublicResolver):       1,
		`sluice_dns_query_duration_seconds_count{rcode="NOERROR"}`:                                                                     2,
		`sluice_dns_query_duration_seconds_count{rcode="NXDOMAIN"}`:                                                                    3,
	})
	// Only the guard's own reasons are flags: an allowed or rule-denied
	// name is none.
	n := 0
	for k, v := range got {
		if strings.HasPrefix(k, "sluice_dns_exfil_flags_total{") {
			n += int(v)
		}
	}
	if n != 3 {
		t.Errorf("%d exfiltration flags, want 3", n)
	}
}

// TestWorkloadInfo: a record of a container the runtime named sets
// sluice_workload_info with its names; the workload label of the other
// metrics is the container's name; a workload the runtime did not name
// has no info series.
func TestWorkloadInfo(t *testing.T) {
	m := metrics.New(metrics.Options{})
	id := workload.Identity{ContainerID: strings.Repeat("a", 64), Container: "web", Image: "nginx:1.27"}
	m.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: "h.example", Method: "GET", Status: 200, Decision: audit.DecisionAllow, Source: audit.SourceUpstream})
	m.Record(&audit.Record{Kind: audit.KindHTTP, Workload: workload.Identity{Cgroup: "/a.scope"}, Host: "h.example", Method: "GET", Status: 200, Decision: audit.DecisionAllow, Source: audit.SourceUpstream})
	want := `
# HELP sluice_workload_info 1 for each workload the container runtime named: its namespace, pod, container name and image (join on workload).
# TYPE sluice_workload_info gauge
sluice_workload_info{container="web",image="nginx:1.27",namespace="",pod="",workload="container:web"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "sluice_workload_info"); err != nil {
		t.Fatal(err)
	}
	k := `sluice_proxy_requests_total{code="200",decision="allow",host="h.example",method="GET",source="upstream",workload="container:web"}`
	if got := scrape(t, m.Registry())[k]; got != 1 {
		t.Fatalf("%s = %v, want 1", k, got)
	}
}

// Connect events count per decision, repeated ones too (they take the
// cached counter), and decisions past MaxRules fold into "other".
func TestConnectEventCounts(t *testing.T) {
	m := metrics.New(metrics.Options{MaxRules: 2})
	for _, d := range []string{"redirected", "redirected", "direct", "redirected", "denied", "bypassed", "denied"} {
		m.ConnectEvent(d)
	}
	expect(t, scrape(t, m.Registry()), map[string]float64{
		`sluice_agent_connect_events_total{decision="redirected"}`: 3,
		`sluice_agent_connect_events_total{decision="direct"}`:     1,
		`sluice_agent_connect_events_total{decision="other"}`:      3,
	})
}

// An HTTP record's series are looked up once per label set and then
// reused: records of the same labels add up, and the upstream duration
// and byte series appear only once a record has something for them (a
// request Sluice denied has neither).
func TestHTTPSeriesReused(t *testing.T) {
	m := metrics.New(metrics.Options{})
	denied := &audit.Record{Kind: audit.KindHTTP, Workload: pod, Host: "api.test", Method: "GET", Status: 403, Source: "sluice", Decision: audit.DecisionDeny, Duration: time.Millisecond}
	m.Record(denied)
	got := scrape(t, m.Registry())
	for k := range got {
		if strings.HasPrefix(k, "sluice_proxy_transferred_bytes_total{") || strings.HasPrefix(k, "sluice_proxy_upstream_duration_seconds") {
			t.Errorf("series %s exists after a denied request without bytes", k)
		}
	}
	m.Record(denied)
	ok := audit.Record{Kind: audit.KindHTTP, Workload: pod, Host: "api.test", Method: "GET", Status: 200, Source: "upstream", Decision: audit.DecisionAllow,
		BytesIn: 10, BytesOut: 300, Duration: 3 * time.Millisecond, UpstreamDuration: 2 * time.Millisecond}
	for i := 0; i < 3; i++ {
		r := ok
		m.Record(&r)
	}
	expect(t, scrape(t, m.Registry()), map[string]float64{
		`sluice_proxy_requests_total{code="403",decision="deny",host="api.test",method="GET",source="sluice",workload="ai/agent-0"}`:    2,
		`sluice_proxy_requests_total{code="200",decision="allow",host="api.test",method="GET",source="upstream",workload="ai/agent-0"}`: 3,
		`sluice_proxy_request_duration_seconds_count{decision="allow",host="api.test"}`:                                                 3,
		`sluice_proxy_upstream_duration_seconds_count{host="api.test"}`:                                                                 3,
		`sluice_proxy_transferred_bytes_total{direction="in",host="api.test",kind="http",workload="ai/agent-0"}`:                        30,
		`sluice_proxy_transferred_bytes_total{direction="out",host="api.test",kind="http",workload="ai/agent-0"}`:                       900,
	})
}

// TestRecentMatchesFolding: the recent cache of HTTP label sets counts
// exactly what folding every record does, with folders that fill up
// (few hosts and workloads admitted), odd raw values (empty, "other",
// "unknown", invalid statuses, unknown methods) and other kinds of
// record in between.
func TestRecentMatchesFolding(t *testing.T) {
	for _, one := range []bool{false, true} {
		// Few workloads fold most to "other"; many keep each apart.
		for _, maxWorkloads := range []int{4, 100} {
			recentMatchesFolding(t, one, maxWorkloads)
		}
	}
}

func recentMatchesFolding(t *testing.T, oneSlot bool, maxWorkloads int) {
	o := metrics.Options{MaxHosts: 3, MaxWorkloads: maxWorkloads, MaxRules: 4}
	cached, plain := metrics.New(o), metrics.New(o)
	metrics.NoRecent(plain)
	if oneSlot {
		metrics.OneRecentSlot(cached)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	pick := func(vs ...string) string { return vs[rng.IntN(len(vs))] }
	ids := []workload.Identity{
		pod, ctr, {}, {PID: 9, Cgroup: "/a"}, {PID: 9, Cgroup: "/b"},
		{Namespace: "ai", Pod: "agent-1", Container: "c", Image: "i:1"},
		{Namespace: "ai", Pod: "agent-1", Container: "c", Image: "i:2"},
		{ContainerID: "0123456789abcdef0123", Container: "web"},
		// Each differs from another in one raw value only.
		{Namespace: "ml", Pod: "agent-1", Container: "c", Image: "i:1"},
		{Namespace: "ai", Pod: "agent-2", Container: "c", Image: "i:1"},
		{Namespace: "ai", Pod: "agent-1", Container: "d", Image: "i:1"},
		{ContainerID: "0123456789abcdef0124", Container: "web"},
		{ContainerID: "0123456789abcdef0123"}, {ContainerID: "1123456789abcdef0123"},
	}
	var prev audit.Record
	for range 20000 {
		r := audit.Record{
			Kind: audit.KindHTTP, Workload: ids[rng.IntN(len(ids))],
			Host:     pick("", "a.test", "b.test", "c.test", "d.test", "other", "unknown", "e.test"),
			Method:   pick("GET", "POST", "BREW", "", "get"),
			Decision: pick(audit.DecisionAllow, audit.DecisionDeny, audit.DecisionWouldDeny, audit.DecisionError, "", "odd"),
			Source:   pick("upstream", "sluice", "", "client"),
			Status:   []int{0, 200, 204, 429, 503, 99, 600, -1, 1000}[rng.IntN(9)],
			Rule:     pick("", "r1", "r2"), Reason: pick("", "x"),
			BytesIn: int64(rng.IntN(3)), BytesOut: int64(rng.IntN(3)),
			Duration: time.Duration(rng.IntN(3)) * time.Millisecond, UpstreamDuration: time.Duration(rng.IntN(2)) * time.Millisecond,
		}
		switch rng.IntN(10) {
		case 0:
			r.Kind = audit.KindL4
		case 1:
			r.Kind = audit.KindDNS
		}
		if rng.IntN(2) == 0 {
			// As the record before but from another workload, so that
			// a cache entry missing one of its raw values shows.
			w := r.Workload
			r = prev
			r.Workload = w
		}
		prev = r
		c := r
		cached.Record(&r)
		plain.Record(&c)
	}
	got, want := scrape(t, cached.Registry()), scrape(t, plain.Registry())
	for k, v := range want {
		if strings.HasPrefix(k, "go_") || strings.HasPrefix(k, "process_") {
			continue
		}
		if got[k] != v {
			t.Errorf("one slot %v: %s = %v with the cache, %v without", oneSlot, k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("one slot %v: %s only with the cache", oneSlot, k)
		}
	}
}

// A request like the one before it but from a workload of another image
// sets that workload's info series: the recent cache does not hide it.
func TestRecentNewImage(t *testing.T) {
	m := metrics.New(metrics.Options{})
	metrics.OneRecentSlot(m)
	for _, img := range []string{"i:1", "i:2"} {
		m.Record(&audit.Record{Kind: audit.KindHTTP, Workload: workload.Identity{Namespace: "ai", Pod: "p", Container: "c", Image: img},
			Host: "a.test", Method: "GET", Status: 200, Source: "upstream", Decision: audit.DecisionAllow})
	}
	expect(t, scrape(t, m.Registry()), map[string]float64{
		`sluice_workload_info{container="c",image="i:1",namespace="ai",pod="p",workload="ai/p"}`: 1,
		`sluice_workload_info{container="c",image="i:2",namespace="ai",pod="p",workload="ai/p"}`: 1,
	})
}
