package audit

import "slices"

// Reasons a record carries (its "reason" key). Every reason a record can
// hold is a constant here, in one style: a short lowercase English phrase
// (names such as TLS, SNI or Content-Length keep their spelling). They are
// fixed strings: tests assert them, deny answers and logs carry them
// verbatim, dashboards and alerts match on them. Change a value only with
// a note in the changelog.
//
// The agent's connect events carry their own vocabulary (agent.Reason*,
// snake_case names of the kernel's verdicts); those are event reasons, not
// record reasons, and are not listed here.

// Reasons of the policy's access stage.
const (
	ReasonDeniedByRule     = "denied by rule"
	ReasonAllowedByRule    = "allowed by rule"
	ReasonDeniedByDefault  = "denied by default"
	ReasonAllowedByDefault = "allowed by default"
	ReasonPassthrough      = "host is on the pass-through list"
	ReasonPerRequest       = "decided per request"
	ReasonAllowedCIDR      = "address allowed by ssrf.allowCIDRs"
)

// Reasons of the policy's address guard (SSRF protection): the class of
// the destination address.
const (
	ReasonMetadata    = "destination is a cloud metadata address"
	ReasonLoopback    = "destination is a loopback address"
	ReasonLinkLocal   = "destination is a link-local address"
	ReasonPrivate     = "destination is a private address"
	ReasonCGNAT       = "destination is a carrier-grade NAT address"
	ReasonUnspecified = "destination is an unspecified address"
	ReasonMulticast   = "destination is a multicast or broadcast address"
	ReasonReserved    = "destination is a reserved address"
	ReasonEmbedded    = "destination is an IPv6 address embedding a blocked IPv4 address"
)

// Reasons of the policy's rate-limit stage.
const (
	ReasonRateLimited     = "rate limit exceeded"
	ReasonLimiterDown     = "rate limiter unavailable"
	ReasonLimiterDownPass = "allowed: rate limiter unavailable (faultTolerant)"
)

// Reasons of the MCP stage (JSON-RPC to MCP servers).
const (
	// ReasonMCPHeaderMismatch: an Mcp-Method or Mcp-Name header says
	// another method or name than the body (answered 400).
	ReasonMCPHeaderMismatch = "mcp header differs from the body"
	// ReasonMCPUnparsed: a request that looks like MCP whose body could
	// not be read within proxy.mcpMaxMessageBytes or is not JSON-RPC;
	// rules with an mcp block decide it as Conn.Opaque flows are. The
	// record's reason when the policy allowed it (its rule is kept; a
	// deny or would_deny keeps the rule's reason), the record's error
	// saying why. Was "mcp: unparsed" (then only the error).
	ReasonMCPUnparsed = "mcp request body not read as JSON-RPC"
	// ReasonMCPToolChanged: a kind mcp_tool_changed record.
	ReasonMCPToolChanged = "mcp tool changed after first sight"
	// ReasonMCPToolUnacknowledged: a tools/call of a tool whose
	// description or schema changed and was not acknowledged (sluice mcp
	// ack), under mcp.onToolChange audit or enforce.
	ReasonMCPToolUnacknowledged = "mcp tool changed and not acknowledged"
	// ReasonTokenAudience: a bearer JWT whose aud claim does not name
	// the request's host (token passthrough; mcp.tokenAudience).
	ReasonTokenAudience = "bearer token issued for another audience"
)

// Reasons of the size limits (request and response bodies).
const (
	ReasonRequestTooLarge  = "request body exceeds limit"
	ReasonResponseTooLarge = "response body exceeds limit"
)

// Reasons of what a request carries: content rules and credentials.
const (
	ReasonContentBlocked = "request content matched a content rule"
	ReasonUninspectable  = "request body cannot be inspected"
	// ReasonExfiltration: a masked credential's placeholder on its way
	// to a host the credential is not bound to.
	ReasonExfiltration       = "credential placeholder sent to a host it is not bound to"
	ReasonCredentialNotBound = "credential is not bound to the request's host"
	ReasonCredentialMissing  = "credential secret unavailable"
)

// Reasons of answers and flows the proxy ends itself: the upstream failed.
// The detail goes to the record's Error and the answer's body.
const (
	ReasonUpstreamUnreachable = "upstream unreachable"
	ReasonUpstreamVerify      = "upstream certificate verification failed"
	ReasonUpstreamTLS         = "upstream TLS handshake failed"
	ReasonUpstreamTimeout     = "upstream response header timeout"
	ReasonUpstreamError       = "upstream error"
	ReasonNoHealthyUpstream   = "no healthy upstream" // every target of the destination's upstream group is unhealthy or ejected
)

// ReasonInternal is the reason of an exchange or a connection that a
// fault of Sluice's own ended (a panic, recovered): it is recorded as
// such, with the panic's value as the Error, rather than not at all.
const ReasonInternal = "internal error"

// Reasons of the proxy about the client: what it sent or how it left.
const (
	ReasonHeaderTooLarge  = "request header fields too large"
	ReasonMalformed       = "malformed request"
	ReasonSmuggling       = "both Content-Length and Transfer-Encoding"
	ReasonNotProxy        = "not a proxy request"
	ReasonBadHello        = "malformed client hello"
	ReasonClientHandshake = "client TLS handshake failed"
	ReasonClientSilent    = "client sent nothing"
	ReasonNoRequest       = "connection ended before a request" // HTTP (or TLS) and then nothing
	ReasonIncompleteHead  = "request head incomplete"           // a request head begun and never finished (slowloris)
	ReasonClientGone      = "client gone"                       // the client left before the answer was complete
	ReasonNormalClose     = "client closed"                     // the client ended a stream normally
	// ReasonExpectation: the request's Expect field asked for something
	// other than 100-continue, which no one here can meet (417, RFC
	// 9110 10.1.1).
	ReasonExpectation = "expectation not supported"
)

// Reasons of the proxy about the connection.
const (
	ReasonTooManyConns = "too many connections"
	// Explicit proxy clients (proxy.clients): an address outside
	// allowCIDRs (403), a request without valid Proxy-Authorization
	// credentials when usersFile is set (407).
	ReasonClientNotAllowed = "client address not in proxy.clients.allowCIDRs"
	ReasonProxyAuthMissing = "proxy authentication required"
	ReasonProxyAuthInvalid = "proxy credentials invalid"
	ReasonMisdirected      = "request host differs from the connection's host"
	ReasonSNIMismatch      = "SNI differs from the CONNECT host"
	// ReasonPassthroughUnbound: a pass-through SNI that does not resolve to
	// the destination address is decrypted instead.
	ReasonPassthroughUnbound = "pass-through SNI does not resolve to the destination; decrypted"
	// ReasonClientUntrusted: the client rejected the leaf Sluice minted
	// (a TLS alert unknown_ca, bad_certificate or certificate_unknown, or
	// a close right after the handshake): it does not trust the Sluice
	// CA, or pins the host's certificate. Decision client_untrusted.
	ReasonClientUntrusted = "client rejected the Sluice certificate"
	// ReasonUntrustedPassthrough: a TLS connection passed through because
	// its workload rejected Sluice's certificate for the host before
	// (tls.onUntrustedClient: passthrough).
	ReasonUntrustedPassthrough = "client rejected the Sluice certificate before; passed through"
)

// Reasons of kernel connect records (kind "connect"): what the hooks did
// with a connect that never reached the proxy. They name the agent's event
// reasons (agent.Reason*, snake_case) in this file's style.
const (
	ReasonKernelDenyCIDR      = "destination in agent.denyCIDRs"
	ReasonKernelBypassCIDR    = "destination in agent.bypassCIDRs"
	ReasonKernelBypassHost    = "destination resolved from a name in agent.bypassHosts"
	ReasonKernelAgentPort     = "destination is the agent's own listener"
	ReasonKernelPortNotListed = "port not intercepted"
	ReasonKernelNotTCP        = "not a TCP stream socket"
	ReasonKernelNoIntercept   = "no intercept address for the family"
	ReasonKernelMarkForged    = "setsockopt of the agent's mark refused"
	ReasonKernelDenyPacket    = "packet to a destination in agent.denyCIDRs dropped"
)

// Reasons of the agent's DNS server (kind "dns").
const (
	ReasonDNSDenied    = "name denied by dns rule"
	ReasonDNSAllowed   = "name allowed"
	ReasonDNSNoOrigin  = "sender of the query unknown"
	ReasonDNSUpstream  = "dns upstream unreachable"
	ReasonDNSMalformed = "malformed dns query"
	ReasonKernelQUIC   = "udp to port 443 (quic) refused"
	ReasonKernelDNS    = "dns steered to the agent's dns server"
)

// Reasons of the DNS server's exfiltration guard: a query flagged as a
// likely carrier of data out (denied in enforce mode, would_deny in
// audit mode). ExfilReasons lists them.
const (
	ReasonDNSExfilRate        = "dns query rate exceeded (possible exfiltration)"
	ReasonDNSExfilLabelLength = "dns label too long (possible exfiltration)"
	ReasonDNSExfilEntropy     = "dns label too random (possible exfiltration)"
	ReasonDNSExfilSubdomains  = "too many unique subdomains of one domain (possible exfiltration)"
)

var exfilReasons = [...]string{ReasonDNSExfilRate, ReasonDNSExfilLabelLength, ReasonDNSExfilEntropy, ReasonDNSExfilSubdomains}

// ExfilSuspect reports whether reason is one of the exfiltration guard's.
func ExfilSuspect(reason string) bool { return slices.Contains(exfilReasons[:], reason) }

// Reasons of the policy's name checks on connections.
const (
	// ReasonPublicResolver: a connection to a well-known public DNS
	// resolver's DoH host or address, or to port 853 (DoT), which would
	// take the workload's DNS past the agent's DNS server.
	ReasonPublicResolver = "encrypted dns to a public resolver (doh or dot)"
	// ReasonUnresolved: requireResolved and the workload did not obtain
	// the dialed address from DNS.
	ReasonUnresolved = "address not obtained from dns"
)

// clientCaused are the reasons that say the client misbehaved or left.
var clientCaused = [...]string{
	ReasonClientGone, ReasonNormalClose, ReasonMalformed, ReasonHeaderTooLarge,
	ReasonSmuggling, ReasonNotProxy, ReasonBadHello, ReasonClientHandshake,
	ReasonClientSilent, ReasonIncompleteHead, ReasonExpectation,
}

// ClientCaused reports whether reason says the client misbehaved or left
// rather than that Sluice or the upstream failed. A record with decision
// "error" and such a reason is the client's doing: its decision line is a
// warning, not an error (see DecisionLevel).
func ClientCaused(reason string) bool {
	for _, r := range clientCaused {
		if r == reason {
			return true
		}
	}
	return false
}

// ClientCausedReasons lists the reasons ClientCaused reports. The caller
// owns the slice.
func ClientCausedReasons() []string { return slices.Clone(clientCaused[:]) }
