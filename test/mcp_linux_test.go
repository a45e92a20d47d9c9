package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// mcpJS is the directory of the pinned MCP TypeScript SDK and the test's
// server and client scripts (.ci/run: npm ci --prefix test/mcpjs).
const mcpJS = "mcpjs"

// requireMCPJS fails t unless node and the pinned SDK are installed, and
// returns node's path and the absolute script directory.
func requireMCPJS(t *testing.T) (node, dir string) {
	t.Helper()
	node = RequireTool(t, "node")
	dir, err := filepath.Abs(mcpJS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@modelcontextprotocol", "sdk", "package.json")); err != nil {
		t.Fatalf("the MCP SDK is not installed (run npm ci --prefix test/mcpjs, as .ci/run does): %v", err)
	}
	return node, dir
}

// startMCPServer runs test/mcpjs/server.mjs (the SDK's McpServer over
// Streamable HTTP, TLS with a certificate for names from a fresh test CA)
// in h's namespace on port 443, and returns the CA's PEM file.
func startMCPServer(t *testing.T, node, dir string, h *Host, names ...string) (caFile string) {
	t.Helper()
	return startTLSServer(t, h, names, func(certFile, keyFile string) []string {
		return []string{node, filepath.Join(dir, "server.mjs"), certFile, keyFile, h.IP4.String(), "443"}
	})
}

// startTLSServer runs the command argv returns, given a certificate for
// names (and h's address) from a fresh test CA and its key, in h's
// namespace, waits for it to print "ready" on stdout, and returns the
// CA's PEM file. The command is ended when t ends.
func startTLSServer(t *testing.T, h *Host, names []string, argv func(certFile, keyFile string) []string) (caFile string) {
	t.Helper()
	caPEM, leaf := testPKI(t, names, []netip.Addr{h.IP4})
	keyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	caFile, certFile, keyFile := filepath.Join(tmp, "ca.pem"), filepath.Join(tmp, "cert.pem"), filepath.Join(tmp, "key.pem")
	for name, b := range map[string][]byte{
		caFile:   caPEM,
		certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}),
		keyFile:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(name, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := h.Exec(ctx, argv(certFile, keyFile)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the server: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("server stderr:\n%s", stderr.String())
		}
	})
	ready := make(chan bool, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		ok := s.Scan() && s.Text() == "ready"
		ready <- ok
		for s.Scan() {
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("the server did not start:\n%s", stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the server is not ready after 20s:\n%s", stderr.String())
	}
	return caFile
}

const mcpPolicy = `version: 1
mode: enforce
ssrf:
  allowCIDRs: ["198.18.0.0/15", "2001:2::/48"]
defaults:
  action: allow
rules:
  - name: no-delete
    mcp: {tools: ["delete_*"]}
    action: deny
  - name: no-admin-tools
    mcp: {tools: ["admin_*"]}
    action: deny
  - name: slow-search
    mcp: {methods: [tools/call], tools: [search]}
    action: allow
    rateLimit: {minute: 2}
`

// mcpClientResult is what test/mcpjs/client.mjs prints.
type mcpClientResult struct {
	Tools, ToolsAfter map[string]string
	Echo, Denied      mcpCallResult
	Search            []mcpCallResult
	Progress          []struct{ Progress, Total, Ms float64 }
	Slow              mcpCallResult
	SlowMs            float64
	Flip              mcpCallResult
}

// mcpCallResult is one tool call as an SDK client saw it: the answer's
// text, or the JSON-RPC error the SDK surfaced (Err: the Go SDK's own
// rendering of it).
type mcpCallResult struct {
	Text  string
	Error *struct {
		Code         int
		Message, Err string
	}
}

// checkSDKAnswers asserts what both SDK tests' clients must have seen of
// mcpPolicy: the denied tools left out of tools/list, the allowed echo
// answered, delete_repo refused (-32030 naming its rule), the third search
// rate limited (-32029). sdkErr names the SDK's error type in messages.
func checkSDKAnswers(t *testing.T, sdkErr string, tools map[string]string, echo, denied mcpCallResult, search []mcpCallResult) {
	t.Helper()
	for _, name := range []string{"echo", "search", "slow", "weather", "flip"} {
		if _, ok := tools[name]; !ok {
			t.Errorf("tools/list lacks the allowed tool %s: %v", name, tools)
		}
	}
	for _, name := range []string{"delete_repo", "admin_shell"} {
		if _, ok := tools[name]; ok {
			t.Errorf("tools/list shows the denied tool %s: %v", name, tools)
		}
	}
	if echo.Text != "echo: hi" {
		t.Errorf("echo = %+v, want the server's answer", echo)
	}
	if e := denied.Error; e == nil || e.Code != -32030 || !strings.Contains(e.Message, "denied by Sluice policy (rule no-delete") {
		t.Errorf("delete_repo = %+v, want the SDK's %s -32030 naming rule no-delete", denied, sdkErr)
	}
	if len(search) != 3 || search[0].Text != "results for q0" || search[1].Text != "results for q1" {
		t.Errorf("search = %+v, want two answers then a rate limit", search)
	} else if e := search[2].Error; e == nil || e.Code != -32029 || !strings.Contains(e.Message, "rate limited by Sluice policy (rule slow-search)") {
		t.Errorf("third search = %+v, want the SDK's %s -32029 naming rule slow-search", search[2], sdkErr)
	}
}

// The real MCP TypeScript SDK on both ends: its Client over
// StreamableHTTPClientTransport, under `sluice run`, talks to its
// McpServer over StreamableHTTPServerTransport behind TLS in another
// namespace. Through Sluice, tools/list leaves out the denied tools, an
// allowed call answers, a denied call is the JSON-RPC error the SDK
// throws (-32030), the third search in a minute is rate limited per tool
// (-32029), progress notifications of a long call arrive as the server
// sends them (not bunched at the end), and a tool whose description
// changed between two tools/list answers is recorded (mcp_tool_changed).
func TestMCPSDKThroughSluice(t *testing.T) {
	RequireE2E(t)
	node, dir := requireMCPJS(t)
	tp := NewTopology(t, 1)
	api := tp.Hosts[0]
	upCA := startMCPServer(t, node, dir, api, "mcp.test")

	var got mcpClientResult
	auditLog := runMCPClient(t, api, upCA, 90*time.Second, &got, node, filepath.Join(dir, "client.mjs"), "https://mcp.test/mcp")

	checkSDKAnswers(t, "McpError", got.Tools, got.Echo, got.Denied, got.Search)

	// Progress: five notifications the server sends 200 ms apart arrive
	// spread out, the first long before the answer.
	if got.Slow.Text != "slow done" || len(got.Progress) != 5 {
		t.Errorf("slow = %+v with progress %+v, want the answer after 5 notifications", got.Slow, got.Progress)
	} else {
		for i := 1; i < len(got.Progress); i++ {
			if gap := got.Progress[i].Ms - got.Progress[i-1].Ms; gap < 100 {
				t.Errorf("progress %d arrived %.0f ms after the one before, want about 200 (bunched by the proxy?): %+v", i+1, gap, got.Progress)
			}
		}
		if early := got.SlowMs - got.Progress[0].Ms; early < 500 {
			t.Errorf("the first progress arrived %.0f ms before the answer, want about 800: %+v, answer at %.0f ms", early, got.Progress, got.SlowMs)
		}
	}
	if got.Flip.Text != "generation 2" || got.ToolsAfter["weather"] != "Weather forecast, generation 2" {
		t.Errorf("flip = %+v, weather after = %q", got.Flip, got.ToolsAfter["weather"])
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
	if rs := calls("echo"); len(rs) != 1 {
		t.Errorf("%d records of tools/call echo, want 1", len(rs))
	} else {
		want("echo", rs[0], "decision", "allow", "status", float64(200), "host", "mcp.test")
	}
	if rs := calls("delete_repo"); len(rs) != 1 {
		t.Errorf("%d records of tools/call delete_repo, want 1", len(rs))
	} else {
		want("delete_repo", rs[0], "decision", "deny", "rule", "no-delete", "mcp_error_code", float64(-32030))
	}
	if rs := calls("search"); len(rs) != 3 {
		t.Errorf("%d records of tools/call search, want 3", len(rs))
	} else {
		want("first search", rs[0], "decision", "allow", "rule", "slow-search")
		want("third search", rs[2], "decision", "deny", "rule", "slow-search", "reason", "rate limit exceeded", "mcp_error_code", float64(-32029))
	}
	if rs := calls("admin_shell"); len(rs) != 0 {
		t.Errorf("records of a call of admin_shell, which the client never made: %v", rs)
	}
	var lists, changed int
	for _, r := range recs {
		switch {
		case r["kind"] == "http" && r["mcp_method"] == "tools/list":
			lists++
		case r["kind"] == "mcp_tool_changed":
			changed++
			want("mcp_tool_changed", r, "mcp_tool", "weather", "mcp_method", "tools/list", "host", "mcp.test", "reason", "mcp tool changed after first sight")
		}
	}
	if lists != 2 || changed != 1 {
		t.Errorf("%d tools/list records and %d mcp_tool_changed, want 2 and 1 (weather)", lists, changed)
	}
}

// mcpCallRecords are the records of the tools/call requests of tool, in
// the order of their JSON-RPC ids (the SDKs count up). A call's record is
// written when its answer's stream ends, which may be after the next
// call's refusal, so the log's order is not the calls'.
func mcpCallRecords(t *testing.T, recs []map[string]any, tool string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, r := range recs {
		if r["kind"] == "http" && r["mcp_method"] == "tools/call" && r["mcp_tool"] == tool {
			out = append(out, r)
		}
	}
	id := func(r map[string]any) int {
		n, err := strconv.Atoi(fmt.Sprint(r["mcp_id"]))
		if err != nil {
			t.Errorf("record without a numeric mcp_id: %v", r)
		}
		return n
	}
	slices.SortFunc(out, func(a, b map[string]any) int { return id(a) - id(b) })
	return out
}

// runMCPClient runs an SDK client (argv) under `sluice run` with
// mcpPolicy, resolving mcp.test to api through a hosts file of its own in
// a private mount namespace (as in the no-SNI test), and decodes the JSON
// it prints into out. It returns the run's audit log.
func runMCPClient(t *testing.T, api *Host, upCA string, timeout time.Duration, out any, argv ...string) (auditLog string) {
	t.Helper()
	unshare := RequireTool(t, "unshare")
	tmp := t.TempDir()
	hosts, cfg, pol := filepath.Join(tmp, "hosts"), filepath.Join(tmp, "config.yaml"), filepath.Join(tmp, "policy.yaml")
	auditLog = filepath.Join(tmp, "audit.jsonl")
	for name, body := range map[string]string{
		hosts: fmt.Sprintf("127.0.0.1 localhost\n%s mcp.test\n", api.IP4),
		cfg:   fmt.Sprintf("ca:\n  dir: %s\nproxy:\n  upstreamCA: %s\n", filepath.Join(tmp, "ca"), upCA),
		pol:   mcpPolicy,
	} {
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	script := `mount --bind "$0" /etc/hosts && exec "$@"`
	args := append([]string{"--mount", "--propagation", "private", "sh", "-c", script, hosts,
		sluiceBin, "run", "--config", cfg, "--policy", pol, "--audit-log", auditLog, "--no-summary", "--"}, argv...)
	cmd := exec.CommandContext(ctx, unshare, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("sluice run %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(argv, " "), err, stdout.String(), stderr.String())
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		t.Fatalf("client output is not JSON: %v\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("client: %s", stdout.String())
	return auditLog
}
