package mitm

import (
	"net/http"
	"strings"
)

// isHopHeader reports whether k (canonical) is one of the RFC 9110
// 7.6.1 connection-specific fields or a proxy-only one named there;
// Connection-listed names and other Proxy-* fields are hop-by-hop too
// (removeHopHeaders, h1Dropped).
func isHopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// removeHopHeaders strips hop-by-hop fields from h. TE is kept when it
// says "trailers". When keepWS is set and the message asks for a
// WebSocket upgrade, the Upgrade value is returned for the caller to
// re-add.
func removeHopHeaders(h http.Header, keepWS bool) (upgrade string) {
	if keepWS && wantsWebSocket(h) {
		upgrade = headerGet(h, "Upgrade")
	}
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	te := headerHasToken(h, "Te", "trailers")
	for k := range h {
		if isHopHeader(k) || hasProxyPrefix(k) {
			delete(h, k)
		}
	}
	if te {
		h.Set("Te", "trailers")
	}
	return upgrade
}

// hasHopField reports whether removeHopHeaders(h, false) may change h:
// every field it removes is a hop-by-hop one or a Proxy-* one, or one
// that Connection (itself hop-by-hop) lists. Most headers have none, and
// this one pass costs less than removeHopHeaders' lookups.
func hasHopField(h http.Header) bool {
	for k := range h {
		if isHopHeader(k) || hasProxyPrefix(k) {
			return true
		}
	}
	return false
}

// hasProxyPrefix reports whether strings.ToLower(k) starts with "proxy-"
// without allocating: only ASCII letters lower-case into that prefix.
func hasProxyPrefix(k string) bool {
	const prefix = "proxy-"
	if len(k) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := k[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h[name] {
		for _, t := range strings.Split(v, ",") {
			t, _, _ = strings.Cut(t, ";")
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// wantsWebSocket reports whether h asks for a WebSocket upgrade.
func wantsWebSocket(h http.Header) bool {
	return strings.EqualFold(headerGet(h, "Upgrade"), "websocket") && headerHasToken(h, "Connection", "upgrade")
}

// headerGet is h.Get(key) for a key in canonical form (a constant), with
// no canonicalization: net/http's scans the key on every call, and the
// calls on each request's path were 2% of the proxy's CPU under wrk.
func headerGet(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}
