package mitm

import "github.com/sluicehq/sluice/audit"

// Fixed reasons of answers Sluice gives itself; tests and logs assert on
// them. The detail goes to the record's Error and the answer's body.
const (
	reasonUnreachable     = "upstream unreachable"
	reasonVerify          = "upstream certificate verification failed"
	reasonUpstreamTLS     = "upstream TLS handshake failed"
	reasonTimeout         = "upstream response header timeout"
	reasonUpstreamError   = "upstream error"
	reasonHeaderTooLarge  = "request header fields too large"
	reasonMalformed       = "malformed request"
	reasonSmuggling       = "both Content-Length and Transfer-Encoding"
	reasonReqTooLarge     = "request body exceeds limit"
	reasonRespTooLarge    = "response body exceeds limit"
	reasonClientGone      = "client gone"
	reasonNotProxy        = "not a proxy request"
	reasonBadHello        = "malformed client hello"
	reasonClientHandshake = "client TLS handshake failed"
	reasonClientSilent    = "client sent nothing"
	reasonTooMany         = "too many connections"
	reasonMisdirected     = "request host differs from the connection's host"
	reasonSNIMismatch     = "SNI differs from the CONNECT host"
	// reasonPassthroughUnbound: a pass-through SNI that does not resolve to
	// the destination address is decrypted instead.
	reasonPassthroughUnbound = "pass-through SNI does not resolve to the destination; decrypted"

	sourceSluice   = audit.SourceSluice
	sourceUpstream = audit.SourceUpstream
	sourceClient   = audit.SourceClient
)
