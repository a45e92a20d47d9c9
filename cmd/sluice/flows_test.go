package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/flows"
	"github.com/sluicehq/sluice/workload"
)

func flowsAgent(t *testing.T) (*httptest.Server, *flows.Table) {
	t.Helper()
	tb := flows.New(flows.Options{})
	id := workload.Identity{PID: 4321, Comm: "python3", Cgroup: "/system.slice/mcp-github.scope"}
	tb.Connect(4321, "python3", "/system.slice/mcp-github.scope", netip.MustParseAddrPort("192.0.2.7:443"), "redirected")
	for range 3 {
		tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: "api.github.com", DstIP: netip.MustParseAddr("192.0.2.7"), Port: 443,
			Decision: audit.DecisionAllow, BytesIn: 512, BytesOut: 4096})
	}
	tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: "evil.example", Decision: audit.DecisionDeny})
	tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: "maybe.example", Decision: audit.DecisionWouldDeny, BytesOut: 10})
	srv := httptest.NewServer(admin.New(admin.Options{Flows: tb}).Handler())
	t.Cleanup(srv.Close)
	return srv, tb
}

func TestFlowsJSON(t *testing.T) {
	srv, _ := flowsAgent(t)
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), []string{"flows", "--agent", srv.Listener.Addr().String(), "--json"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errb.String())
	}
	var snap flows.Snapshot
	if err := json.Unmarshal(out.Bytes(), &snap); err != nil {
		t.Fatalf("--json output is not a snapshot: %v\n%s", err, out.String())
	}
	if len(snap.Rows) != 1 {
		t.Fatalf("rows %+v", snap.Rows)
	}
	r := snap.Rows[0]
	if r.PID != 4321 || r.Comm != "python3" || r.Requests != 5 || r.Connects != 1 || r.BytesIn != 1536 || r.BytesOut != 12298 {
		t.Errorf("row %+v", r)
	}
	if r.Decisions["allow"] != 3 || r.Decisions["deny"] != 1 || r.Decisions["would_deny"] != 1 || r.Decisions["redirected"] != 1 {
		t.Errorf("decisions %v", r.Decisions)
	}
}

func TestFlowsTable(t *testing.T) {
	srv, _ := flowsAgent(t)
	var out, errb bytes.Buffer
	// An http:// URL is accepted as well as host:port.
	if code := dispatch(context.Background(), []string{"flows", "--agent", srv.URL}, &out, &errb); code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errb.String())
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("want a header and 3 destination lines, got:\n%s", out.String())
	}
	header := strings.Fields(lines[0])
	if strings.Join(header, " ") != "PROCESS PID WORKLOAD DESTINATION REQS CONNS IN OUT ALLOW DENY WOULD_DENY LAST SEEN" {
		t.Errorf("header %q", lines[0])
	}
	rows := map[string][]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		rows[f[3]] = f
	}
	// PROCESS PID WORKLOAD DESTINATION REQS CONNS IN OUT ALLOW DENY WOULD_DENY LAST SEEN
	want := map[string]string{
		"api.github.com": "python3 4321 /system.slice/mcp-github.scope api.github.com 3 1 1.5KiB 12.0KiB 3 0 0 now",
		"evil.example":   "python3 4321 /system.slice/mcp-github.scope evil.example 1 0 0B 0B 0 1 0 now",
		"maybe.example":  "python3 4321 /system.slice/mcp-github.scope maybe.example 1 0 0B 10B 0 0 1 now",
	}
	for dest, w := range want {
		if got := strings.Join(rows[dest], " "); got != w {
			t.Errorf("line for %s:\n got %s\nwant %s", dest, got, w)
		}
	}
}

func TestFlowsFollow(t *testing.T) {
	srv, _ := flowsAgent(t)
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := dispatch(ctx, []string{"flows", "--agent", srv.Listener.Addr().String(), "--follow", "--interval", "100ms", "--count", "3"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errb.String())
	}
	if n := strings.Count(out.String(), "\x1b[H\x1b[2J"); n != 3 {
		t.Errorf("redraws = %d, want 3", n)
	}

	// Without --count, --follow ends when the context does.
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if code := dispatch(ctx2, []string{"flows", "--agent", srv.Listener.Addr().String(), "--follow"}, &out, &errb); code != 0 {
		t.Errorf("--follow with a done context: exit %d", code)
	}
}

func TestFlowsErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--agent", dead}, 1, "is the agent running"},
		{[]string{"--interval", "1ms", "--follow"}, 2, "--interval 1ms"},
		{[]string{"extra"}, 2, `unexpected argument "extra"`},
		{[]string{"--bogus"}, 2, "flag provided but not defined"},
	} {
		var out, errb bytes.Buffer
		code := dispatch(context.Background(), append([]string{"flows"}, tc.args...), &out, &errb)
		if code != tc.code || !strings.Contains(errb.String(), tc.msg) {
			t.Errorf("flows %v: exit %d stderr %q, want %d containing %q", tc.args, code, errb.String(), tc.code, tc.msg)
		}
	}
}

func TestFlowsEmpty(t *testing.T) {
	srv := httptest.NewServer(admin.New(admin.Options{}).Handler())
	defer srv.Close()
	var out, errb bytes.Buffer
	if code := dispatch(context.Background(), []string{"flows", "--agent", srv.URL}, &out, &errb); code != 0 {
		t.Fatalf("exit %d %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "(no egress seen yet)") {
		t.Errorf("empty table output %q", out.String())
	}
}

// The summary flags every connection that went direct, past the proxy.
func TestFlowsTableFlagsDirect(t *testing.T) {
	tb := flows.New(flows.Options{})
	tb.Connect(77, "ssh", "/sluice-run-1", netip.MustParseAddrPort("198.18.0.5:22"), "direct")
	tb.Connect(77, "ssh", "/sluice-run-1", netip.MustParseAddrPort("198.18.0.5:443"), "redirected")
	var out bytes.Buffer
	writeFlowsTable(&out, tb.Snapshot())
	if got := strings.Count(out.String(), "NOT INTERCEPTED"); got != 1 ||
		!strings.Contains(out.String(), "NOT INTERCEPTED: ssh (pid 77) made 1 connection(s) to 198.18.0.5:22 directly") {
		t.Errorf("summary:\n%s\nwant one NOT INTERCEPTED line for port 22", out.String())
	}
}

// A client that rejected Sluice's certificate is flagged under the table,
// with the way out.
func TestFlowsTableUntrusted(t *testing.T) {
	srv, tb := flowsAgent(t)
	id := workload.Identity{PID: 99, Comm: "java", Cgroup: "/system.slice/app.scope"}
	tb.Record(&audit.Record{Kind: audit.KindL4, Workload: id, Host: "pinned.example", Decision: audit.DecisionClientUntrusted, Reason: audit.ReasonClientUntrusted})
	var out, errb bytes.Buffer
	if code := dispatch(context.Background(), []string{"flows", "--agent", srv.URL}, &out, &errb); code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errb.String())
	}
	want := "CLIENT UNTRUSTED: java (pid 99, /system.slice/app.scope) rejected Sluice's certificate for pinned.example 1 time(s)"
	if !strings.Contains(out.String(), want) {
		t.Errorf("table lacks %q:\n%s", want, out.String())
	}
}

// The MCP tools a process called show under the table, per server.
func TestFlowsMCPTools(t *testing.T) {
	tb := flows.New(flows.Options{})
	id := workload.Identity{PID: 77, Comm: "node", Cgroup: "/agent.scope"}
	for _, r := range []struct {
		tool, decision string
		code           int
	}{{"echo", "allow", 0}, {"echo", "allow", -32602}, {"rm", "deny", -32030}, {"rm", "would_deny", 0}} {
		tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: "mcp.test", Decision: r.decision, MCPMethod: "tools/call", MCPTool: r.tool, MCPErrorCode: r.code})
	}
	tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: "mcp.test", Decision: "allow", MCPMethod: "tools/list"})
	srv := httptest.NewServer(admin.New(admin.Options{Flows: tb}).Handler())
	defer srv.Close()
	var out, errb bytes.Buffer
	if code := dispatch(context.Background(), []string{"flows", "--agent", srv.URL}, &out, &errb); code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errb.String())
	}
	got := out.String()
	_, section, ok := strings.Cut(got, "\nMCP TOOLS\n")
	if !ok {
		t.Fatalf("no MCP TOOLS section:\n%s", got)
	}
	lines := strings.Split(strings.TrimRight(section, "\n"), "\n")
	want := []string{
		"PROCESS WORKLOAD SERVER TOOL CALLS DENIED WOULD_DENY ERRORS",
		"node /agent.scope mcp.test echo 2 0 0 1",
		"node /agent.scope mcp.test rm 2 1 1 1",
	}
	if len(lines) != len(want) {
		t.Fatalf("MCP TOOLS section:\n%s", section)
	}
	for i, l := range lines {
		if f := strings.Join(strings.Fields(l), " "); f != want[i] {
			t.Errorf("line %d: %q, want %q", i, f, want[i])
		}
	}
}
