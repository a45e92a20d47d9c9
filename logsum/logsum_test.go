package logsum

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

// auditLine renders r with the real audit writer.
func auditLine(t *testing.T, r audit.Record) string {
	t.Helper()
	var b bytes.Buffer
	audit.NewJSONLog(&b).Record(&r)
	return strings.TrimSuffix(b.String(), "\n")
}

func TestParseLine(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 8, 0, 0, 500, time.UTC)
	real := auditLine(t, audit.Record{
		Time: t0, Kind: audit.KindHTTP,
		Workload: workload.Identity{Namespace: "ns", Pod: "p", PID: 7, Comm: "python3"},
		Host:     "api.example.com", Method: "GET", Path: "/x", Status: 429, Source: "sluice",
		Decision: audit.DecisionDeny, Rule: "rl", Reason: "rate limit exceeded",
		BytesIn: 3, BytesOut: 4, Duration: 1500 * time.Microsecond,
	})
	for _, c := range []struct {
		name    string
		line    string
		want    Entry
		wantErr error // nil: success; ErrNotAudit; errAny: any other error
	}{
		{name: "real record", line: real, want: Entry{
			Time: t0, Kind: "http", PID: 7, Comm: "python3", Workload: "ns/p", Namespace: "ns", Pod: "p", Host: "api.example.com",
			Method: "GET", Path: "/x", Status: 429, Source: "sluice", Decision: "deny", Rule: "rl",
			Reason: "rate limit exceeded", BytesIn: 3, BytesOut: 4, DurationMS: 1.5,
		}},
		{name: "padded with CR", line: real + "\r", want: Entry{
			Time: t0, Kind: "http", PID: 7, Comm: "python3", Workload: "ns/p", Namespace: "ns", Pod: "p", Host: "api.example.com",
			Method: "GET", Path: "/x", Status: 429, Source: "sluice", Decision: "deny", Rule: "rl",
			Reason: "rate limit exceeded", BytesIn: 3, BytesOut: 4, DurationMS: 1.5,
		}},
		{name: "no msg but kind", line: `{"kind":"l4","ip":"192.0.2.1"}`, want: Entry{Kind: "l4", IP: "192.0.2.1"}},
		{name: "other log line", line: `{"time":"2026-11-25T08:00:00Z","level":"INFO","msg":"started"}`, wantErr: ErrNotAudit},
		{name: "object without msg or kind", line: `{"a":1}`, wantErr: ErrNotAudit},
		{name: "not json", line: `hello`, wantErr: errAny},
		{name: "json null", line: `null`, wantErr: errAny},
		{name: "json array", line: `[1]`, wantErr: errAny},
		{name: "truncated", line: real[:len(real)/2], wantErr: errAny},
		{name: "status as string", line: `{"msg":"audit","status":"200"}`, wantErr: errAny},
		{name: "bad time", line: `{"msg":"audit","time":"yesterday"}`, wantErr: errAny},
		{name: "empty", line: ``, wantErr: errAny},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseLine([]byte(c.line))
			switch {
			case c.wantErr == nil && err != nil:
				t.Fatalf("error %v", err)
			case c.wantErr == errAny && (err == nil || errors.Is(err, ErrNotAudit)):
				t.Fatalf("error %v, want a parse error", err)
			case c.wantErr == ErrNotAudit && !errors.Is(err, ErrNotAudit):
				t.Fatalf("error %v, want ErrNotAudit", err)
			}
			if err == nil && !reflect.DeepEqual(got, c.want) {
				t.Errorf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}
}

var errAny = errors.New("any error")

// TestClassify feeds one record at a time and checks which sections count it.
func TestClassify(t *testing.T) {
	type counts struct{ rate, deny, would, auth, server, requests int64 }
	for _, c := range []struct {
		name string
		e    Entry
		want counts
	}{
		{"allowed 200", Entry{Status: 200, Source: "upstream", Decision: "allow"}, counts{requests: 1}},
		{"sluice 429", Entry{Status: 429, Source: "sluice", Decision: "deny", Rule: "rl"}, counts{rate: 1, deny: 1, requests: 1}},
		{"upstream 429 is not ours", Entry{Status: 429, Source: "upstream", Decision: "allow"}, counts{requests: 1}},
		{"sluice 403 deny is not an auth failure", Entry{Status: 403, Source: "sluice", Decision: "deny"}, counts{deny: 1, requests: 1}},
		{"upstream 401", Entry{Status: 401, Source: "upstream", Decision: "allow"}, counts{auth: 1, requests: 1}},
		{"upstream 403", Entry{Status: 403, Source: "upstream", Decision: "allow"}, counts{auth: 1, requests: 1}},
		{"upstream 404", Entry{Status: 404, Source: "upstream"}, counts{requests: 1}},
		{"upstream 500", Entry{Status: 500, Source: "upstream"}, counts{server: 1, requests: 1}},
		{"upstream 599", Entry{Status: 599, Source: "upstream"}, counts{server: 1, requests: 1}},
		{"sluice 502", Entry{Status: 502, Source: "sluice", Decision: "error"}, counts{requests: 1}},
		{"would deny with upstream 500", Entry{Status: 500, Source: "upstream", Decision: "would_deny"}, counts{would: 1, server: 1, requests: 1}},
		{"kernel connect deny", Entry{Kind: "connect", Decision: "deny", Rule: "block"}, counts{deny: 1}},
		{"l4 flow", Entry{Kind: "l4", Decision: "allow"}, counts{requests: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := New()
			s.Add(c.e)
			sum := s.Summary(0)
			got := counts{sum.RateLimited.Total, sum.Denials.Total, sum.WouldDeny.Total, sum.AuthFailures.Total, sum.ServerErrors.Total, sum.Totals.Requests}
			if got != c.want {
				t.Errorf("counts %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestLabels(t *testing.T) {
	for _, c := range []struct {
		e        Entry
		wl, host string
	}{
		{Entry{Workload: "ns/p", Comm: "x", Host: "API.Example.com", IP: "192.0.2.1"}, "ns/p", "api.example.com"},
		{Entry{Workload: "unknown", Comm: "curl", IP: "192.0.2.1"}, "comm:curl", "192.0.2.1"},
		{Entry{}, "unknown", "unknown"},
	} {
		if wl, h := WorkloadOf(c.e), HostOf(c.e); wl != c.wl || h != c.host {
			t.Errorf("%+v: workload %q host %q, want %q %q", c.e, wl, h, c.wl, c.host)
		}
	}
}

func TestReadLinesAndLimits(t *testing.T) {
	rec, _ := MarshalLine(Entry{Kind: "http", Host: "a.example", Status: 200})
	long := `{"msg":"audit","kind":"http","path":"` + strings.Repeat("a", MaxLine) + `"}`
	var in bytes.Buffer
	in.Write(rec)
	in.WriteString("\r\n\n   \n")
	in.WriteString(long + "\n")
	in.Write(rec) // last line without newline
	s := New()
	if err := s.Read("in", &in); err != nil {
		t.Fatal(err)
	}
	sum := s.Summary(0)
	if sum.Records != 2 || sum.Unparseable != 1 || sum.Lines != 3 {
		t.Fatalf("records %d unparseable %d lines %d, want 2 1 3", sum.Records, sum.Unparseable, sum.Lines)
	}
	if e := sum.UnparseableSamples[0]; e.Line != 4 || !strings.Contains(e.Error, "longer than") {
		t.Errorf("sample %+v, want line 4 too long", e)
	}
}

func TestReadGzip(t *testing.T) {
	var plain bytes.Buffer
	for range 100 {
		b, _ := MarshalLine(Entry{Kind: "http", Host: "a.example", Status: 200, BytesOut: 10})
		plain.Write(append(b, '\n'))
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(plain.Bytes())
	zw.Close()
	// Two concatenated gzip members (what `cat a.gz b.gz` makes) read as one.
	both := append(append([]byte{}, z.Bytes()...), z.Bytes()...)
	s := New()
	if err := s.Read("z", bytes.NewReader(both)); err != nil {
		t.Fatal(err)
	}
	if sum := s.Summary(0); sum.Records != 200 || sum.Totals.BytesOut != 2000 {
		t.Errorf("records %d bytes %d, want 200 2000", sum.Records, sum.Totals.BytesOut)
	}
	// A truncated gzip file is a read error; what came before it counts.
	s = New()
	err := s.Read("cut.gz", bytes.NewReader(z.Bytes()[:z.Len()-10]))
	if err == nil || !strings.Contains(err.Error(), "cut.gz") {
		t.Errorf("truncated gzip: %v", err)
	}
	sum := s.Summary(0)
	if len(sum.ReadErrors) != 1 || sum.Records < 1 {
		t.Errorf("truncated gzip: records %d read errors %v", sum.Records, sum.ReadErrors)
	}
	// A reader that fails is recorded too.
	s = New()
	if err := s.Read("bad", iotestErr{}); err == nil {
		t.Error("failing reader: no error")
	}
}

type iotestErr struct{}

func (iotestErr) Read([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestTopAndOrder(t *testing.T) {
	s := New()
	for i, h := range []string{"c.example", "b.example", "a.example", "b.example", "c.example", "c.example"} {
		s.Add(Entry{Host: h, Workload: "w", BytesOut: int64(i)})
	}
	sum := s.Summary(2)
	var names []string
	for _, r := range sum.TopHosts.Rows {
		names = append(names, r.Name)
	}
	if !reflect.DeepEqual(names, []string{"c.example", "b.example"}) || sum.TopHosts.Distinct != 3 {
		t.Errorf("top hosts %v distinct %d", names, sum.TopHosts.Distinct)
	}
	// Equal counts: by name.
	s = New()
	for _, r := range []string{"z", "y", "x"} {
		s.Add(Entry{Decision: "deny", Rule: r})
	}
	sum = s.Summary(0)
	var rules []string
	for _, r := range sum.Denials.Rows {
		rules = append(rules, r.Rule)
	}
	if !reflect.DeepEqual(rules, []string{"x", "y", "z"}) {
		t.Errorf("tie order %v", rules)
	}
}

func TestWriteTextQuotesHostileValues(t *testing.T) {
	s := New()
	s.Add(Entry{Host: "evil\x1b[2J.example", Status: 429, Source: "sluice", Workload: "w\tx"})
	var b bytes.Buffer
	if err := WriteText(&b, s.Summary(10)); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if strings.ContainsRune(out, '\x1b') {
		t.Error("escape character reached the table")
	}
	for _, want := range []string{`"evil\x1b[2j.example"`, `"w\tx"`} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %s:\n%s", want, out)
		}
	}
}

func TestWriteTextEmpty(t *testing.T) {
	var b bytes.Buffer
	if err := WriteText(&b, New().Summary(10)); err != nil {
		t.Fatal(err)
	}
	if out := b.String(); !strings.Contains(out, "0 records from no input") || strings.Count(out, "  none\n") != 11 {
		t.Errorf("empty summary:\n%s", out)
	}
}

// TestEntryFields: every Entry field has one audit key, and a full entry
// survives MarshalLine and ParseLine.
func TestEntryFields(t *testing.T) {
	if n := reflect.TypeFor[Entry]().NumField(); n != len(fields) {
		t.Fatalf("Entry has %d fields, fields maps %d", n, len(fields))
	}
	e := Entry{
		Time: time.Date(2026, 11, 25, 8, 0, 0, 5, time.UTC), Kind: "http", PID: 7, Comm: "c", Workload: "ns/p",
		Namespace: "ns", Pod: "p", Container: "app", Image: "python:3.12",
		Host: "h.example", IP: "192.0.2.1", Method: "GET", Path: "/", Status: 200, Source: "upstream",
		Decision: "allow", Rule: "r", Reason: "allowed by rule", BytesIn: 1, BytesOut: 2, DurationMS: 0.5, DNSName: "h.example",
		MCPMethod: "tools/call", MCPTool: "echo", MCPErrorCode: -32030,
	}
	b, err := MarshalLine(e)
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]any
	if err := json.Unmarshal(b, &keys); err != nil {
		t.Fatal(err)
	}
	if len(keys) != len(fields)+1 {
		t.Errorf("MarshalLine wrote %d keys, want %d: %s", len(keys), len(fields)+1, b)
	}
	got, err := ParseLine(b)
	if err != nil || got != e {
		t.Errorf("ParseLine(MarshalLine(e)) = %+v, %v\nwant %+v", got, err, e)
	}
}

// DNS records: denied names by workload, name and rule; exfiltration
// suspects by workload, domain and reason; dns_name names a destination
// without a host.
func TestDNSSections(t *testing.T) {
	s := New()
	for _, e := range []Entry{
		{Kind: audit.KindDNS, Workload: "w1", DNSName: "x.paste.example", Decision: audit.DecisionDeny, Rule: "no-paste", Reason: audit.ReasonDNSDenied},
		{Kind: audit.KindDNS, Workload: "w1", DNSName: "x.paste.example", Decision: audit.DecisionDeny, Rule: "no-paste", Reason: audit.ReasonDNSDenied},
		{Kind: audit.KindDNS, Workload: "w1", DNSName: "aaaa1.t.evil.co.uk", Decision: audit.DecisionWouldDeny, Rule: "dns-exfiltration", Reason: audit.ReasonDNSExfilLabelLength},
		{Kind: audit.KindDNS, Workload: "w1", DNSName: "bbbb2.t.evil.co.uk", Decision: audit.DecisionDeny, Rule: "dns-exfiltration", Reason: audit.ReasonDNSExfilLabelLength},
		{Kind: audit.KindDNS, Workload: "w1", DNSName: "api.example", Decision: audit.DecisionAllow, Reason: audit.ReasonDNSAllowed},
		{Kind: audit.KindL4, Workload: "w1", IP: "192.0.2.1", DNSName: "api.example", Decision: audit.DecisionAllow},
	} {
		s.Add(e)
	}
	sum := s.Summary(10)
	if got := sum.DeniedNames.Rows; len(got) != 1 || got[0] != (Row{Workload: "w1", Host: "x.paste.example", Rule: "no-paste", Count: 2}) {
		t.Errorf("denied names %+v", got)
	}
	if got := sum.ExfilSuspects.Rows; len(got) != 1 || got[0] != (Row{Workload: "w1", Host: "evil.co.uk", Reason: audit.ReasonDNSExfilLabelLength, Count: 2}) {
		t.Errorf("exfil suspects %+v", got)
	}
	if HostOf(Entry{IP: "192.0.2.1", DNSName: "API.example"}) != "api.example" {
		t.Error("HostOf ignores dns_name")
	}
	var b strings.Builder
	if err := WriteText(&b, sum); err != nil || !strings.Contains(b.String(), "DNS EXFILTRATION SUSPECTS") || !strings.Contains(b.String(), "evil.co.uk") {
		t.Errorf("text %v:\n%s", err, b.String())
	}
}

// MCP tools: tools/call records by workload, host and tool, with
// denials, would-denials, errors and the tool's recorded changes.
func TestMCPTools(t *testing.T) {
	s := New()
	for _, e := range []Entry{
		{Kind: "http", Workload: "agent", Host: "mcp.test", Decision: "allow", MCPMethod: "tools/call", MCPTool: "echo"},
		{Kind: "http", Workload: "agent", Host: "mcp.test", Decision: "allow", MCPMethod: "tools/call", MCPTool: "echo", MCPErrorCode: -32602},
		{Kind: "http", Workload: "agent", Host: "mcp.test", Decision: "deny", MCPMethod: "tools/call", MCPTool: "rm", MCPErrorCode: -32030},
		{Kind: "http", Workload: "agent", Host: "mcp.test", Decision: "would_deny", MCPMethod: "tools/call", MCPTool: "rm"},
		{Kind: "http", Workload: "agent", Host: "mcp.test", Decision: "allow", MCPMethod: "tools/list"},
		{Kind: "mcp_tool_changed", Workload: "agent", Host: "mcp.test", MCPMethod: "tools/list", MCPTool: "echo"},
	} {
		s.Add(e)
	}
	got := s.Summary(10).MCPTools
	want := []MCPTool{
		{Workload: "agent", Host: "mcp.test", Tool: "echo", Calls: 2, Errors: 1, Changes: 1},
		{Workload: "agent", Host: "mcp.test", Tool: "rm", Calls: 2, Denied: 1, WouldDeny: 1, Errors: 1},
	}
	if got.Distinct != 2 || !reflect.DeepEqual(got.Rows, want) {
		t.Fatalf("mcp tools %+v\nwant %+v", got, want)
	}
	var b bytes.Buffer
	if err := WriteText(&b, s.Summary(10)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "MCP TOOLS (tools/call by workload and server): 2\n  WORKLOAD  HOST      TOOL  CALLS  DENIED  WOULD_DENY  ERRORS  CHANGES\n  agent     mcp.test  echo  2      0       0           1       1\n") {
		t.Errorf("text:\n%s", b.String())
	}
}

// Clients that rejected Sluice's certificate are listed by workload and
// host: the ones to give the CA to, or to pass through.
func TestUntrustedClients(t *testing.T) {
	s := New()
	for _, e := range []Entry{
		{Kind: "l4", Workload: "shop/web-0", Host: "pinned.example", Decision: "client_untrusted"},
		{Kind: "l4", Workload: "shop/web-0", Host: "pinned.example", Decision: "client_untrusted"},
		{Kind: "l4", Workload: "shop/web-0", Host: "pinned.example", Decision: "allow"},
	} {
		s.Add(e)
	}
	sum := s.Summary(10)
	if got := sum.UntrustedClients.Rows; len(got) != 1 || got[0] != (Row{Workload: "shop/web-0", Host: "pinned.example", Count: 2}) {
		t.Fatalf("untrusted clients %+v", sum.UntrustedClients)
	}
	var b bytes.Buffer
	if err := WriteText(&b, sum); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "CLIENTS THAT REJECTED SLUICE'S CERTIFICATE (client_untrusted): 2\n  WORKLOAD    HOST            COUNT\n  shop/web-0  pinned.example  2\n") {
		t.Errorf("text:\n%s", b.String())
	}
}
