package policy

import (
	"context"
	"strings"
)

// Engine is a compiled, immutable policy. Safe for concurrent use.
//
// This first engine knows host allow and deny lists and the TLS
// pass-through list; the full rule model (workload selectors, methods,
// paths, CIDRs, modes, rate and size limits) replaces its internals
// without changing the methods the proxy calls.
type Engine struct {
	allow       []string
	deny        []string
	passthrough []string
}

// Spec is the input of Compile for the first engine.
type Spec struct {
	// Allow, when not empty, allows only these hosts ("*.x.com" wildcards).
	Allow []string
	// Deny denies these hosts; deny wins over allow.
	Deny []string
	// Passthrough hosts are relayed without decryption.
	Passthrough []string
}

var allowAll = &Engine{}

// Compile builds an Engine from s.
func Compile(s Spec) (*Engine, error) {
	return &Engine{allow: s.Allow, deny: s.Deny, passthrough: s.Passthrough}, nil
}

// Connection decides what to do with a connection before any HTTP.
func (e *Engine) Connection(_ context.Context, c *Conn) ConnDecision {
	if d := e.host(c.Host); d.Denied() {
		return ConnDecision{Action: Reject, Decision: d}
	}
	if c.TLS && matchAny(e.passthrough, c.Host) {
		return ConnDecision{Action: Passthrough, Decision: Decision{Rule: "passthrough", Reason: "host is on the pass-through list"}}
	}
	return ConnDecision{Action: Decrypt, Decision: Decision{Rule: "default", Reason: "allowed by default"}}
}

// Request decides one HTTP request.
func (e *Engine) Request(_ context.Context, r *Request) Decision {
	return e.host(r.Host)
}

func (e *Engine) host(h string) Decision {
	if matchAny(e.deny, h) {
		return Decision{Verdict: Deny, Rule: "deny-hosts", Reason: "host is denied"}
	}
	if len(e.allow) > 0 && !matchAny(e.allow, h) {
		return Decision{Verdict: Deny, Rule: "allow-hosts", Reason: "host is not on the allow list"}
	}
	return Decision{Rule: "default", Reason: "allowed by default"}
}

// MatchHost reports whether host matches pattern: an exact name, or
// "*.example.com" for any name below example.com (not example.com itself).
// Comparison is case-insensitive and ignores a trailing dot.
func MatchHost(pattern, host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	pattern = strings.TrimSuffix(strings.ToLower(pattern), ".")
	if suffix, ok := strings.CutPrefix(pattern, "*"); ok {
		return strings.HasSuffix(host, suffix) && len(host) > len(suffix)
	}
	return host == pattern
}

func matchAny(patterns []string, host string) bool {
	for _, p := range patterns {
		if MatchHost(p, host) {
			return true
		}
	}
	return false
}
