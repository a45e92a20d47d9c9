package mitm

import (
	"io"
	"net/http"
)

// Stage is one step of the per-request chain (see the package doc for the
// chain in order). Stages run in chain order on every request a flow
// serves; each sees what the earlier ones left on the Exchange.
//
// A stage decides one of three things:
//   - continue: Request returns nil;
//   - modify: it changes x.Req's header (what is forwarded is what the
//     chain leaves), sets limits on x, or wraps the request body with
//     x.WrapBody, then returns nil;
//   - answer: it returns an Answer; the client gets it, the remaining
//     stages and the upstream never see the request, and the audit record
//     says what the Answer says.
//
// A stage must not read the request body itself: it wraps the body as a
// stream, and a wrapper that needs a prefix bounds it. Stages are shared
// by every flow and must be safe for concurrent use.
type Stage interface {
	// Name is the stage's fixed name, as tests and the package doc use it.
	Name() string
	// Request sees the request head before it is forwarded.
	Request(x *Exchange) *Answer
}

// ResponseStage is a Stage that also sees the upstream's response head,
// in chain order, before the client does. It may change resp.Header, wrap
// resp.Body (a wrapper that ends the stream early returns a *Cut), or
// return an Answer that replaces the response (the upstream body is then
// closed unread).
type ResponseStage interface {
	Stage
	Response(x *Exchange, resp *http.Response) *Answer
}

// Answer is a response Sluice gives itself instead of forwarding.
type Answer struct {
	Status int
	// Header is added to the answer (on top of the policy's Header). The
	// answer is application/json unless Header names a Content-Type (a
	// nil value: none).
	Header http.Header
	// Body is the answer's body; nil means the JSON error body
	// {"error","rule","reason"} made from Status, Rule and Detail.
	Body []byte
	// Decision, Rule and Reason go into the audit record: Decision is
	// audit.DecisionDeny or audit.DecisionError, Reason a fixed string.
	// Rule names the policy rule that decided, empty for Sluice's own
	// answers.
	Decision string
	Rule     string
	Reason   string
	// Detail is the record's Error and, without Body, the body's reason.
	Detail string
	// Close ends an HTTP/1.1 connection after the answer.
	Close bool
}

// Cut is the error a response body wrapper returns to end the stream
// early: the client's response is aborted and the record carries the
// decision, reason and detail.
type Cut struct {
	Decision, Reason, Detail string
}

func (c *Cut) Error() string { return c.Reason + ": " + c.Detail }

// WrapBody adds a wrapper around the request body. Wrappers apply in
// the order they were added (the first added reads the client's bytes);
// they run only if the request is forwarded and has a body. A wrapper
// that refuses the rest of the body calls x.AbortBody and returns an
// error.
func (x *Exchange) WrapBody(wrap func(io.ReadCloser) io.ReadCloser) {
	x.wraps = append(x.wraps, wrap)
}

// AbortBody stops the request while its body streams: the client gets a
// instead of the upstream's answer (when no response has started). Safe
// to call from the transport's body-reading goroutine.
func (x *Exchange) AbortBody(a *Answer) { x.aborted.CompareAndSwap(nil, a) }

// chain is the per-request pipeline in order. Adding a stage is one line
// here and one file.
func (p *Proxy) chain() []Stage {
	return []Stage{
		framingStage{},    // stage_framing.go: header limits, request smuggling
		clientStage{},     // clients.go: explicit proxy clients: allowCIDRs (403), Proxy-Authorization users (407)
		connectStage{},    // explicit.go: CONNECT tunnels (explicit proxy)
		targetStage{},     // stage_target.go: the request's destination, host binding, 421
		connStage{},       // stage_conn.go: the connection's decision (SSRF guard, hosts denied before HTTP)
		mcpStage{},        // stage_mcp.go: MCP's JSON-RPC read (bounded prefix), header mirroring, tools/list filter, rug pulls
		policyStage{},     // stage_policy.go: access rules, SSRF guard per request, rate limits
		toolChangeStage{}, // stage_toolchange.go: calls of MCP tools changed since acknowledged (mcp.onToolChange)
		tokenStage{},      // stage_token.go: bearer JWTs sent to a host their audience does not name
		sizeStage{},       // stage_size.go: request and response body limits
		contentStage{},    // stage_content.go: content rules (secrets, patterns): block, redact, audit
		bodyLogStage{},    // stage_bodylog.go: the first bytes of bodies in the record, redacted (logBodies)
		credStage{},       // stage_creds.go: credentials (masked placeholders, injection), header changes
		cacheStage{},      // stage_cache.go: the rule's response cache (hits answered here)
		balanceStage{},    // stage_balance.go: upstream groups: a healthy target, guarded (503 when none)
		upstreamStage{},   // stage_upstream.go: the upstream connection (502 when it failed)
	}
}
