package mitm

import (
	"sync"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// policyStage asks the policy about the request (policy.Decider.Request):
// the SSRF guard on the addresses dialed, the first matching rule (access
// in its mode, audit or enforce), and that rule's rate limit. It consumes
// rate-limit tokens, so it runs once per request. The decision's Header
// (rate-limit headers) goes on every answer and response from here on,
// and its body limits are the size stage's.
type policyStage struct{}

func (policyStage) Name() string { return "policy" }

// policyRequests holds the policy.Request the stage asks with: the
// Decider keeps none past its call (policy.Decider.Request), and one per
// request would be an allocation.
var policyRequests = sync.Pool{New: func() any { return new(policy.Request) }}

func (policyStage) Request(x *Exchange) *Answer {
	r, t := x.Req, x.t
	req := policyRequests.Get().(*policy.Request)
	*req = policy.Request{
		Conn:          t.conn,
		Method:        r.Method,
		Host:          x.policyHost, // the name bound to what is dialed (see the target stage)
		Path:          r.URL.EscapedPath(),
		Header:        r.Header,
		ContentLength: r.ContentLength,
	}
	d := decide(x, req)
	*req = policy.Request{} // what it points to is not kept alive by the pool
	policyRequests.Put(req)
	x.Decision, x.decided = d, true
	rec := x.Record
	rec.Decision, rec.Rule, rec.Reason = decisionString(d), d.Rule, d.Reason
	if x.mcp != nil && x.mcp.unparsed && rec.Decision == audit.DecisionAllow {
		rec.Reason = audit.ReasonMCPUnparsed // the policy allowed what it could not read; the error says why
	}
	if d.Denied() {
		if a := mcpDenyAnswer(x, d); a != nil {
			return a // a JSON-RPC error (stage_mcp.go)
		}
		return denyAnswer(d)
	}
	return nil
}

// decide asks the policy about req, the request of x.
func decide(x *Exchange, req *policy.Request) policy.Decision {
	ctx := x.Req.Context()
	if x.mcp == nil || x.mcp.stream {
		return x.f.p.decider().Request(ctx, req)
	}
	// An MCP request is asked about once per message of a batch; the
	// first denied message decides.
	var d policy.Decision
	for _, c := range x.mcp.calls() {
		req.MCP = c
		if d = x.f.p.decider().Request(ctx, req); d.Denied() {
			break
		}
	}
	return d
}

var _ Stage = policyStage{}
