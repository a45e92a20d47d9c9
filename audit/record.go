// Package audit defines the record Sluice writes for every request and
// every L4 flow, and the sinks that receive it (the JSON audit log, and
// later metrics, flow tables and access logs). Producers build one Record
// per decision and hand it to a Sink; sinks never modify it.
//
// audit owns the record's wire form: keys.go names every key (and the
// keys of Sluice's other logs), reasons.go every reason a record carries,
// and render.go renders a record, both for the JSON audit log and for the
// proxy's one-line decision log (LogDecision).
package audit

import (
	"net/netip"
	"time"

	"github.com/sluicehq/sluice/workload"
)

// Kinds of record.
const (
	KindHTTP    = "http"    // one HTTP request/response exchange
	KindL4      = "l4"      // a TCP flow not parsed as HTTP (passthrough TLS, other TCP)
	KindConnect = "connect" // a kernel connect event (redirected, denied, direct)
	// KindMCPToolChanged: an MCP server's tools/list describes a tool
	// differently from the first time this workload saw it (a rug pull:
	// new description or input schema under a name already trusted).
	KindMCPToolChanged = "mcp_tool_changed"
	KindDNS            = "dns" // one query to the agent's DNS server
)

// TLS modes of a flow.
const (
	TLSDecrypted   = "decrypted"
	TLSPassthrough = "passthrough"
	TLSNone        = "none"
)

// Decisions as they appear in records.
const (
	DecisionAllow     = "allow"
	DecisionDeny      = "deny"
	DecisionWouldDeny = "would_deny" // audit mode: allowed, but a rule says deny
	DecisionError     = "error"      // Sluice could not complete the exchange
	// DecisionClosed: the client closed before anything was decided (a
	// connection opened and left unused).
	DecisionClosed = "closed"
	// DecisionClientUntrusted: the client refused the certificate Sluice
	// minted for it (reason ReasonClientUntrusted); nothing was sent.
	DecisionClientUntrusted = "client_untrusted"
)

// Ends of an exchange that did not end with the whole response.
const (
	// EndClientClosed: the client closed first (a cancelled stream or
	// call, or a client that stopped once it had what it wanted). A
	// normal end, not an error.
	EndClientClosed = "client closed"
)

// Sources of a record's Status.
const (
	SourceUpstream = "upstream" // the upstream's response
	SourceSluice   = "sluice"   // an answer Sluice gave itself
	SourceClient   = "client"   // 499: the client left before the response
)

// Record is one audit line. Each field is rendered under its key of
// keys.go (see render.go); keep them stable, people grep for them.
type Record struct {
	Time     time.Time
	Kind     string
	Workload workload.Identity

	Host  string     // hostname the client asked for (Host header, SNI or CONNECT target)
	DstIP netip.Addr // the address Sluice dialed (or the original destination)
	Port  uint16
	SNI   string
	TLS   string // TLSDecrypted, TLSPassthrough or TLSNone
	ALPN  string

	Proto  string // "HTTP/1.1", "HTTP/2.0"
	Method string
	Path   string
	Status int
	// Source says who produced Status: SourceUpstream or SourceSluice.
	Source string

	BytesIn  int64 // bytes from the client (request body, or client->server on L4)
	BytesOut int64 // bytes to the client (response body, or server->client on L4)

	Duration         time.Duration // accept (or request start) to last byte
	UpstreamDuration time.Duration // dial+request to response headers from the upstream

	Decision string
	Rule     string
	Reason   string
	Error    string
	// End says how an exchange ended early without an error
	// (EndClientClosed); empty when it ran to its end.
	End string
	// PolicyDecision, PolicyRule and PolicyReason keep the policy's
	// decision when Decision is DecisionError: an error inside Sluice (an
	// unreachable upstream) decided the outcome, not a rule.
	PolicyDecision string
	PolicyRule     string
	PolicyReason   string

	// GRPCStatus and GRPCMessage are a gRPC call's grpc-status and
	// grpc-message (from the trailers, or a trailers-only answer).
	GRPCStatus  string
	GRPCMessage string

	// MCP fields, when the request was JSON-RPC to an MCP server (Streamable
	// HTTP). MCPMethod is the JSON-RPC method (of a batch's first message);
	// MCPTool, MCPResource and MCPPrompt what a tools/call, resources/*
	// and prompts/get names; MCPID the request's id as written (a JSON
	// string keeps its quotes); MCPSession and MCPProtocol the
	// Mcp-Session-Id and MCP-Protocol-Version headers; MCPErrorCode the
	// JSON-RPC error code of the answer (Sluice's or the server's), 0 for
	// none.
	MCPMethod    string
	MCPTool      string
	MCPResource  string
	MCPPrompt    string
	MCPID        string
	MCPSession   string
	MCPProtocol  string
	MCPErrorCode int
	// MCPHidden are the tools Sluice removed from a tools/list answer
	// (the policy would deny a call of them).
	MCPHidden []string
	// MCPServerMethods are the methods of the requests and notifications
	// the server sent on a stream (server-to-client requests such as
	// sampling/createMessage, notifications/tools/list_changed), each
	// once, in order of first sight (at most 16).
	MCPServerMethods []string
	// MCPToolHash and MCPToolPrevHash are a tool's hash (hex SHA-256 of
	// its name, description and input schema) now and as acknowledged
	// before, and MCPToolFields the fields that differ ("description",
	// "inputSchema"), on a kind mcp_tool_changed record and on a call
	// denied because its tool changed.
	MCPToolHash     string
	MCPToolPrevHash string
	MCPToolFields   []string
	// TokenAudience is the aud claim of a bearer JWT the request carried
	// that names neither its host nor a URL on it (token passthrough):
	// the audiences only, never the token.
	TokenAudience []string

	// What the request carried: the detectors and patterns its content
	// matched (names only, never the secret), and the credentials Sluice
	// put in for the workload (names only).
	Detectors   []string
	Credentials []string
	// RequestBody and ResponseBody are the first bytes of the bodies
	// (the rule's logBodies), secrets redacted.
	RequestBody  string
	ResponseBody string

	// Header holds request headers, already redacted (see Redact).
	Header map[string]string
	// UpstreamAddr is the ip:port the response came from.
	UpstreamAddr string
	// Cache is what the response cache did: hit, miss, bypass, expired
	// or revalidated; empty when no cache applies.
	Cache string

	// DNS fields: a query's name, type, answer code and answered
	// addresses (kind "dns"); DNSName alone on other kinds is the name
	// the workload resolved to DstIP.
	DNSName string
	QType   string
	Rcode   string
	Answers []netip.Addr
}

// Sink receives audit records. Record must be safe for concurrent use and
// must not retain or modify r after it returns.
type Sink interface {
	Record(r *Record)
}

// Multi fans a record out to several sinks in order.
type Multi []Sink

// Record implements Sink.
func (m Multi) Record(r *Record) {
	for _, s := range m {
		s.Record(r)
	}
}

// BatchSink is a Sink that takes several records at once more cheaply
// than one by one (JSONLog: one write for all).
type BatchSink interface {
	Sink
	RecordBatch(rs []*Record)
}

// RecordBatch hands rs, in order, to every sink: at once to a BatchSink,
// one by one to the others.
func (m Multi) RecordBatch(rs []*Record) {
	for _, s := range m {
		if b, ok := s.(BatchSink); ok {
			b.RecordBatch(rs)
			continue
		}
		for _, r := range rs {
			s.Record(r)
		}
	}
}

// Discard drops every record.
type Discard struct{}

// Record implements Sink.
func (Discard) Record(*Record) {}

var (
	_ Sink = Multi(nil)
	_ Sink = Discard{}
)
