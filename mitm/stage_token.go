package mitm

import (
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/mcp"
	"github.com/sluicehq/sluice/policy"
)

// tokenStage looks for token passthrough: a bearer JWT in the request's
// Authorization header whose aud claim names neither the host the
// request goes to nor a URL on it (an MCP server forwarding its client's
// token to an API, say). The record carries the audiences
// (token_audience, never the token); the policy (mcp.tokenAudience)
// says whether that is only recorded (audit: would_deny when nothing
// else denied) or denied (enforce: 403, a JSON-RPC error for MCP
// requests). Only the payload is decoded, no signature is checked: see
// mcp.BearerAudience. It runs after the policy stage, so a request the
// rules deny is denied for that, and before the credentials stage, so it
// judges what the workload sent, not what Sluice puts in.
type tokenStage struct{}

func (tokenStage) Name() string { return "token" }

func (tokenStage) Request(x *Exchange) *Answer {
	ac, ok := x.f.p.decider().(policy.AudienceChecker)
	if !ok {
		return nil
	}
	var aud []string
	jwt := false
	for _, v := range x.Req.Header.Values("Authorization") {
		if aud, jwt = mcp.BearerAudience(v); jwt {
			break
		}
	}
	host := x.policyHost
	if host == "" {
		host = x.host
	}
	if !jwt || mcp.AudienceNames(aud, host) {
		return nil
	}
	r := x.Req
	var conn *policy.Conn
	if x.t != nil {
		conn = x.t.conn
	}
	d, on := ac.TokenAudience(r.Context(), &policy.Request{Conn: conn, Method: r.Method, Host: host, Path: r.URL.EscapedPath(), Header: r.Header}, aud)
	if !on {
		return nil
	}
	rec := x.Record
	rec.TokenAudience = aud
	if d.Denied() {
		rec.Decision, rec.Rule, rec.Reason = audit.DecisionDeny, d.Rule, d.Reason
		if a := mcpDenyAnswer(x, d); a != nil {
			return a
		}
		return denyAnswer(d)
	}
	if d.WouldDeny && rec.Decision == audit.DecisionAllow {
		rec.Decision, rec.Rule, rec.Reason = audit.DecisionWouldDeny, d.Rule, d.Reason
	}
	return nil
}

var _ Stage = tokenStage{}
