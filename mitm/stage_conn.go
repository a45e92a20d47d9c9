package mitm

import (
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// connStage applies the decision the policy made for the request's
// connection before any HTTP was read (policy.Decider.Connection): the
// SSRF guard on the dialed addresses and rules that need no method or
// path. A rejected connection answers each of its requests with the deny,
// without asking the policy per request.
type connStage struct{}

func (connStage) Name() string { return "connection" }

func (connStage) Request(x *Exchange) *Answer {
	if x.t.cd.Action != policy.Reject {
		return nil
	}
	d := x.t.cd.Decision
	d.Verdict = policy.Deny
	x.Decision, x.decided = d, true
	return denyAnswer(d)
}

// denyAnswer is the policy's deny: its status (403 unless the policy says
// otherwise) and the JSON body {"error","rule","reason"}.
func denyAnswer(d policy.Decision) *Answer {
	return &Answer{Status: d.StatusCode(), Body: d.DenyBody(), Decision: audit.DecisionDeny, Rule: d.Rule, Reason: d.Reason}
}

var _ Stage = connStage{}
