package test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
)

// mcpGoResult is what test/mcpgo's client prints.
type mcpGoResult struct {
	Protocol          string
	Tools, ToolsAfter map[string]string
	Echo, Denied      mcpCallResult
	Search            []mcpCallResult
	Slow              mcpCallResult
	SlowGotMs         int64
	Progress          []struct {
		Progress      float64
		SentMs, GotMs int64
	}
	Flip           mcpCallResult
	FlipGotMs      int64
	ListChangedMs  int64
	Mismatch       mcpCallResult
	MismatchStatus int
	MismatchBody   string
	Posts          []struct {
		Method, Name string
		Status       int
	}
}

// The official MCP Go SDK (github.com/modelcontextprotocol/go-sdk, pinned
// in go.mod) on both ends: test/mcpgo's client over
// StreamableClientTransport, under `sluice run`, talks to its server
// (StreamableHTTPHandler, stateless) behind TLS in another namespace, as
// TestMCPSDKThroughSluice does with the TypeScript SDK. Through Sluice,
// tools/list leaves out the denied tools, an allowed call answers, a
// denied call is the JSON-RPC error the SDK returns (-32030), the third
// search in a minute is rate limited per tool (-32029), progress
// notifications of a long call arrive when the server sends them (each
// carries its send time), and a tool whose description changed between
// two tools/list answers is recorded (mcp_tool_changed).
//
// The Go SDK speaks revision 2026-07-28: server/discover instead of
// initialize, and the server's notifications on a subscriptions/listen
// POST whose event stream lasts the session (its list_changed arrives
// at once through Sluice). It mirrors the method and the tool name into
// the Mcp-Method and Mcp-Name headers of every request (SEP-2243), so the
// header-mirroring revision is shown with the SDK itself, no hand-written
// client: its POSTs carry the headers and pass; one whose Mcp-Name is
// rewritten on its way out to name another tool than its body is refused
// by Sluice with 400 and the JSON-RPC error -32020 (the spec's
// HeaderMismatch, which the SDK surfaces), recorded under the body's
// tool, and never reaches the server.
func TestMCPGoSDKThroughSluice(t *testing.T) {
	RequireE2E(t)
	goBin := RequireTool(t, "go")
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "mcpgo")
	if out, err := exec.Command(goBin, "build", "-o", bin, "./mcpgo").CombinedOutput(); err != nil {
		t.Fatalf("build test/mcpgo: %v\n%s", err, out)
	}
	tp := NewTopology(t, 1)
	api := tp.Hosts[0]
	upCA := startTLSServer(t, api, []string{"mcp.test"}, func(certFile, keyFile string) []string {
		return []string{bin, "server", certFile, keyFile, api.IP4.String(), "443"}
	})

	var got mcpGoResult
	auditLog := runMCPClient(t, api, upCA, 60*time.Second, &got, bin, "client", "https://mcp.test/mcp")

	if got.Protocol != "2026-07-28" {
		t.Errorf("negotiated protocol %q, want 2026-07-28 (the header-mirroring revision)", got.Protocol)
	}
	checkSDKAnswers(t, "*jsonrpc.Error", got.Tools, got.Echo, got.Denied, got.Search)

	// Progress: five notifications the server sends 200 ms apart each
	// arrive right after their send time (same clock: the namespaces
	// share the host's), not held until the answer.
	if got.Slow.Text != "slow done" || len(got.Progress) != 5 {
		t.Errorf("slow = %+v with progress %+v, want the answer after 5 notifications", got.Slow, got.Progress)
	} else {
		for i, p := range got.Progress {
			if late := p.GotMs - p.SentMs; p.SentMs == 0 || late > 100 {
				t.Errorf("progress %d arrived %d ms after the server sent it, want at once (held by the proxy?): %+v", i+1, late, got.Progress)
			}
			if i > 0 {
				if gap := p.GotMs - got.Progress[i-1].GotMs; gap < 100 {
					t.Errorf("progress %d arrived %d ms after the one before, want about 200 (bunched by the proxy?): %+v", i+1, gap, got.Progress)
				}
			}
		}
		if early := got.SlowGotMs - got.Progress[0].GotMs; early < 500 {
			t.Errorf("the first progress arrived %d ms before the answer, want about 800", early)
		}
	}
	if got.Flip.Text != "generation 2" || got.ToolsAfter["weather"] != "Weather forecast, generation 2" {
		t.Errorf("flip = %+v, weather after = %q", got.Flip, got.ToolsAfter["weather"])
	}
	// The server's list_changed, sent as flip runs, came on the
	// subscriptions/listen stream at once, not when the stream ended.
	if got.ListChangedMs == 0 || got.ListChangedMs-got.FlipGotMs > 500 {
		t.Errorf("notifications/tools/list_changed arrived at %d, flip answered at %d: want it within 500 ms", got.ListChangedMs, got.FlipGotMs)
	}

	// The SDK mirrors the method and the tool into headers, and Sluice
	// lets the agreeing ones through.
	wantPosts := []string{"server/discover ", "subscriptions/listen ", "tools/list ", "tools/call echo", "tools/call delete_repo",
		"tools/call search", "tools/call search", "tools/call search", "tools/call slow", "tools/call flip", "tools/list ", "tools/call search"}
	var posts []string
	for _, p := range got.Posts {
		posts = append(posts, p.Method+" "+p.Name)
	}
	if strings.Join(posts, ",") != strings.Join(wantPosts, ",") {
		t.Errorf("the SDK's POSTs carried Mcp-Method and Mcp-Name\n%q\nwant\n%q", posts, wantPosts)
	}
	// The last: Mcp-Name says search, the body calls echo.
	if got.MismatchStatus != 400 || !strings.Contains(got.MismatchBody, `"code":-32020`) {
		t.Errorf("the call with a disagreeing Mcp-Name got HTTP %d %s, want 400 with a JSON-RPC error", got.MismatchStatus, got.MismatchBody)
	}
	if e := got.Mismatch.Error; e == nil || e.Code != -32020 || e.Message != `Mcp-Name header "search" differs from the body's "echo"` {
		t.Errorf("the call with a disagreeing Mcp-Name = %+v, want Sluice's -32020 (not the server's own check)", got.Mismatch)
	}

	recs := readRecords(t, auditLog)
	calls := func(tool string) []map[string]any { return mcpCallRecords(t, recs, tool) }
	want := func(what string, r map[string]any, kv ...any) {
		t.Helper()
		for i := 0; i < len(kv); i += 2 {
			if r[kv[i].(string)] != kv[i+1] {
				t.Errorf("%s record: %s = %v, want %v\n%v", what, kv[i], r[kv[i].(string)], kv[i+1], r)
			}
		}
	}
	if rs := calls("echo"); len(rs) != 2 {
		t.Errorf("%d records of tools/call echo, want 2 (the call, the one with a disagreeing header)", len(rs))
	} else {
		want("echo", rs[0], "decision", "allow", "status", float64(200), "host", "mcp.test", "mcp_protocol", "2026-07-28")
		want("header mismatch", rs[1], "decision", "deny", "status", float64(400), "reason", audit.ReasonMCPHeaderMismatch, "mcp_error_code", float64(-32020))
	}
	if rs := calls("delete_repo"); len(rs) != 1 {
		t.Errorf("%d records of tools/call delete_repo, want 1", len(rs))
	} else {
		want("delete_repo", rs[0], "decision", "deny", "rule", "no-delete", "mcp_error_code", float64(-32030))
	}
	if rs := calls("search"); len(rs) != 3 {
		t.Errorf("%d records of tools/call search, want 3 (the disagreeing header is recorded under the body's tool)", len(rs))
	} else {
		want("first search", rs[0], "decision", "allow", "rule", "slow-search")
		want("third search", rs[2], "decision", "deny", "rule", "slow-search", "reason", "rate limit exceeded", "mcp_error_code", float64(-32029))
	}
	if rs := calls("admin_shell"); len(rs) != 0 {
		t.Errorf("records of a call of admin_shell, which the client never made: %v", rs)
	}
	var lists, changed, discover int
	for _, r := range recs {
		switch {
		case r["kind"] == "http" && r["mcp_method"] == "server/discover":
			discover++
		case r["kind"] == "http" && r["mcp_method"] == "subscriptions/listen":
			if !strings.Contains(fmt.Sprint(r["mcp_server_methods"]), "notifications/tools/list_changed") {
				t.Errorf("the subscriptions/listen record: %v, want the server's list_changed noted", r)
			}
		case r["kind"] == "http" && r["mcp_method"] == "tools/list":
			lists++
		case r["kind"] == "mcp_tool_changed":
			changed++
			want("mcp_tool_changed", r, "mcp_tool", "weather", "mcp_method", "tools/list", "host", "mcp.test", "reason", "mcp tool changed after first sight")
		}
	}
	if discover != 1 || lists != 2 || changed != 1 {
		t.Errorf("%d server/discover, %d tools/list and %d mcp_tool_changed records, want 1, 2 and 1 (weather)", discover, lists, changed)
	}
}
