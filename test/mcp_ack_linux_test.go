package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// mcpAckPolicy denies calls of changed tools until acknowledged and
// bearer JWTs issued for another audience.
const mcpAckPolicy = `version: 1
mode: enforce
mcp:
  onToolChange: enforce
  tokenAudience: enforce
ssrf:
  allowCIDRs: ["198.18.0.0/15", "2001:2::/48"]
defaults:
  action: allow
rules:
  - name: no-delete
    mcp: {tools: ["delete_*"]}
    action: deny
`

// ackStep is one line test/mcpjs/client_ack.mjs prints.
type ackStep struct {
	Step       string
	Tools      map[string]string
	ToolsAfter map[string]string
	Echo       mcpCallResult
	Denied     mcpCallResult
	Weather    mcpCallResult
	Flip       mcpCallResult
	Attempts   int
	Slow       mcpCallResult
	SlowMs     float64
	Progress   []struct{ Progress, Ms float64 }
	Error      *struct {
		Code    int
		Message string
	}
}

// The real MCP TypeScript SDK, client and server, over both transports
// (Streamable HTTP, stateless and with a session whose GET stream carries
// the server's notifications, and the older HTTP+SSE whose responses
// come on the GET stream), under `sluice run` with mcp.onToolChange:
// enforce: a
// tool whose description changes between two tools/list answers is
// refused with the JSON-RPC error -32031 until `sluice mcp ack`, run
// against the run's admin listener, acknowledges it; then it answers.
// `sluice mcp changes` shows the change before and none after; `sluice
// flows` shows the tools called. Over Streamable HTTP a client sending a
// bearer JWT issued for another audience is refused (tokenAudience:
// enforce), its audience recorded, the token nowhere in the log.
func TestMCPToolChangeAck(t *testing.T) {
	RequireE2E(t)
	node, dir := requireMCPJS(t)
	unshare := RequireTool(t, "unshare")
	tp := NewTopology(t, 1)
	api := tp.Hosts[0]
	upCA := startMCPServer(t, node, dir, api, "mcp.test")
	for _, tc := range []struct{ name, transport, url string }{
		{"http", "http", "https://mcp.test/mcp"},
		{"session", "http", "https://mcp.test/mcp-session"}, // Streamable HTTP with a session and its GET stream
		{"sse", "sse", "https://mcp.test/sse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testMCPToolChangeAck(t, node, dir, unshare, api, upCA, tc.name, tc.transport, tc.url)
		})
	}
}

func testMCPToolChangeAck(t *testing.T, node, dir, unshare string, api *Host, upCA, name, transport, url string) {
	server := url
	tmp := t.TempDir()
	hosts, cfg, pol, auditLog := filepath.Join(tmp, "hosts"), filepath.Join(tmp, "config.yaml"), filepath.Join(tmp, "policy.yaml"), filepath.Join(tmp, "audit.jsonl")
	state := filepath.Join(tmp, "state", "mcp.json")
	for name, body := range map[string]string{
		hosts: fmt.Sprintf("127.0.0.1 localhost\n%s mcp.test\n", api.IP4),
		cfg:   fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\n  mcpStateFile: %s\n", filepath.Join(tmp, "ca"), upCA, state),
		pol:   mcpAckPolicy,
	} {
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminAddr := ln.Addr().String()
	ln.Close()
	b64 := base64.RawURLEncoding.EncodeToString
	jwt := b64([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + b64([]byte(`{"aud":"https://mcp.other.example","sub":"user-7"}`)) + ".c2lnbmF0dXJl"
	args := []string{node, filepath.Join(dir, "client_ack.mjs"), url, transport}
	if name == "http" {
		args = append(args, jwt)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	script := `mount --bind "$0" /etc/hosts && exec "$@"`
	cmd := exec.CommandContext(ctx, unshare, append([]string{"--mount", "--propagation", "private", "sh", "-c", script, hosts,
		sluiceBin, "run", "--config", cfg, "--policy", pol, "--audit-log", auditLog, "--metrics", adminAddr, "--no-summary", "--"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sluice := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, sluiceBin, append([]string{"mcp", "--agent", adminAddr}, args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("sluice mcp %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	steps := map[string]ackStep{}
	var changesBefore, flowsOut string
	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var s ackStep
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			t.Errorf("client line is not JSON: %v: %s", err, sc.Text())
			continue
		}
		t.Logf("client: %s", sc.Text())
		steps[s.Step] = s
		if s.Step == "denied" {
			// The client retries weather until it answers: acknowledge.
			changesBefore = sluice("changes")
			sluice("ack", server, "weather")
			out, err := exec.CommandContext(ctx, sluiceBin, "flows", "--agent", adminAddr).CombinedOutput()
			if err != nil {
				t.Errorf("sluice flows: %v\n%s", err, out)
			}
			flowsOut = string(out)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sluice run node client_ack.mjs: %v\nstderr:\n%s", err, stderr.String())
	}

	listed, denied, done := steps["listed"], steps["denied"], steps["done"]
	if _, ok := listed.Tools["delete_repo"]; ok || listed.Tools["weather"] == "" {
		t.Errorf("tools/list = %v, want weather and no delete_repo (hidden)", listed.Tools)
	}
	if listed.Echo.Text != "echo: hi" || listed.Weather.Text != "sunny" {
		t.Errorf("echo %+v weather %+v before the change, want their answers", listed.Echo, listed.Weather)
	}
	// The SDK surfaces a denial as the JSON-RPC error (Streamable HTTP),
	// or as the failed POST carrying it (HTTP+SSE: the POST is 403).
	deniedWith := func(r mcpCallResult, code int, text string) bool {
		if r.Error == nil {
			return false
		}
		if transport == "http" {
			return r.Error.Code == code && strings.Contains(r.Error.Message, text)
		}
		return strings.Contains(r.Error.Message, "HTTP 403") && strings.Contains(r.Error.Message, fmt.Sprint(code)) && strings.Contains(r.Error.Message, text)
	}
	if !deniedWith(listed.Denied, -32030, "rule no-delete") {
		t.Errorf("delete_repo = %+v, want the JSON-RPC error -32030 of rule no-delete", listed.Denied)
	}
	// The changed tool is left out of the list (hideDenied under
	// onToolChange: enforce): its new description never reaches the agent.
	if _, ok := denied.ToolsAfter["weather"]; ok || denied.ToolsAfter["echo"] == "" {
		t.Errorf("tools/list after flip = %v, want weather hidden and echo listed", denied.ToolsAfter)
	}
	if !deniedWith(denied.Weather, -32031, `tool \"weather\" changed (description)`) && !deniedWith(denied.Weather, -32031, `tool "weather" changed (description)`) {
		t.Errorf("weather after its change = %+v, want the JSON-RPC error -32031", denied.Weather)
	}
	if done.Weather.Text != "sunny" {
		t.Errorf("weather after sluice mcp ack = %+v after %d attempts, want its answer", done.Weather, done.Attempts)
	}
	if !strings.Contains(changesBefore, server) || !strings.Contains(changesBefore, "weather") || !strings.Contains(changesBefore, "description") {
		t.Errorf("sluice mcp changes before the ack:\n%s", changesBefore)
	}
	if !strings.Contains(flowsOut, "MCP TOOLS") || !strings.Contains(flowsOut, "weather") {
		t.Errorf("sluice flows lacks the MCP tools:\n%s", flowsOut)
	}

	// sluice logs summarize shows the tools per workload: weather's calls,
	// its denials and its change.
	sum, err := exec.CommandContext(ctx, sluiceBin, "logs", "summarize", "--json", auditLog).Output()
	if err != nil {
		t.Fatalf("sluice logs summarize: %v", err)
	}
	var summary struct {
		MCPTools struct {
			Rows []struct {
				Tool                           string
				Calls, Denied, Errors, Changes int
			}
		} `json:"mcp_tools"`
	}
	if err := json.Unmarshal(sum, &summary); err != nil {
		t.Fatalf("summary: %v\n%s", err, sum)
	}
	var sawWeather bool
	for _, r := range summary.MCPTools.Rows {
		if r.Tool == "weather" {
			sawWeather = true
			// Before the change, after it, then polled until acknowledged:
			// every poll but the last was denied.
			if r.Calls != 2+done.Attempts || r.Denied != done.Attempts || r.Changes != 1 {
				t.Errorf("summary of weather: %+v, want %d calls, %d denied, 1 change", r, 2+done.Attempts, done.Attempts)
			}
		}
	}
	if !sawWeather {
		t.Errorf("sluice logs summarize lacks weather: %s", sum)
	}

	recs := readRecords(t, auditLog)
	var weather []map[string]any
	var changed int
	for _, r := range recs {
		switch {
		case r["kind"] == "http" && r["mcp_method"] == "tools/call" && r["mcp_tool"] == "weather":
			weather = append(weather, r)
		case r["kind"] == "mcp_tool_changed" && r["mcp_tool"] == "weather":
			changed++
			if r["mcp_tool_prev_hash"] == nil || r["mcp_tool_hash"] == nil || fmt.Sprint(r["mcp_tool_fields"]) != "[description]" {
				t.Errorf("mcp_tool_changed record lacks hashes or fields: %v", r)
			}
		}
	}
	if changed != 1 {
		t.Errorf("%d mcp_tool_changed records for weather, want 1", changed)
	}
	if len(weather) < 3 {
		t.Fatalf("%d records of tools/call weather, want the allowed, the denied and the allowed after ack", len(weather))
	}
	first, deniedRec, last := weather[0], weather[1], weather[len(weather)-1]
	if first["decision"] != "allow" || last["decision"] != "allow" {
		t.Errorf("weather records: first %v, last %v, want allowed", first, last)
	}
	if deniedRec["decision"] != "deny" || deniedRec["rule"] != "tool-change" || deniedRec["reason"] != "mcp tool changed and not acknowledged" ||
		deniedRec["mcp_error_code"] != float64(-32031) || deniedRec["mcp_tool_prev_hash"] == nil {
		t.Errorf("the denied weather record: %v", deniedRec)
	}
	// Progress notifications of the slow tool arrive as the server sends
	// them, 200 ms apart, on either transport (on the GET stream for
	// HTTP+SSE): parsing the stream delays no event.
	// (The SDK's HTTP+SSE client surfaces only the first four: the fifth
	// comes right before the answer and loses the race, without Sluice
	// in between too.)
	wantProgress := 5
	if transport == "sse" {
		wantProgress = 4
	}
	if listed.Slow.Text != "slow done" || len(listed.Progress) < wantProgress {
		t.Errorf("slow = %+v with progress %+v, want the answer after 5 notifications", listed.Slow, listed.Progress)
	} else {
		for i := 1; i < len(listed.Progress); i++ {
			if gap := listed.Progress[i].Ms - listed.Progress[i-1].Ms; gap < 100 {
				t.Errorf("progress %d arrived %.0f ms after the one before, want about 200: %+v", i+1, gap, listed.Progress)
			}
		}
	}
	if transport == "sse" {
		// The POSTs of the HTTP+SSE session carry its id, and a call's
		// record was held until its response on the stream: the slow
		// call's lasts its second, not the POST's moment.
		if first["mcp_session"] == nil || first["mcp_session"] == "" || first["status"] != float64(202) {
			t.Errorf("an HTTP+SSE POST's record: %v, want the session and status 202", first)
		}
		var slow, stream map[string]any
		for _, r := range recs {
			if r["mcp_tool"] == "slow" {
				slow = r
			}
			if r["method"] == "GET" && r["path"] == "/sse" {
				stream = r
			}
		}
		if d, _ := slow["duration_ms"].(float64); d < 900 {
			t.Errorf("the slow call's record lasts %v ms, want the time to its response on the stream (about 1000): %v", slow["duration_ms"], slow)
		}
		if stream == nil || !strings.Contains(fmt.Sprint(stream["mcp_server_methods"]), "notifications/tools/list_changed") ||
			!strings.Contains(fmt.Sprint(stream["mcp_hidden"]), "delete_repo") {
			t.Errorf("the GET /sse record: %v, want the server's list_changed noted and delete_repo hidden", stream)
		}
	}
	if name == "session" {
		// The session's GET stream carried the server's list_changed,
		// read as it passed.
		var stream map[string]any
		for _, r := range recs {
			if r["method"] == "GET" && r["path"] == "/mcp-session" {
				stream = r
			}
		}
		t.Logf("GET stream record: %v", stream)
		if stream == nil || !strings.Contains(fmt.Sprint(stream["mcp_server_methods"]), "notifications/tools/list_changed") || stream["mcp_session"] == nil {
			t.Errorf("the session's GET stream record: %v, want its session and the server's list_changed noted", stream)
		}
	}
	if name == "http" {
		tok := steps["token"]
		if tok.Error == nil || tok.Error.Code != -32030 || !strings.Contains(tok.Error.Message, "bearer token issued for another audience") {
			t.Errorf("the client with a foreign bearer JWT got %+v, want the JSON-RPC error naming the audience check", tok)
		}
		var tokRecs int
		for _, r := range recs {
			if r["rule"] == "token-audience" {
				tokRecs++
				if r["decision"] != "deny" || fmt.Sprint(r["token_audience"]) != "[https://mcp.other.example]" {
					t.Errorf("token-audience record: %v", r)
				}
			}
		}
		if tokRecs == 0 {
			t.Errorf("no token-audience record")
		}
		raw, _ := os.ReadFile(auditLog)
		sig := strings.Split(jwt, ".")[1]
		if bytes.Contains(raw, []byte(sig)) || strings.Contains(stderr.String(), sig) {
			t.Errorf("the bearer token's payload appears in the audit log or the run's log")
		}
	}
	// The state file persists the acknowledged tool.
	if b, err := os.ReadFile(state); err != nil || !bytes.Contains(b, []byte(`"weather"`)) {
		t.Errorf("state file %s: %v\n%s", state, err, b)
	}
}
