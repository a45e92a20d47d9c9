package mitm

import (
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// toolChangeStage holds back calls of tools that changed: a tools/call
// of a tool whose description or input schema differs from the one the
// workload first saw at this server (or last acknowledged with sluice
// mcp ack) is, as the policy's mcp.onToolChange says, denied with a
// JSON-RPC error (enforce: code mcp.CodeToolChanged) or allowed as
// would_deny (audit); the record carries both hashes and the fields that
// changed. It runs after the policy stage, so a call the rules deny is
// denied for that.
type toolChangeStage struct{}

func (toolChangeStage) Name() string { return "toolchange" }

func (toolChangeStage) Request(x *Exchange) *Answer {
	m := x.mcp
	if m == nil || len(m.msgs) == 0 {
		return nil
	}
	tc, ok := x.f.p.decider().(policy.ToolChangeChecker)
	if !ok {
		return nil
	}
	d, on := tc.ToolChanged(x.Req.Context())
	if !on {
		return nil
	}
	var server, wl string // built for the first tools/call only
	for _, g := range m.msgs {
		if g.Method != "tools/call" {
			continue
		}
		if server == "" {
			server, wl = x.mcpServer(), x.Workload().Name()
		}
		c, changed := x.f.p.mcpTools.Changed(server, wl, g.Tool)
		if !changed {
			continue
		}
		rec := x.Record
		rec.MCPTool, rec.MCPToolHash, rec.MCPToolPrevHash, rec.MCPToolFields = g.Tool, c.NewHash, c.OldHash, c.Fields
		if d.Denied() {
			rec.Decision, rec.Rule, rec.Reason = audit.DecisionDeny, d.Rule, d.Reason
			return mcpDenyAnswer(x, d)
		}
		if rec.Decision == audit.DecisionAllow {
			rec.Decision, rec.Rule, rec.Reason = audit.DecisionWouldDeny, d.Rule, d.Reason
		}
		return nil
	}
	return nil
}

var _ Stage = toolChangeStage{}
