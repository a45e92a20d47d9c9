// Package mitm is the intercepting proxy: it takes an accepted client
// connection whose original destination and workload are known, peeks at the
// first bytes (TLS ClientHello, plain HTTP, or other TCP), asks the policy
// what to do, and decrypts, passes through, relays or rejects. Decrypted and
// plain HTTP runs through the request pipeline and is forwarded, streaming,
// over HTTP/1.1 or HTTP/2 to the real destination. It also serves the
// explicit proxy listener (CONNECT and absolute-form requests), which feeds
// the same path.
//
// A connection's walk, one file a step:
//
//	proxy.go        Handle: a slot (slots.go: in all and per workload), then serve
//	sniff.go        peek the first bytes: TLS ClientHello (clienthello.go),
//	                HTTP/1.x, HTTP/2 prior knowledge, or other TCP
//	tls.go          the connection's decision; decrypt: dial and verify the
//	                upstream first, mirror its ALPN, terminate the client's TLS
//	flow.go         the flow and its targets (destinations with their
//	                Connection decisions, upstream pools); binding.go: which
//	                names are bound to what is dialed
//	exchange.go     serve HTTP/1.1 or HTTP/2; per request, run the chain
//	stage_*.go      the chain, below
//	forward.go      send upstream, response stages, stream back, trailers
//	hop.go          hop-by-hop headers, both ways
//	emit.go         the audit record and the decision log line
//
// Flows that are not HTTP leave sniff.go or tls.go for relay.go (L4 relay
// with an L4 record); on ports other than 80 and 443, sniff.go races the
// upstream for the first byte, so a server that speaks first is heard at
// once. upstream.go holds the upstream pools (h1upstream.go: HTTP/1.1
// requests sent and answered on the serving goroutine, h1write.go writes
// them), h1.go the HTTP/1.1 framing tracker, explicit.go the explicit
// listener.
//
// The per-request chain (Proxy.chain in stage.go), in order:
//
//	framing    431 for a header block over proxy.maxHeaderBytes; 400 and
//	           close for Content-Length with Transfer-Encoding (smuggling)
//	connect    explicit proxy only: CONNECT opens a tunnel served like a
//	           transparent connection
//	target     the request's destination; host binding: 421 for a request
//	           naming another host than its TLS connection's
//	connection the connection's decision (SSRF guard, hosts denied before
//	           HTTP): 403 for every request of a rejected connection
//	mcp        MCP over Streamable HTTP and HTTP+SSE: a bounded prefix of
//	           a JSON POST read and replayed, its JSON-RPC method and tool
//	           for the policy; 400 for a mirrored header that disagrees
//	           with the body; event streams (POST answers, GET streams)
//	           read as they pass: tools/list answers filtered, tools'
//	           changes reported, an HTTP+SSE POST's record held until its
//	           answer arrives on the stream (mcp_session.go)
//	policy     access rules in their mode, SSRF guard, rate limits (429);
//	           MCP requests get a JSON-RPC error instead
//	toolchange calls of MCP tools changed since acknowledged
//	           (mcp.onToolChange): a JSON-RPC error -32031, or would_deny
//	size       413/417 for request bodies over the limit, 502 or a cut
//	           stream for responses over it
//	content    content rules on headers, URL and body (secret detectors,
//	           patterns): 400 for block, a same-length marker for redact,
//	           detector names in the record; gzip/deflate decompressed
//	bodylog    the first bytes of request and response bodies in the
//	           record, every detector's matches redacted (logBodies)
//	credentials masked placeholders swapped for their hosts (403 and an
//	           exfiltration record elsewhere), ${cred:NAME} injection and
//	           the rule's request and response header changes
//	cache      the rule's response cache: a fresh stored response answers
//	           (X-Cache-Status: Hit), a stale one is revalidated, a
//	           storable one is stored while it streams
//	balance    upstream groups (policy upstreams): a healthy target of the
//	           destination's group, its address judged by the SSRF guard
//	           (403), 503 when none is healthy; failures feed passive
//	           ejection, idempotent requests retry on another target
//	upstream   the upstream connection: 502 with the reason when it failed
//
// Each stage is a Stage in its own file (a ResponseStage also sees the
// response head and may wrap its body); the exchange runs the chain and
// applies the result, and holds no feature logic of its own.
//
// Choices a user may want to know:
//   - Nothing identifying is added to upstream requests: no Via, no
//     X-Forwarded-*, no default User-Agent or Accept-Encoding. Hop-by-hop
//     headers (RFC 9110 7.6.1) are removed both ways; WebSocket upgrades keep
//     Upgrade and Connection: Upgrade.
//   - The proxy dials only the addresses the policy saw (the original
//     destination in transparent mode, the DNS answers in explicit mode); it
//     never resolves a name a second time.
//   - Bytes that are neither a TLS ClientHello nor an HTTP request line
//     (HTTP/1.x, or the HTTP/2 prior-knowledge preface) are "other TCP" and
//     are relayed (after a Connection decision) with an L4 record. A TLS
//     record whose ClientHello does not parse is closed with an error
//     record. A client that sends nothing within PeekTimeout is taken for a
//     server-speaks-first protocol and relayed.
//   - Inside decrypted TLS, a client that negotiated h2 or http/1.1 is HTTP.
//     Otherwise its first bytes decide: HTTP is served per request, anything
//     else is relayed decrypted with an L4 record; if neither side speaks
//     within PeekTimeout, the first to speak decides (an HTTP server never
//     speaks first, so waiting can't take HTTP around per-request policy).
//   - An upstream that can't be reached or verified still gets the client's
//     TLS handshake completed, and every request is answered 502 with a JSON
//     body naming the reason: never a silent downgrade.
//   - Plain HTTP is decided per Host: the Connection decision is made at the
//     first request for each host (the Host header in transparent mode, the
//     absolute-form URL in explicit mode); a rejected connection answers each
//     of its requests with the deny, without calling Decider.Request.
package mitm
