package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/mcp"
)

// MCP policy: rules with an mcp block (MCPMatch) match MCP requests by
// JSON-RPC method and by the tool, resource or prompt they name; their
// rate limit counts per tool; tools/list answers lose the tools a call of
// which would be denied (HideTool).

// MCPCall is what the proxy read of an MCP request's body (one JSON-RPC
// message; a batch is asked about once per message).
type MCPCall struct {
	Method string
	// Tool, Resource and Prompt are what a tools/call, resources/* or
	// prompts/get names; empty otherwise.
	Tool, Resource, Prompt string
	// Arguments is a tools/call's params.arguments as written (JSON).
	Arguments json.RawMessage
	// Unparsed is set for a request that looks like MCP (its headers say
	// so) whose body could not be read as JSON-RPC within the proxy's
	// limit: an allow rule with an mcp block can't be shown to apply and
	// is skipped, a deny rule with one can't be shown not to and denies
	// (as for Conn.Opaque flows).
	Unparsed bool
}

// ToolHider is implemented by a Decider that filters tools/list answers.
// *Engine implements it.
type ToolHider interface {
	// HideTool reports whether the tools/list answer to r (a tools/list
	// request) must leave out tool: a tools/call of it would be denied
	// by a rule in enforce mode and mcp.hideDenied is not false. It
	// consumes no rate-limit tokens.
	HideTool(ctx context.Context, r *Request, tool string) bool
}

var _ ToolHider = (*Engine)(nil)

// Values of mcp.tokenAudience.
const (
	TokenAudienceOff     = "off"
	TokenAudienceAudit   = "audit"
	TokenAudienceEnforce = "enforce"
)

// RuleTokenAudience is the rule of a decision on a bearer JWT issued for
// another audience (mcp.tokenAudience).
const RuleTokenAudience = "token-audience"

// AudienceChecker is implemented by a Decider that judges bearer JWTs
// sent to a host their aud claim does not name (token passthrough).
// *Engine implements it.
type AudienceChecker interface {
	// TokenAudience decides a request whose bearer JWT's audiences (aud,
	// none naming the destination) do not name its host: ok is false
	// when the check is off; else the decision is a deny (enforce) or
	// an allow with WouldDeny set (audit), of rule RuleTokenAudience and
	// reason audit.ReasonTokenAudience. It consumes nothing.
	TokenAudience(ctx context.Context, r *Request, aud []string) (d Decision, ok bool)
}

var _ AudienceChecker = (*Engine)(nil)

// TokenAudience implements AudienceChecker.
func (e *Engine) TokenAudience(_ context.Context, _ *Request, _ []string) (Decision, bool) {
	d := Decision{Rule: RuleTokenAudience, Reason: audit.ReasonTokenAudience}
	switch e.tokenAud {
	case TokenAudienceOff:
		return d, false
	case TokenAudienceEnforce:
		d.Verdict = Deny
	default:
		d.WouldDeny = true
	}
	return d, true
}

// Values of mcp.onToolChange.
const (
	ToolChangeOff     = "off"
	ToolChangeAudit   = "audit"
	ToolChangeEnforce = "enforce"
)

// RuleToolChange is the rule of a decision on a call of a changed,
// unacknowledged tool (mcp.onToolChange).
const RuleToolChange = "tool-change"

// ToolChangeChecker is implemented by a Decider that judges calls of
// tools whose description or schema changed since they were
// acknowledged (rug pulls). *Engine implements it.
type ToolChangeChecker interface {
	// ToolChanged is the decision on any tools/call of a tool that
	// changed and was not acknowledged: ok is false when
	// mcp.onToolChange is off; else the decision is a deny (enforce) or
	// an allow with WouldDeny set (audit), of rule RuleToolChange and
	// reason audit.ReasonMCPToolUnacknowledged. It consumes nothing and
	// is cheap: the proxy asks it before looking the tool up.
	ToolChanged(ctx context.Context) (d Decision, ok bool)
	// HidesChangedTools reports whether tools/list answers leave out the
	// changed, unacknowledged tools: mcp.onToolChange is enforce and
	// mcp.hideDenied is not false.
	HidesChangedTools() bool
}

var _ ToolChangeChecker = (*Engine)(nil)

// ToolChanged implements ToolChangeChecker.
func (e *Engine) ToolChanged(_ context.Context) (Decision, bool) {
	d := Decision{Rule: RuleToolChange, Reason: audit.ReasonMCPToolUnacknowledged}
	switch e.onToolChange {
	case ToolChangeEnforce:
		d.Verdict = Deny
	case ToolChangeAudit:
		d.WouldDeny = true
	default:
		return d, false
	}
	return d, true
}

// HidesChangedTools implements ToolChangeChecker.
func (e *Engine) HidesChangedTools() bool {
	return e.hideDenied && e.onToolChange == ToolChangeEnforce
}

// mcpSel is a compiled MCPMatch.
type mcpSel struct {
	methods, tools, resources, prompts []string
	args                               []argSel
}

// argSel is a compiled MCPArgMatch.
type argSel struct {
	path mcp.Path
	re   *regexp.Regexp // nil: the value need only be set
}

// compileMCP compiles a validated MCPMatch (checkMCP rejected bad paths
// and regexes).
func compileMCP(m *MCPMatch) *mcpSel {
	if m == nil {
		return nil
	}
	s := &mcpSel{methods: m.Methods, tools: m.Tools, resources: m.Resources, prompts: m.Prompts}
	for _, a := range m.Arguments {
		p, err := mcp.ParsePath(a.Path)
		if err != nil {
			continue
		}
		as := argSel{path: p}
		if a.Regex != "" {
			if as.re, err = regexp.Compile(a.Regex); err != nil {
				continue
			}
		}
		s.args = append(s.args, as)
	}
	return s
}

// matchArgs reports whether one of the argument selectors matches args.
func (s *mcpSel) matchArgs(args json.RawMessage) bool {
	for _, a := range s.args {
		if v, ok := a.path.Lookup(args); ok && (a.re == nil || a.re.MatchString(v)) {
			return true
		}
	}
	return false
}

// match reports whether the selector matches the call c (nil: the
// request is not MCP). A nil selector matches everything.
func (s *mcpSel) match(c *MCPCall, deny bool) bool {
	switch {
	case s == nil:
		return true
	case c == nil:
		return false
	case c.Unparsed:
		return deny
	}
	if len(s.methods) > 0 && !globAny(s.methods, c.Method) {
		return false
	}
	if len(s.args) > 0 && (c.Method != "tools/call" || !s.matchArgs(c.Arguments)) {
		return false
	}
	if len(s.tools)+len(s.resources)+len(s.prompts) == 0 {
		return true
	}
	switch {
	case c.Tool != "":
		return globAny(s.tools, c.Tool)
	case c.Resource != "":
		return globAny(s.resources, c.Resource)
	case c.Prompt != "":
		return globAny(s.prompts, c.Prompt)
	}
	return false
}

func globAny(globs []string, s string) bool {
	for _, g := range globs {
		if mcpGlob(g, s) {
			return true
		}
	}
	return false
}

// mcpGlob matches s against g: '*' is any run of characters ('/'
// included), '?' one byte, anything else itself. Linear in practice: one
// backtrack point, the last '*'.
func mcpGlob(g, s string) bool {
	gi, si, star, mark := 0, 0, -1, 0
	for si < len(s) {
		switch {
		case gi < len(g) && (g[gi] == '?' || g[gi] == s[si]):
			gi++
			si++
		case gi < len(g) && g[gi] == '*':
			star, mark = gi, si
			gi++
		case star >= 0:
			gi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for gi < len(g) && g[gi] == '*' {
		gi++
	}
	return gi == len(g)
}

// HideTool implements ToolHider.
func (e *Engine) HideTool(_ context.Context, r *Request, tool string) bool {
	if !e.hideDenied {
		return false
	}
	c := r.Conn
	if c == nil {
		c = &Conn{}
	}
	host := r.Host
	if host == "" {
		host = c.Host
	}
	t := &target{host: host, port: c.Port, addrs: c.Addrs, names: c.Names, method: strings.ToUpper(r.Method), path: cleanPath(r.Path)}
	call := &MCPCall{Method: "tools/call", Tool: tool}
	ru := e.match(&c.Workload, t, call)
	return ru.deny && !ru.audit
}

// checkMCP validates a rule's mcp block.
func (d *decoder) checkMCP(path string, m *MCPMatch) {
	for _, l := range []struct {
		key  string
		vals []string
		eg   string
	}{{"methods", m.Methods, "tools/call or resources/*"}, {"tools", m.Tools, "github_*"}, {"resources", m.Resources, "file:///srv/*"}, {"prompts", m.Prompts, "summarize"}} {
		for i, v := range l.vals {
			at := fmt.Sprintf("%s.%s[%d]", path, l.key, i)
			switch {
			case strings.TrimSpace(v) == "":
				d.add(at, v, "empty, remove it or write a name like %s", l.eg)
			case l.key == "methods" && strings.ContainsAny(v, " \t"):
				d.add(at, v, "a JSON-RPC method has no spaces, e.g. %s", l.eg)
			}
		}
	}
	for i, a := range m.Arguments {
		at := fmt.Sprintf("%s.arguments[%d]", path, i)
		if _, err := mcp.ParsePath(a.Path); err != nil {
			d.add(at+".path", a.Path, "%v", err)
		}
		if _, err := regexp.Compile(a.Regex); err != nil {
			d.add(at+".regex", a.Regex, "not an RE2 regular expression: %v", err)
		}
	}
}
