package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/logsum"
	"github.com/sluicehq/sluice/workload"
)

var (
	wlA = workload.Identity{Namespace: "team", Pod: "agent-a", PID: 100, Comm: "python3"} // "team/agent-a"
	wlB = workload.Identity{Cgroup: "/sluice/b.scope", PID: 200, Comm: "node"}            // "/sluice/b.scope"
	wlC = workload.Identity{PID: 300, Comm: "curl"}                                       // "unknown" -> "comm:curl"
)

// writeAuditLog writes records with known counts through the real audit
// writer, then a line from another logger, a garbage line and a blank one.
func writeAuditLog(t *testing.T, path string) {
	t.Helper()
	var buf bytes.Buffer
	log := audit.NewJSONLog(&buf)
	t0 := time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)
	i := 0
	add := func(n int, r audit.Record) {
		for range n {
			rec := r
			rec.Time = t0.Add(time.Duration(i) * time.Second)
			if rec.Kind == "" {
				rec.Kind = audit.KindHTTP
			}
			if rec.Method == "" && rec.Kind == audit.KindHTTP {
				rec.Method, rec.Path = "POST", "/v1/x"
			}
			rec.Duration = 12 * time.Millisecond
			log.Record(&rec)
			i++
		}
	}
	ok := func(w workload.Identity, host string, status int, in, out int64) audit.Record {
		return audit.Record{Workload: w, Host: host, Status: status, Source: "upstream", Decision: audit.DecisionAllow, Rule: "default", Reason: "allowed by default", BytesIn: in, BytesOut: out}
	}
	deny := func(w workload.Identity, host string, status int, rule, reason string) audit.Record {
		return audit.Record{Workload: w, Host: host, Status: status, Source: "sluice", Decision: audit.DecisionDeny, Rule: rule, Reason: reason}
	}
	add(10, ok(wlA, "api.example.com", 200, 100, 1000))
	add(5, deny(wlA, "api.example.com", 429, "rl-api", "rate limit exceeded"))
	add(3, deny(wlB, "LLM.example.net", 429, "rl-api", "rate limit exceeded"))
	add(4, deny(wlB, "evil.example", 403, "block-evil", "denied by rule"))
	add(2, deny(wlC, "169.254.169.254", 403, "ssrf", "private address"))
	wd := ok(wlA, "files.example", 200, 10, 20)
	wd.Decision, wd.Rule, wd.Reason = audit.DecisionWouldDeny, "audit-files", "denied by rule"
	add(6, wd)
	add(2, ok(wlA, "api.example.com", 401, 0, 0))
	add(1, ok(wlB, "llm.example.net", 403, 0, 0))
	add(3, ok(wlC, "flaky.example", 500, 0, 0))
	add(1, ok(wlC, "flaky.example", 503, 0, 0))
	add(1, audit.Record{Kind: audit.KindL4, Workload: wlB, DstIP: netip.MustParseAddr("203.0.113.5"), Port: 443, TLS: audit.TLSPassthrough, Decision: audit.DecisionAllow, Rule: "pass", BytesIn: 500, BytesOut: 700})
	add(2, audit.Record{Kind: audit.KindConnect, Workload: wlA, DstIP: netip.MustParseAddr("192.0.2.1"), Port: 443, Decision: audit.DecisionAllow})
	buf.WriteString(`{"time":"2026-11-25T08:10:00Z","level":"INFO","msg":"proxy started","component":"mitm"}` + "\n")
	buf.WriteString("this is not json {\n\n")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func gzipCopy(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(b)
	zw.Close()
	// The name does not say gzip: detection is by magic bytes.
	if err := os.WriteFile(dst, z.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLogsSummarizeJSON(t *testing.T) {
	dir := t.TempDir()
	plain, zipped := filepath.Join(dir, "audit.log"), filepath.Join(dir, "audit.log.1")
	writeAuditLog(t, plain)
	gzipCopy(t, plain, zipped)

	for _, tc := range []struct {
		name  string
		files []string
		mult  int64
	}{
		{"plain", []string{plain}, 1},
		{"gzip", []string{zipped}, 1},
		{"both", []string{plain, zipped}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runCmd(t, append([]string{"logs", "summarize", "--json", "--top", "0"}, tc.files...)...)
			if code != 0 {
				t.Fatalf("exit %d, stderr %s", code, errs)
			}
			var s logsum.Summary
			if err := json.Unmarshal([]byte(out), &s); err != nil {
				t.Fatalf("--json output does not parse: %v\n%s", err, out)
			}
			m := tc.mult
			checks := []struct {
				what      string
				got, want any
			}{
				{"inputs", s.Inputs, tc.files},
				{"lines", s.Lines, 42 * m},
				{"records", s.Records, 40 * m},
				{"skipped", s.Skipped, 1 * m},
				{"unparseable", s.Unparseable, 1 * m},
				{"first", s.First, time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)},
				{"last", s.Last, time.Date(2026, 11, 25, 8, 0, 39, 0, time.UTC)},
				{"requests", s.Totals.Requests, 38 * m},
				{"bytes_in", s.Totals.BytesIn, 1560 * m},
				{"bytes_out", s.Totals.BytesOut, 10820 * m},
				{"kinds", s.Totals.Kinds, map[string]int64{"http": 37 * m, "l4": 1 * m, "connect": 2 * m}},
				{"decisions", s.Totals.Decisions, map[string]int64{"allow": 20 * m, "deny": 14 * m, "would_deny": 6 * m}},
				{"rate_limited", s.RateLimited, logsum.Section{Total: 8 * m, Distinct: 2, Rows: []logsum.Row{
					{Workload: "team/agent-a", Host: "api.example.com", Count: 5 * m},
					{Workload: "/sluice/b.scope", Host: "llm.example.net", Count: 3 * m},
				}}},
				{"denials", s.Denials, logsum.Section{Total: 14 * m, Distinct: 3, Rows: []logsum.Row{
					{Rule: "rl-api", Reason: "rate limit exceeded", Count: 8 * m},
					{Rule: "block-evil", Reason: "denied by rule", Count: 4 * m},
					{Rule: "ssrf", Reason: "private address", Count: 2 * m},
				}}},
				{"would_deny", s.WouldDeny, logsum.Section{Total: 6 * m, Distinct: 1, Rows: []logsum.Row{
					{Rule: "audit-files", Reason: "denied by rule", Count: 6 * m},
				}}},
				{"auth_failures", s.AuthFailures, logsum.Section{Total: 3 * m, Distinct: 2, Rows: []logsum.Row{
					{Workload: "team/agent-a", Host: "api.example.com", Status: 401, Count: 2 * m},
					{Workload: "/sluice/b.scope", Host: "llm.example.net", Status: 403, Count: 1 * m},
				}}},
				{"server_errors", s.ServerErrors, logsum.Section{Total: 4 * m, Distinct: 2, Rows: []logsum.Row{
					{Workload: "comm:curl", Host: "flaky.example", Status: 500, Count: 3 * m},
					{Workload: "comm:curl", Host: "flaky.example", Status: 503, Count: 1 * m},
				}}},
				{"top_workloads", s.TopWorkloads, logsum.Talkers{Distinct: 3, Rows: []logsum.Talker{
					{Name: "team/agent-a", Namespace: "team", Pod: "agent-a", Requests: 23 * m, BytesIn: 1060 * m, BytesOut: 10120 * m},
					{Name: "/sluice/b.scope", Requests: 9 * m, BytesIn: 500 * m, BytesOut: 700 * m},
					{Name: "comm:curl", Requests: 6 * m},
				}}},
				{"top_hosts", s.TopHosts, logsum.Talkers{Distinct: 7, Rows: []logsum.Talker{
					{Name: "api.example.com", Requests: 17 * m, BytesIn: 1000 * m, BytesOut: 10000 * m},
					{Name: "files.example", Requests: 6 * m, BytesIn: 60 * m, BytesOut: 120 * m},
					{Name: "evil.example", Requests: 4 * m},
					{Name: "flaky.example", Requests: 4 * m},
					{Name: "llm.example.net", Requests: 4 * m},
					{Name: "169.254.169.254", Requests: 2 * m},
					{Name: "203.0.113.5", Requests: 1 * m, BytesIn: 500 * m, BytesOut: 700 * m},
				}}},
			}
			for _, c := range checks {
				if !reflect.DeepEqual(c.got, c.want) {
					t.Errorf("%s = %+v, want %+v", c.what, c.got, c.want)
				}
			}
			if len(s.UnparseableSamples) == 0 || s.UnparseableSamples[0].File != tc.files[0] || s.UnparseableSamples[0].Line != 42 {
				t.Errorf("unparseable samples %+v, want %s line 42 first", s.UnparseableSamples, tc.files[0])
			}
		})
	}
}

func TestLogsSummarizeText(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "audit.log")
	writeAuditLog(t, plain)
	code, out, errs := runCmd(t, "logs", "summarize", "--top", "2", plain)
	if code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errs)
	}
	for _, want := range []string{
		"40 records from " + plain,
		"unparseable: 1",
		"unparseable " + plain + ":42: not a JSON object",
		"RATE-LIMIT VIOLATIONS (429 from sluice): 8",
		"team/agent-a     api.example.com  5",
		"DENIALS BY RULE: 14",
		"rl-api      rate limit exceeded  8",
		"WOULD-DENY BY RULE (audit mode): 6",
		"audit-files  denied by rule  6",
		"AUTH FAILURES (401/403 from upstream): 3",
		"team/agent-a     api.example.com  401     2",
		"SERVER ERRORS (5xx from upstream): 4",
		"comm:curl  flaky.example  500     3",
		"WORKLOAD         REQUESTS  BYTES IN  BYTES OUT",
		"team/agent-a     23        1060      10120",
		"… and 1 more", // top 2 of 3 workloads
		"… and 5 more", // top 2 of 7 hosts
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

func TestLogsSummarizeStdin(t *testing.T) {
	dir := t.TempDir()
	plain, zipped := filepath.Join(dir, "audit.log"), filepath.Join(dir, "audit.gz")
	writeAuditLog(t, plain)
	gzipCopy(t, plain, zipped)
	for _, args := range [][]string{{"--json"}, {"--json", "-"}} {
		f, err := os.Open(zipped)
		if err != nil {
			t.Fatal(err)
		}
		old := logsStdin
		logsStdin = f
		code, out, errs := runCmd(t, append([]string{"logs", "summarize"}, args...)...)
		logsStdin = old
		f.Close()
		if code != 0 {
			t.Fatalf("%v: exit %d, stderr %s", args, code, errs)
		}
		var s logsum.Summary
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatal(err)
		}
		if s.Records != 40 || s.Unparseable != 1 || len(s.Inputs) != 1 || s.Inputs[0] != "-" {
			t.Errorf("%v: records %d unparseable %d inputs %v", args, s.Records, s.Unparseable, s.Inputs)
		}
	}
}

func TestLogsSummarizeErrors(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "audit.log")
	writeAuditLog(t, plain)
	missing := filepath.Join(dir, "nope.log")
	// A missing file is reported and makes the exit code 1, but the other
	// files are still summarized.
	code, out, errs := runCmd(t, "logs", "summarize", "--json", missing, plain)
	if code != 1 || !strings.Contains(errs, missing) {
		t.Errorf("missing file: exit %d, stderr %q", code, errs)
	}
	var s logsum.Summary
	if err := json.Unmarshal([]byte(out), &s); err != nil || s.Records != 40 || len(s.ReadErrors) != 1 {
		t.Errorf("missing file: summary %+v, err %v", s, err)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"logs"}, 2, "usage: sluice logs summarize"},
		{[]string{"logs", "tail"}, 2, `unknown subcommand "tail"`},
		{[]string{"logs", "summarize", "--top", "-1"}, 2, "--top -1"},
		{[]string{"logs", "summarize", "--bogus"}, 2, "flag provided but not defined"},
	} {
		code, _, errs := runCmd(t, c.args...)
		if code != c.code || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, errs, c.code, c.want)
		}
	}
}
