package mcp

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
)

// Token passthrough (the MCP security best practices' "token
// passthrough" anti-pattern): an MCP server that forwards the token its
// client gave it to another service lets that token act where it was
// never meant to. A JWT says where it is meant to act in its aud claim;
// Sluice reads that claim from the Authorization header of every request
// it sees and compares it with the host the request goes to.
//
// Only the payload is decoded: the signature is not checked. Sluice holds
// none of the issuers' keys, and needs none: the question is not whether
// the token is genuine (the receiving service decides that) but whether
// the workload sends it somewhere its own claims say it is not for.

// BearerAudience reads the aud claim of a bearer JWT in an Authorization
// header value: "Bearer" (any case), a JWS compact serialization
// (three base64url parts, or an unsecured one whose signature part is
// empty), and a JSON payload with aud, a string or a list of strings.
// ok is false for anything else (no bearer, an opaque token, a JWT
// without aud), which is not checked.
func BearerAudience(authorization string) (aud []string, ok bool) {
	scheme, tok, found := strings.Cut(strings.TrimSpace(authorization), " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return nil, false
	}
	tok = strings.TrimSpace(tok)
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" {
		return nil, false // an opaque token, or a JWE (five parts)
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil, false
	}
	var claims map[string]json.RawMessage
	if json.Unmarshal(payload, &claims) != nil {
		return nil, false
	}
	raw, has := claims["aud"]
	raw = bytes.TrimSpace(raw)
	if !has || len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, false
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		if one == "" {
			return nil, false
		}
		return []string{one}, true
	}
	var list []string
	if json.Unmarshal(raw, &list) != nil {
		return nil, false
	}
	list = slices.DeleteFunc(list, func(a string) bool { return a == "" })
	return list, len(list) > 0
}

// AudienceNames reports whether one of aud names host: an audience that
// is the host itself (any case, a trailing dot ignored) or an absolute
// URL whose host (without port) is it.
func AudienceNames(aud []string, host string) bool {
	host = normHost(host)
	if host == "" {
		return false
	}
	for _, a := range aud {
		if normHost(a) == host {
			return true
		}
		if u, err := url.Parse(a); err == nil && u.Scheme != "" && u.Host != "" && normHost(u.Hostname()) == host {
			return true
		}
	}
	return false
}

func normHost(h string) string { return strings.ToLower(strings.TrimSuffix(h, ".")) }
