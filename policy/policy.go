// Package policy decides what happens to a workload's egress: whether a TLS
// connection is decrypted, passed through or rejected, and whether each HTTP
// request is allowed, denied, rate limited or size limited. It is pure Go
// with no I/O on the decision path (rate-limit counters in Redis excepted),
// so every stage is table-testable without root.
//
// The proxy (mitm/) calls Engine.Connection once per connection and
// Engine.Request once per HTTP request, then applies the Decision: it writes
// the deny answer, adds Decision.Header to the response and enforces the size
// limits while streaming. An Engine is immutable; a reload compiles a new one
// and swaps it in (see Current).
package policy

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"sync/atomic"

	"github.com/sluicehq/sluice/cache"
	"github.com/sluicehq/sluice/upstreams"
	"github.com/sluicehq/sluice/workload"
)

// Verdict is the outcome of a decision.
type Verdict uint8

const (
	Allow Verdict = iota
	Deny
)

func (v Verdict) String() string {
	if v == Deny {
		return "deny"
	}
	return "allow"
}

// Action is what the proxy does with a TLS connection.
type Action uint8

const (
	// Decrypt terminates TLS with a leaf minted for the SNI.
	Decrypt Action = iota
	// Passthrough relays the TLS bytes untouched; the flow is logged at L4.
	Passthrough
	// Reject closes the connection (for TLS) or answers the deny (for HTTP).
	Reject
)

func (a Action) String() string {
	switch a {
	case Passthrough:
		return "passthrough"
	case Reject:
		return "reject"
	default:
		return "decrypt"
	}
}

// Decision is the result of a policy stage or of the whole pipeline. Reason
// is a fixed string per cause, one of audit's Reason constants (tests and
// logs assert on it); Rule names the rule that matched ("default" when none
// did).
type Decision struct {
	Verdict Verdict
	// WouldDeny is set in audit mode when a rule would have denied: Verdict
	// stays Allow and the audit record says "would_deny".
	WouldDeny bool
	Rule      string
	Reason    string
	// Status is the HTTP status the client gets on Deny (403 when zero).
	Status int
	// Header is added to the response the client sees, on allow and deny
	// alike (rate-limit headers, Retry-After). May be nil.
	Header http.Header
	// MaxRequestBody and MaxResponseBody cap body sizes in bytes; 0 means
	// no limit. The proxy enforces them while streaming.
	MaxRequestBody  int64
	MaxResponseBody int64
	// Capture asks the proxy to write the connection's plaintext
	// (ConnDecision) to the pcapng capture when one is configured. On a
	// request Decision it says whether that request's rule captures.
	Capture bool
	// Cache is the response cache of the rule that allowed the request;
	// nil: the response is not cached.
	Cache *cache.Rule

	// What a request carries (content.go, credential.go); the zero
	// values do nothing.
	//
	// Content is the rule's content inspection; nil inspects nothing.
	Content *Inspector
	// Headers are the rule's header changes; nil changes none.
	Headers *HeaderRules
	// Credentials are the policy's credentials (every rule's): a
	// placeholder is swapped only for their hosts and refused elsewhere.
	Credentials *Credentials
	// LogRequestBody and LogResponseBody are how many bytes of each body
	// go into the audit record, redacted; 0: none.
	LogRequestBody, LogResponseBody int64
	// CaptureSecrets (with Capture, on a ConnDecision) writes the
	// plaintext to the capture without redacting credential headers and
	// detected secrets.
	CaptureSecrets bool
}

// Denied reports whether the client must get the deny answer.
func (d Decision) Denied() bool { return d.Verdict == Deny }

// StatusCode is the HTTP status of a deny answer.
func (d Decision) StatusCode() int {
	if d.Status != 0 {
		return d.Status
	}
	return http.StatusForbidden
}

// DenyBody is the JSON body of a deny answer: {"error","rule","reason"}.
func (d Decision) DenyBody() []byte {
	b, _ := json.Marshal(struct {
		Error  string `json:"error"`
		Rule   string `json:"rule"`
		Reason string `json:"reason"`
	}{http.StatusText(d.StatusCode()), d.Rule, d.Reason})
	return append(b, '\n')
}

// Conn is what is known of a connection before any HTTP is read. Once
// given to a Decider none of its fields changes: a Decider may keep what
// it worked out from it for the connection's next requests. A connection
// known better later is a new Conn (OpaqueCopy, a retarget).
type Conn struct {
	Workload workload.Identity
	// Host is the name the client asked for: the SNI, the CONNECT target or
	// the Host header of a plain HTTP request. Empty when unknown.
	Host string
	// Addrs are the addresses the proxy will dial, in order: the original
	// destination in transparent mode, the DNS answers in explicit mode.
	// The proxy dials only addresses that were checked here.
	Addrs []netip.Addr
	Port  uint16
	// TLS is true when the client sent a TLS ClientHello.
	TLS bool
	// Names are the names the proxy knows to resolve to Addrs[0], given
	// when no name is bound to what is dialed (no SNI and no Host, an IP
	// literal, or a Host that does not resolve to the address): rules by
	// hosts then match if any of them does, so a deny by name can't be
	// dodged by leaving the name out. The proxy resolves the names the
	// policy lists (HostLister) to fill them.
	Names []string
	// Opaque is true when the flow turned out not to be HTTP (other TCP,
	// or a non-HTTP protocol inside decrypted TLS): rules with methods or
	// paths can never match it, so they are skipped and the decision is
	// final. The proxy asks again with Opaque set before relaying such a
	// flow.
	Opaque bool
	// Unresolved is true when the proxy knows the workload did not
	// obtain Addrs[0] from DNS: the agent's DNS server answers the
	// workload and bound no name to that address for it. False when it
	// did, or when nothing tells (no DNS server, explicit proxy).
	Unresolved bool
	// ClientUntrusted is true when the proxy saw this workload reject
	// Sluice's certificate for Host recently (audit.DecisionClientUntrusted):
	// with tls.onUntrustedClient passthrough, a TLS connection is then
	// passed through rather than decrypted.
	ClientUntrusted bool

	// memo is what Engine.Request worked out from the connection alone,
	// kept for its next requests. A memo names the Conn it is for, and
	// atomic.Pointer's noCopy makes vet refuse a copy of a Conn.
	memo atomic.Pointer[connMemo]
}

// OpaqueCopy is c for a flow found not to be HTTP: the same fields with
// Opaque set, and nothing Request kept.
func (c *Conn) OpaqueCopy() *Conn {
	return &Conn{Workload: c.Workload, Host: c.Host, Addrs: c.Addrs, Port: c.Port, TLS: c.TLS, Names: c.Names,
		Opaque: true, Unresolved: c.Unresolved, ClientUntrusted: c.ClientUntrusted}
}

// ConnDecision is the decision for a connection.
type ConnDecision struct {
	Action Action
	Decision
}

// Request is one HTTP request as the policy sees it.
type Request struct {
	Conn   *Conn
	Method string
	// Host is the request's host (Host header or :authority), without port.
	Host string
	// Path is the URL path, not unescaped further.
	Path   string
	Header http.Header
	// ContentLength is the declared body length, -1 when unknown.
	ContentLength int64
	// MCP is the request's MCP message; nil when it is not MCP.
	MCP *MCPCall
}

// Decider is what the proxy asks. *Engine implements it; tests of the
// proxy may use their own. Implementations are immutable and safe for
// concurrent use.
type Decider interface {
	// Connection decides a connection before any HTTP is read: decrypt,
	// pass through or reject, including the address checks (SSRF guard)
	// on c.Addrs. It is called once per connection, and once more with
	// c.Opaque set when the flow is relayed without HTTP.
	Connection(ctx context.Context, c *Conn) ConnDecision
	// Request decides one HTTP request; it may consume rate-limit tokens,
	// so it is called exactly once per request. r is the caller's only
	// for the call: Request keeps neither r nor a pointer into it (the
	// proxy reuses it for another request).
	Request(ctx context.Context, r *Request) Decision
}

var _ Decider = (*Engine)(nil)

// UpstreamLister is implemented by a Decider whose policy has upstream
// groups: the proxy balances the destinations they serve. The result is
// immutable and the same on every call.
type UpstreamLister interface {
	Upstreams() []upstreams.Spec
}

var _ UpstreamLister = (*Engine)(nil)

// HostLister is implemented by a Decider whose rules name hosts: the
// proxy resolves these names to tell which of them a destination without
// a bound name is (Conn.Names).
type HostLister interface {
	// Hosts returns the exact host names (no wildcards) the rules list.
	Hosts() []string
}

var _ HostLister = (*Engine)(nil)

// Current holds the policy in force; reload swaps it atomically. The zero
// value holds nil; Load then returns a Decider that allows everything.
type Current struct {
	p atomic.Pointer[deciderBox]
}

type deciderBox struct{ d Decider }

// Load returns the Decider in force.
func (c *Current) Load() Decider {
	if b := c.p.Load(); b != nil {
		return b.d
	}
	return allowAll
}

// Store puts d in force for every decision made after it returns.
func (c *Current) Store(d Decider) { c.p.Store(&deciderBox{d}) }
