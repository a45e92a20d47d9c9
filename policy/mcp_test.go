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

const mcpArgsPolicy = `
version: 1
defaults: {action: allow}
rules:
  - name: no-bcc
    mcp:
      tools: [send_email]
      arguments:
        - path: $.bcc                       # set at all
        - path: $.to[0]
          regex: '@evil\.test$'
    action: deny
  - name: no-force
    mcp: {arguments: [{path: "$['options'].force", regex: '^true$'}]}
    action: deny
`

// Argument rules: a tools/call is matched by the value at a path, set or
// matching a regex; entries are ORed; other methods never match.
func TestMCPArgumentRules(t *testing.T) {
	call := func(tool, args string) *MCPCall {
		return &MCPCall{Method: "tools/call", Tool: tool, Arguments: []byte(args)}
	}
	for _, tc := range []struct {
		name string
		call *MCPCall
		rule string
	}{
		{"bcc set", call("send_email", `{"to":["a@x.test"],"bcc":"spy@y.test"}`), "no-bcc"},
		{"bcc empty string is still set", call("send_email", `{"bcc":""}`), "no-bcc"},
		{"bcc null is not set", call("send_email", `{"to":["a@x.test"],"bcc":null}`), RuleDefault},
		{"no bcc, a fine recipient", call("send_email", `{"to":["a@x.test"]}`), RuleDefault},
		{"the first recipient matches the regex", call("send_email", `{"to":["boss@evil.test"]}`), "no-bcc"},
		{"the second recipient is not the path", call("send_email", `{"to":["a@x.test","boss@evil.test"]}`), RuleDefault},
		{"another tool with bcc", call("send_sms", `{"bcc":"x"}`), RuleDefault},
		{"no arguments", call("send_email", ``), RuleDefault},
		{"arguments not an object", call("send_email", `[1]`), RuleDefault},
		{"a boolean as JSON", call("git_push", `{"options":{"force":true}}`), "no-force"},
		{"a string true matches too", call("git_push", `{"options":{"force":"true"}}`), "no-force"},
		{"force false", call("git_push", `{"options":{"force":false}}`), RuleDefault},
		{"the last duplicate key wins, as in JSON.parse", call("git_push", `{"options":{"force":false,"force":true}}`), "no-force"},
		{"not tools/call", &MCPCall{Method: "prompts/get", Prompt: "p"}, RuleDefault},
		{"unparsed: a deny rule applies", &MCPCall{Unparsed: true}, "no-bcc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := mustParse(t, mcpArgsPolicy)
			d := e.Request(context.Background(), mcpReq("mcp.test", tc.call))
			if d.Rule != tc.rule || (tc.rule != RuleDefault) != (d.Verdict == Deny) {
				t.Fatalf("decision %+v, want rule %q", d, tc.rule)
			}
		})
	}
	// A tool some of whose calls are denied stays in tools/list.
	e := mustParse(t, mcpArgsPolicy)
	if e.HideTool(context.Background(), mcpReq("mcp.test", &MCPCall{Method: "tools/list"}), "send_email") {
		t.Error("send_email is hidden though only some of its calls are denied")
	}
}

func TestMCPArgumentRulesInvalid(t *testing.T) {
	_, err := Parse([]byte(`
version: 1
rules:
  - name: bad
    mcp: {arguments: [{path: bcc}, {path: "$.to", regex: "(["}]}
    action: deny
`), "p.yaml")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"rules[0].mcp.arguments[0].path", "a path starts with $", "rules[0].mcp.arguments[1].regex", "not an RE2 regular expression"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestTokenAudienceMode(t *testing.T) {
	ctx := context.Background()
	r := mcpReq("api.test", nil)
	for _, c := range []struct {
		setting  string
		ok       bool
		deny     bool
		wouldDen bool
	}{
		{"", true, false, true},
		{"mcp: {tokenAudience: audit}\n", true, false, true},
		{"mcp: {tokenAudience: enforce}\n", true, true, false},
		{"mcp: {tokenAudience: off}\n", false, false, false},
	} {
		e := mustParse(t, strings.Replace(mcpPolicy, "version: 1\n", "version: 1\n"+c.setting, 1))
		d, ok := e.TokenAudience(ctx, r, []string{"other.test"})
		if ok != c.ok || (ok && (d.Denied() != c.deny || d.WouldDeny != c.wouldDen || d.Rule != RuleTokenAudience || d.Reason != audit.ReasonTokenAudience)) {
			t.Errorf("%q: TokenAudience = %+v, %v", c.setting, d, ok)
		}
	}
	_, err := Decode([]byte("version: 1\nmcp: {tokenAudience: strict}\n"), "p.yaml")
	if err == nil || !strings.Contains(err.Error(), `mcp.tokenAudience "strict": use off, audit or enforce`) {
		t.Errorf("tokenAudience: strict: %v", err)
	}
}
