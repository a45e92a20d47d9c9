package mcp

import (
	"errors"
	"net/url"
	"strings"
)

// EventEndpoint is the SSE event type by which a server of the HTTP+SSE
// transport (revision 2024-11-05) names, on its GET stream, the URI the
// client must POST its messages to.
const EventEndpoint = "endpoint"

// MaxEndpointLen bounds the data of an endpoint event Sluice reads.
const MaxEndpointLen = 4096

// Endpoint is where the client of an HTTP+SSE session POSTs its messages.
type Endpoint struct {
	// Host is the endpoint's host (name or address, without port) when
	// the event gave an absolute URI; empty when it is on the stream's
	// own host (a relative URI, the usual case).
	Host string
	// RequestURI is the path and query the POSTs carry, escaped as on
	// the wire (url.URL.RequestURI).
	RequestURI string
	// Session is the session the URI names in its query (sessionId in
	// the TypeScript SDK, session_id in the Python SDK); empty when none.
	Session string
}

// ErrEndpoint is returned for endpoint event data that is no URI an MCP
// client would POST to.
var ErrEndpoint = errors.New("not an MCP endpoint URI")

// ParseEndpoint reads the data of an endpoint event, a URI reference
// resolved against the URL of the stream that carried it (base, whose
// path is used; its host is not). Only http and https URIs are endpoints.
func ParseEndpoint(base *url.URL, data []byte) (Endpoint, error) {
	s := strings.TrimSpace(string(data))
	if s == "" || len(s) > MaxEndpointLen || strings.ContainsAny(s, " \t\r\n") {
		return Endpoint{}, ErrEndpoint
	}
	ref, err := url.Parse(s)
	if err != nil {
		return Endpoint{}, ErrEndpoint
	}
	b := url.URL{Path: "/"}
	if base != nil {
		b = url.URL{Path: base.Path, RawPath: base.RawPath}
	}
	u := b.ResolveReference(ref)
	var e Endpoint
	if ref.IsAbs() || ref.Host != "" {
		if u.Scheme != "" && u.Scheme != "http" && u.Scheme != "https" {
			return Endpoint{}, ErrEndpoint
		}
		if e.Host = strings.ToLower(u.Hostname()); e.Host == "" {
			return Endpoint{}, ErrEndpoint
		}
	}
	e.RequestURI = u.RequestURI()
	if !strings.HasPrefix(e.RequestURI, "/") || strings.HasPrefix(e.RequestURI, "//") {
		return Endpoint{}, ErrEndpoint
	}
	q := u.Query()
	for _, k := range []string{"sessionId", "session_id"} {
		if v := q.Get(k); v != "" {
			e.Session = v
			break
		}
	}
	return e, nil
}
