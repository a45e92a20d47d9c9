package advise

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

var update = flag.Bool("update", false, "rewrite testdata/audit.jsonl from fixtureRecords")

// Workloads of the fixture.
var (
	agentWL = workload.Identity{Client: netip.MustParseAddrPort("10.1.0.2:40000"), PID: 4242, UID: 1000, Comm: "python3", Exe: "/usr/bin/python3.12", Cgroup: "/system.slice/agent.service"}
	payWL   = workload.Identity{Client: netip.MustParseAddrPort("10.1.0.3:40000"), PID: 77, Comm: "node", Exe: "/usr/local/bin/node",
		Cgroup:      "/kubepods.slice/kubepods-pod1.slice/cri-containerd-3f9a2c1d5e7b8a9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c.scope",
		ContainerID: "3f9a2c1d5e7b8a9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c", Namespace: "payments", Pod: "checkout-5d9f"}
)

// fixtureRecords is a realistic hour of two workloads under the default
// (audit) policy: an agent calling GitHub, S3 buckets, an MCP server, an
// internal service and a pinned pass-through host; a payments pod calling
// Stripe; DNS lookups; one deny, one kernel connect event.
func fixtureRecords() []*audit.Record {
	t0 := time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	gh := netip.MustParseAddr("140.82.121.6")
	var rs []*audit.Record
	http := func(s int, wl workload.Identity, host string, ip netip.Addr, port uint16, method, path string) *audit.Record {
		r := &audit.Record{Time: at(s), Kind: audit.KindHTTP, Workload: wl, Host: host, DstIP: ip, Port: port, SNI: host, TLS: audit.TLSDecrypted,
			Proto: "HTTP/1.1", Method: method, Path: path, Status: 200, Source: audit.SourceUpstream, BytesIn: 120, BytesOut: 2048,
			Duration: 85 * time.Millisecond, Decision: audit.DecisionAllow, Rule: "default", Reason: audit.ReasonAllowedByDefault}
		if port == 80 || port == 8080 {
			r.TLS, r.SNI = audit.TLSNone, ""
		}
		rs = append(rs, r)
		return r
	}
	dnsq := func(s int, wl workload.Identity, name string, a netip.Addr) {
		rs = append(rs, &audit.Record{Time: at(s), Kind: audit.KindDNS, Workload: wl, DNSName: name + ".", QType: "A", Rcode: "NOERROR",
			Answers: []netip.Addr{a}, Decision: audit.DecisionAllow, Rule: "default", Reason: audit.ReasonDNSAllowed})
	}
	dnsq(0, agentWL, "api.github.com", gh)
	// A burst of 12 issue reads within a minute: the peak.
	for i := range 12 {
		http(1+i*3, agentWL, "api.github.com", gh, 443, "GET", fmt.Sprintf("/repos/acme/widgets/issues/%d", 100+i))
	}
	http(60, agentWL, "api.github.com", gh, 443, "POST", "/repos/acme/widgets/issues")
	http(90, agentWL, "api.github.com", gh, 443, "GET", "/repos/acme/widgets/pulls/7/files?page=2")
	http(120, agentWL, "api.github.com", gh, 443, "GET", "/repos/acme/widgets/git/commits/9fceb02d0ae598e95dc970b74767f19372d61af8")
	for i, b := range []string{"logs", "models", "tmp"} {
		ip := netip.MustParseAddr(fmt.Sprintf("52.216.1.%d", i+1))
		http(200+i*10, agentWL, b+".s3.amazonaws.com", ip, 443, "GET", "/objects/3c2a8f4e-1b7d-4f0e-9a6b-2d5c8e9f1a0b")
		http(205+i*10, agentWL, b+".s3.amazonaws.com", ip, 443, "PUT", "/objects/3c2a8f4e-1b7d-4f0e-9a6b-2d5c8e9f1a0b")
	}
	mcp := netip.MustParseAddr("203.0.113.10")
	dnsq(300, agentWL, "mcp.example.com", mcp)
	r := http(301, agentWL, "mcp.example.com", mcp, 443, "POST", "/mcp")
	r.MCPMethod = "initialize"
	for i, tool := range []string{"search", "fetch_page", "search"} {
		r = http(302+i, agentWL, "mcp.example.com", mcp, 443, "POST", "/mcp")
		r.MCPMethod, r.MCPTool = "tools/call", tool
	}
	// An internal service on a private address: the guard would block it.
	r = http(400, agentWL, "internal.svc", netip.MustParseAddr("10.0.0.5"), 8080, "GET", "/health")
	r.Decision, r.Rule, r.Reason = audit.DecisionWouldDeny, "ssrf", audit.ReasonPrivate
	// A pinned host relayed without decryption.
	rs = append(rs, &audit.Record{Time: at(500), Kind: audit.KindL4, Workload: agentWL, Host: "pinned.example.com", SNI: "pinned.example.com",
		DstIP: netip.MustParseAddr("198.51.100.7"), Port: 443, TLS: audit.TLSPassthrough, BytesIn: 900, BytesOut: 5000, Duration: time.Second,
		Decision: audit.DecisionAllow, Rule: "passthrough", Reason: audit.ReasonPassthrough})
	// Denied: never part of a suggestion.
	r = http(600, agentWL, "evil.example", netip.MustParseAddr("192.0.2.66"), 443, "POST", "/upload")
	r.Status, r.Source, r.Decision, r.Rule, r.Reason = 403, audit.SourceSluice, audit.DecisionDeny, "deny-evil", audit.ReasonDeniedByRule
	// A kernel connect event: not a policy decision.
	rs = append(rs, &audit.Record{Time: at(601), Kind: audit.KindConnect, Workload: agentWL, DstIP: gh, Port: 443, Decision: "redirected"})
	stripe := netip.MustParseAddr("54.187.174.169")
	http(700, payWL, "api.stripe.com", stripe, 443, "POST", "/v1/charges")
	http(701, payWL, "api.stripe.com", stripe, 443, "GET", "/v1/charges/ch_3MqLWb2eZvKYlo2C1Xa3Bv8x")
	http(702, payWL, "api.stripe.com", stripe, 443, "GET", "/v1/customers/cus_NffrFeUfNV2Hib/sources")
	r = http(703, payWL, "api.stripe.com", stripe, 443, "POST", "/v1/refunds")
	r.Status, r.Decision, r.PolicyDecision, r.PolicyRule, r.PolicyReason = 502, audit.DecisionError, audit.DecisionAllow, "default", audit.ReasonAllowedByDefault
	r.Error, r.Reason = "dial tcp: connection refused", "upstream unreachable"
	return rs
}

// fixtureLog renders fixtureRecords as audit.JSONLog writes them.
func fixtureLog() []byte {
	var b bytes.Buffer
	l := audit.NewJSONLog(&b)
	for _, r := range fixtureRecords() {
		l.Record(r)
	}
	return b.Bytes()
}

func TestFixtureIsCurrent(t *testing.T) {
	want := fixtureLog()
	if *update {
		if err := os.WriteFile("testdata/audit.jsonl", want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("testdata/audit.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("testdata/audit.jsonl is stale: go test ./advise -run TestFixtureIsCurrent -update")
	}
}
