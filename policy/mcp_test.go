package policy

import (
	"context"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/audit"
)

const mcpPolicy = `
version: 1
defaults: {action: allow}
rules:
  - name: no-shell
    destinations: {hosts: [mcp.test]}
    mcp: {tools: ["shell_*", "rm"]}
    action: deny
  - name: no-secrets
    mcp: {resources: ["file:///etc/*"], prompts: [leak]}
    action: deny
  - name: watch-sampling
    mcp: {methods: ["sampling/*"]}
    action: deny
    mode: audit
  - name: slow-echo
    mcp: {tools: [echo, add]}
    action: allow
    rateLimit: {minute: 1}
`

func mcpReq(host string, c *MCPCall) *Request {
	return &Request{Conn: &Conn{Host: host, Addrs: public, Port: 443, TLS: true}, Method: "POST", Host: host, Path: "/mcp", MCP: c}
}

func TestMCPRules(t *testing.T) {
	for _, tc := range []struct {
		name         string
		host         string
		call         *MCPCall
		verdict      Verdict
		wouldDeny    bool
		rule, reason string
	}{
		{"a denied tool by glob", "mcp.test", &MCPCall{Method: "tools/call", Tool: "shell_exec"}, Deny, false, "no-shell", audit.ReasonDeniedByRule},
		{"the same tool on another server is not this rule's", "other.test", &MCPCall{Method: "tools/call", Tool: "shell_exec"}, Allow, false, RuleDefault, audit.ReasonAllowedByDefault},
		{"tools/list names no tool: tool rules skip it", "mcp.test", &MCPCall{Method: "tools/list"}, Allow, false, RuleDefault, audit.ReasonAllowedByDefault},
		{"a resource glob crosses slashes", "x.test", &MCPCall{Method: "resources/read", Resource: "file:///etc/ssh/sshd_config"}, Deny, false, "no-secrets", audit.ReasonDeniedByRule},
		{"a prompt", "x.test", &MCPCall{Method: "prompts/get", Prompt: "leak"}, Deny, false, "no-secrets", audit.ReasonDeniedByRule},
		{"a tool is not matched by a prompt list", "x.test", &MCPCall{Method: "tools/call", Tool: "leak"}, Allow, false, RuleDefault, audit.ReasonAllowedByDefault},
		{"a method glob in audit mode", "x.test", &MCPCall{Method: "sampling/createMessage"}, Allow, true, "watch-sampling", audit.ReasonDeniedByRule},
		{"a request that is not MCP never matches an mcp rule", "mcp.test", nil, Allow, false, RuleDefault, audit.ReasonAllowedByDefault},
		{"unparsed: a deny rule can't be shown not to apply", "mcp.test", &MCPCall{Unparsed: true}, Deny, false, "no-shell", audit.ReasonDeniedByRule},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := mustParse(t, mcpPolicy)
			d := e.Request(context.Background(), mcpReq(tc.host, tc.call))
			if d.Verdict != tc.verdict || d.WouldDeny != tc.wouldDeny || d.Rule != tc.rule || d.Reason != tc.reason {
				t.Fatalf("decision %+v, want %v wouldDeny=%v rule %q reason %q", d, tc.verdict, tc.wouldDeny, tc.rule, tc.reason)
			}
		})
	}
}

// A rule with an mcp block counts its rate limit per tool: echo's
// bucket running dry leaves add's full.
func TestMCPRateLimitPerTool(t *testing.T) {
	e := mustParse(t, mcpPolicy)
	ctx := context.Background()
	call := func(tool string) Decision {
		return e.Request(ctx, mcpReq("x.test", &MCPCall{Method: "tools/call", Tool: tool}))
	}
	if d := call("echo"); d.Denied() {
		t.Fatalf("first echo: %+v", d)
	}
	if d := call("echo"); !d.Denied() || d.Reason != audit.ReasonRateLimited || d.Rule != "slow-echo" || d.StatusCode() != 429 {
		t.Fatalf("second echo: %+v, want 429 rate limited by slow-echo", d)
	}
	if d := call("add"); d.Denied() {
		t.Fatalf("add shares echo's bucket: %+v", d)
	}
}

func TestHideTool(t *testing.T) {
	e := mustParse(t, mcpPolicy)
	ctx := context.Background()
	list := mcpReq("mcp.test", &MCPCall{Method: "tools/list"})
	for tool, hide := range map[string]bool{"shell_exec": true, "rm": true, "echo": false} {
		if got := e.HideTool(ctx, list, tool); got != hide {
			t.Errorf("HideTool(%q) = %v, want %v", tool, got, hide)
		}
	}
	off := mustParse(t, strings.Replace(mcpPolicy, "version: 1\n", "version: 1\nmcp: {hideDenied: false}\n", 1))
	if off.HideTool(ctx, list, "rm") {
		t.Error("hideDenied: false still hides")
	}
	audited := mustParse(t, strings.Replace(mcpPolicy, "version: 1\n", "version: 1\nmode: audit\n", 1))
	if audited.HideTool(ctx, list, "rm") {
		t.Error("audit mode hides a tool")
	}
}

// A rule with an mcp block needs the body: the connection is decided
// per request, not rejected before HTTP.
func TestMCPRuleIsPerRequest(t *testing.T) {
	e := mustParse(t, mcpPolicy)
	cd := e.Connection(context.Background(), &Conn{Host: "mcp.test", Addrs: public, Port: 443, TLS: true})
	if cd.Action != Decrypt || cd.Reason != audit.ReasonPerRequest {
		t.Fatalf("connection %+v, want decrypt, decided per request", cd)
	}
}

func TestMCPValidation(t *testing.T) {
	_, err := Decode([]byte(`
version: 1
rules:
  - name: x
    mcp: {methods: ["tools/ call"], tools: [""], resources: [" "], prompts: [p]}
    action: deny
  - name: y
    action: allow
`), "p.yaml")
	got := err.Error()
	for _, want := range []string{
		`rules[0].mcp.methods[0] "tools/ call": a JSON-RPC method has no spaces`,
		`rules[0].mcp.tools[0]: empty, remove it or write a name like github_*`,
		`rules[0].mcp.resources[0] " ": empty`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("errors lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "never used") {
		t.Errorf("a rule with only an mcp block is not a catch-all:\n%s", got)
	}
}

func TestMCPGlob(t *testing.T) {
	for _, tc := range []struct {
		g, s string
		want bool
	}{
		{"tools/*", "tools/call", true}, {"*", "a/b/c", true}, {"a?c", "abc", true}, {"a*c*e", "abcdxe", true},
		{"github_*", "gitlab_x", false}, {"echo", "echo2", false}, {"", "", true}, {"*x", strings.Repeat("a", 1000), false},
	} {
		if got := mcpGlob(tc.g, tc.s); got != tc.want {
			t.Errorf("mcpGlob(%q, %q) = %v, want %v", tc.g, tc.s, got, tc.want)
		}
	}
}
