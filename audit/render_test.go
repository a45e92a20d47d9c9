package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

// records are the records the renderer tests share: one per shape the
// proxy and the agent emit.
var records = []struct {
	name string
	r    audit.Record
}{
	{"every field", audit.Record{
		Time: at, Kind: audit.KindHTTP,
		Workload: workload.Identity{Client: netip.MustParseAddrPort("10.0.0.5:40000"), PID: 42, UID: 1000, Comm: "python3",
			Exe: "/usr/bin/python3", Cgroup: "/kubepods/pod1/cri-containerd-1.scope", ContainerID: "c1", PodUID: "u1",
			Namespace: "ns", Pod: "agent-0"},
		Host: "api.example.com", DstIP: netip.MustParseAddr("192.0.2.10"), Port: 443, SNI: "api.example.com",
		TLS: audit.TLSDecrypted, ALPN: "h2", Proto: "HTTP/2.0", Method: "POST", Path: "/v1/messages", Status: 200,
		Source: "upstream", BytesIn: 512, BytesOut: 4096, Duration: 1234567 * time.Microsecond,
		UpstreamDuration: 1200 * time.Millisecond, UpstreamAddr: "192.0.2.10:443", Decision: audit.DecisionAllow,
		Rule: "llm", Reason: audit.ReasonAllowedByRule, MCPMethod: "tools/call", MCPTool: "search", MCPSession: "s1",
		MCPID: "7", MCPProtocol: "2025-06-18", MCPErrorCode: -32602, MCPHidden: []string{"shell"},
		TokenAudience: []string{"https://mcp.example.com"},
		Detectors:     []string{"aws-access-key-id"}, Credentials: []string{"openai"},
		Header: map[string]string{"User-Agent": "anthropic-python/0.40", "Authorization": audit.Redacted},
	}},
	{"deny by sluice", audit.Record{
		Time: at, Kind: audit.KindHTTP, Host: "169.254.169.254", DstIP: netip.MustParseAddr("169.254.169.254"), Port: 80,
		TLS: audit.TLSNone, Proto: "HTTP/1.1", Method: "GET", Path: "/latest/meta-data/", Status: 403, Source: "sluice",
		BytesOut: 97, Decision: audit.DecisionDeny, Rule: "ssrf", Reason: audit.ReasonMetadata, Duration: 300 * time.Microsecond,
	}},
	{"would deny", audit.Record{
		Time: at, Kind: audit.KindHTTP, Workload: workload.Identity{Client: netip.MustParseAddrPort("[fd00::5]:4000")},
		Host: "files.example", Method: "PUT", Path: "/upload", Status: 201, Source: "upstream",
		Decision: audit.DecisionWouldDeny, Rule: "audit-files", Reason: audit.ReasonDeniedByRule,
	}},
	{"upstream error", audit.Record{
		Time: at, Kind: audit.KindL4, Host: "bank.example", Port: 443, TLS: audit.TLSPassthrough,
		Decision: audit.DecisionError, Reason: audit.ReasonUpstreamUnreachable, Error: "dial tcp 192.0.2.1:443: connection refused",
	}},
	{"client left", audit.Record{
		Time: at, Kind: audit.KindHTTP, Host: "api.example.com", Method: "GET", Path: "/stream", Status: 200,
		Decision: audit.DecisionError, Reason: audit.ReasonClientGone, Error: "client went away before the response",
		BytesOut: 100, Duration: 2 * time.Second,
	}},
	{"kernel connect", audit.Record{
		Time: at, Kind: audit.KindConnect, Workload: workload.Identity{PID: 7, Comm: "curl"},
		DstIP: netip.MustParseAddr("203.0.113.9"), Port: 22, Decision: "redirected",
	}},
}

// jsonLine decodes one JSON log line into its keys, without the handler's
// own (time, level, msg).
func jsonLine(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	delete(m, audit.KeyTime)
	delete(m, audit.KeyLevel)
	delete(m, audit.KeyMsg)
	return m
}

// TestDecisionLineAgrees: the decision line carries a subset of the audit
// line's keys, with the same values, and everything a person needs to
// follow a decision.
func TestDecisionLineAgrees(t *testing.T) {
	for _, tc := range records {
		t.Run(tc.name, func(t *testing.T) {
			var ab, db bytes.Buffer
			audit.NewJSONLog(&ab).Record(&tc.r)
			audit.LogDecision(context.Background(), slog.New(slog.NewJSONHandler(&db, &slog.HandlerOptions{Level: slog.LevelDebug})), &tc.r)
			auditKeys, lineKeys := jsonLine(t, ab.Bytes()), jsonLine(t, db.Bytes())
			if len(lineKeys) == 0 || len(lineKeys) > audit.MaxDecisionAttrs {
				t.Errorf("decision line has %d keys, want 1..%d", len(lineKeys), audit.MaxDecisionAttrs)
			}
			for k, v := range lineKeys {
				av, ok := auditKeys[k]
				if !ok {
					t.Errorf("decision key %q = %v is not in the audit line", k, v)
					continue
				}
				if !reflect.DeepEqual(v, av) {
					t.Errorf("%s: decision line %v, audit line %v", k, v, av)
				}
			}
			for _, k := range []string{audit.KeyKind, audit.KeyWorkload, audit.KeyDecision, audit.KeyBytesIn, audit.KeyBytesOut, audit.KeyDurationMS} {
				if _, ok := lineKeys[k]; !ok {
					t.Errorf("decision line lacks %q", k)
				}
			}
			for _, k := range []string{audit.KeyClient, audit.KeyHost, audit.KeyIP, audit.KeyPort, audit.KeySNI, audit.KeyTLS,
				audit.KeyMethod, audit.KeyPath, audit.KeyStatus, audit.KeyRule, audit.KeyReason, audit.KeyError} {
				_, inAudit := auditKeys[k]
				if _, inLine := lineKeys[k]; inLine != inAudit {
					t.Errorf("%q: in the decision line %v, in the audit line %v", k, inLine, inAudit)
				}
			}
		})
	}
}

// TestDecisionLineText pins the decision line as a person reads it (the
// text handler of `sluice run`): keys, order and values are those the
// proxy wrote before audit rendered it.
func TestDecisionLineText(t *testing.T) {
	want := map[string]string{
		"every field":    `level=INFO msg=decision kind=http workload=ns/agent-0 decision=allow client=10.0.0.5:40000 host=api.example.com ip=192.0.2.10 port=443 sni=api.example.com tls=decrypted method=POST path=/v1/messages status=200 mcp_method=tools/call mcp_tool=search rule=llm reason="allowed by rule" token_audience=[https://mcp.example.com] detectors=[aws-access-key-id] bytes_in=512 bytes_out=4096 duration_ms=1234.567`,
		"deny by sluice": `level=WARN msg=decision kind=http workload=unknown decision=deny host=169.254.169.254 ip=169.254.169.254 port=80 tls=none method=GET path=/latest/meta-data/ status=403 rule=ssrf reason="destination is a cloud metadata address" bytes_in=0 bytes_out=97 duration_ms=0.3`,
		"would deny":     `level=INFO msg=decision kind=http workload=unknown decision=would_deny client=[fd00::5]:4000 host=files.example method=PUT path=/upload status=201 rule=audit-files reason="denied by rule" bytes_in=0 bytes_out=0 duration_ms=0`,
		"upstream error": `level=ERROR msg=decision kind=l4 workload=unknown decision=error host=bank.example port=443 tls=passthrough reason="upstream unreachable" error="dial tcp 192.0.2.1:443: connection refused" bytes_in=0 bytes_out=0 duration_ms=0`,
		"client left":    `level=WARN msg=decision kind=http workload=unknown decision=error host=api.example.com method=GET path=/stream status=200 reason="client gone" error="client went away before the response" bytes_in=0 bytes_out=100 duration_ms=2000`,
		"kernel connect": `level=INFO msg=decision kind=connect workload=` + (&workload.Identity{PID: 7, Comm: "curl"}).Name() + ` decision=redirected ip=203.0.113.9 port=22 bytes_in=0 bytes_out=0 duration_ms=0`,
	}
	noTime := func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	for _, tc := range records {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			audit.LogDecision(context.Background(), slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{ReplaceAttr: noTime})), &tc.r)
			if got := strings.TrimSuffix(b.String(), "\n"); got != want[tc.name] {
				t.Errorf("line:\n got %s\nwant %s", got, want[tc.name])
			}
		})
	}
}

func TestDecisionLevel(t *testing.T) {
	for _, tc := range []struct {
		decision, reason string
		want             slog.Level
	}{
		{audit.DecisionAllow, audit.ReasonAllowedByRule, slog.LevelInfo},
		{audit.DecisionAllow, audit.ReasonLimiterDownPass, slog.LevelInfo},
		{audit.DecisionWouldDeny, audit.ReasonDeniedByRule, slog.LevelInfo}, // audit mode is not a warning
		{audit.DecisionWouldDeny, audit.ReasonLoopback, slog.LevelInfo},
		{audit.DecisionDeny, audit.ReasonDeniedByRule, slog.LevelWarn},
		{audit.DecisionDeny, audit.ReasonRateLimited, slog.LevelWarn},
		{audit.DecisionDeny, audit.ReasonRequestTooLarge, slog.LevelWarn},
		{audit.DecisionError, audit.ReasonUpstreamUnreachable, slog.LevelError},
		{audit.DecisionError, audit.ReasonUpstreamVerify, slog.LevelError},
		{audit.DecisionError, audit.ReasonUpstreamTimeout, slog.LevelError},
		{audit.DecisionError, audit.ReasonUpstreamError, slog.LevelError},
		{audit.DecisionError, audit.ReasonTooManyConns, slog.LevelError},
		{audit.DecisionError, "", slog.LevelError},
		{audit.DecisionError, audit.ReasonClientGone, slog.LevelWarn},
		{audit.DecisionError, audit.ReasonNormalClose, slog.LevelWarn},
		{audit.DecisionError, audit.ReasonMalformed, slog.LevelWarn},
		{audit.DecisionError, audit.ReasonHeaderTooLarge, slog.LevelWarn},
		{audit.DecisionError, audit.ReasonSmuggling, slog.LevelWarn},
		{audit.DecisionError, audit.ReasonNotProxy, slog.LevelWarn},
		{audit.DecisionError, audit.ReasonBadHello, slog.LevelWarn},
		{audit.DecisionError, audit.ReasonClientHandshake, slog.LevelWarn},
		{audit.DecisionError, audit.ReasonClientSilent, slog.LevelWarn},
		{"redirected", "", slog.LevelInfo},
		{"", "", slog.LevelInfo},
	} {
		r := audit.Record{Decision: tc.decision, Reason: tc.reason}
		if got := audit.DecisionLevel(&r); got != tc.want {
			t.Errorf("DecisionLevel(%q, %q) = %v, want %v", tc.decision, tc.reason, got, tc.want)
		}
	}
}

func TestClientCaused(t *testing.T) {
	set := audit.ClientCausedReasons()
	if len(set) == 0 {
		t.Fatal("no client-caused reasons")
	}
	for _, r := range set {
		if !audit.ClientCaused(r) {
			t.Errorf("ClientCaused(%q) = false, but it is listed", r)
		}
	}
	set[0] = "changed"
	if audit.ClientCausedReasons()[0] == "changed" {
		t.Error("ClientCausedReasons returns the package's own array")
	}
	for _, r := range []string{"", audit.ReasonUpstreamError, audit.ReasonDeniedByRule, audit.ReasonTooManyConns, "Client gone"} {
		if audit.ClientCaused(r) {
			t.Errorf("ClientCaused(%q) = true", r)
		}
	}
}

// TestLogDecisionDisabled: below the logger's level nothing is built.
func TestLogDecisionDisabled(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r := records[0].r // allow: Info
	if n := testing.AllocsPerRun(100, func() { audit.LogDecision(context.Background(), log, &r) }); n != 0 {
		t.Errorf("disabled LogDecision allocates %v times", n)
	}
	if b.Len() != 0 {
		t.Errorf("wrote %q", b.String())
	}
}

// TestAppendDecisionAttrsAllocs: a line fits in a stack array; only the
// values that must be formatted (client, ip, workload name) allocate.
func TestAppendDecisionAttrsAllocs(t *testing.T) {
	r := records[3].r // no client, no ip, unknown workload
	var buf [audit.MaxDecisionAttrs]slog.Attr
	if n := testing.AllocsPerRun(100, func() { _ = r.AppendDecisionAttrs(buf[:0]) }); n != 0 {
		t.Errorf("AppendDecisionAttrs allocates %v times", n)
	}
	for _, tc := range records {
		if n := len(tc.r.AppendDecisionAttrs(nil)); n > audit.MaxDecisionAttrs {
			t.Errorf("%s: %d attributes, more than MaxDecisionAttrs %d", tc.name, n, audit.MaxDecisionAttrs)
		}
	}
	full := records[0].r
	full.Error, full.End, full.GRPCStatus = "x", audit.EndClientClosed, "5"
	full.DNSName, full.QType, full.Rcode = "api.example.com", "A", "NOERROR"
	if n := len(full.AppendDecisionAttrs(nil)); n != audit.MaxDecisionAttrs {
		t.Errorf("a full record has %d attributes, MaxDecisionAttrs is %d", n, audit.MaxDecisionAttrs)
	}
}

// nopHandler is enabled at every level and drops the record, so that a
// benchmark measures building the line, not writing it.
type nopHandler struct{}

func (nopHandler) Enabled(context.Context, slog.Level) bool  { return true }
func (nopHandler) Handle(context.Context, slog.Record) error { return nil }
func (h nopHandler) WithAttrs([]slog.Attr) slog.Handler      { return h }
func (h nopHandler) WithGroup(string) slog.Handler           { return h }

func BenchmarkLogDecision(b *testing.B) {
	log := slog.New(nopHandler{})
	r := records[0].r
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		audit.LogDecision(ctx, log, &r)
	}
}

func BenchmarkJSONLog(b *testing.B) {
	var buf bytes.Buffer
	l := audit.NewJSONLog(&buf)
	r := records[0].r
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		l.Record(&r)
	}
}
