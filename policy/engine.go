package policy

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/cache"
	"github.com/sluicehq/sluice/upstreams"
	"github.com/sluicehq/sluice/workload"
)

// Rule names of built-in decisions.
const (
	RuleDefault     = "default"
	RulePassthrough = "passthrough"
	// RuleUntrustedClient decides the pass-through of a connection whose
	// workload rejected Sluice's certificate for the host before
	// (tls.onUntrustedClient: passthrough).
	RuleUntrustedClient = "on-untrusted-client"
)

// Options are the collaborators of a compiled Engine.
type Options struct {
	// Limiters holds rate-limit state; share one across reloads so counters
	// survive them. Nil: a new store private to this Engine.
	Limiters *Limiters
	// Log receives the engine's own diagnostics. Nil: slog.Default().
	Log *slog.Logger
	// Now is the clock of local rate limiting. Nil: time.Now.
	Now func() time.Time
	// Getenv reads credentials from the environment. Nil: os.Getenv.
	Getenv func(string) string
}

// Engine is a compiled, immutable policy. Safe for concurrent use.
//
// Evaluation of a request: the address guard (SSRF) on the dialed
// addresses, then the first rule, in file order, whose workload selector
// and destination match; the default rule when none does. The rule's
// action applies in its mode (audit: allow and mark WouldDeny). An allowed
// request then goes through the rule's rate limit and carries its body
// size limits. A rule takes mode, limits and rateLimit from defaults when
// it leaves them unset; an inherited rateLimit counts in the default
// rule's buckets.
type Engine struct {
	passthrough hostSet
	// untrustedPass: tls.onUntrustedClient is passthrough.
	untrustedPass bool
	guardAudit    bool
	// metadataOnly limits the guard to cloud metadata (Compile(Spec)).
	metadataOnly bool
	allowCIDRs   []netip.Prefix
	rules        []*rule
	def          *rule
	hosts        []string // exact names the rules list (Hosts)
	dns          []*dnsRule
	lim          *Limiters
	creds        *Credentials
	now          func() time.Time
	log          *slog.Logger
	hideDenied   bool   // mcp.hideDenied
	tokenAud     string // mcp.tokenAudience, never ""
	onToolChange string // mcp.onToolChange, never ""
	upstreams    []upstreams.Spec
	res          resolution
}

type rule struct {
	name    string
	wl      workloadSel
	dst     destSel
	deny    bool
	audit   bool
	rl      *limiter
	maxReq  int64
	maxResp int64
	capture bool
	mcp     *mcpSel     // nil: the rule has no mcp block
	cache   *cache.Rule // the response cache, nil for none

	// What a request carries (content.go, credential.go).
	content *Inspector
	headers *HeaderRules
	logReq  int64
	logResp int64
	// captureSecrets: the capture keeps secrets (captureSecrets: true).
	captureSecrets bool
}

// Spec is the input of Compile for the first engine: host lists only.
// Kept for callers (and tests) that need a policy without a file.
type Spec struct {
	// Allow, when not empty, allows only these hosts ("*.x.com" wildcards).
	Allow []string
	// Deny denies these hosts; deny wins over allow.
	Deny []string
	// Passthrough hosts are relayed without decryption.
	Passthrough []string
}

var allowAll = func() *Engine {
	e, err := Compile(Spec{})
	if err != nil {
		panic(err)
	}
	return e
}()

// Compile builds an Engine from host lists: a deny rule for s.Deny, then
// an allow rule for s.Allow and a default deny when s.Allow is set. The
// address guard checks cloud metadata addresses only, so loopback and
// private upstreams pass (as they did before the full engine).
func Compile(s Spec) (*Engine, error) {
	p := &Policy{Version: 1, TLS: TLS{Passthrough: s.Passthrough}}
	if len(s.Deny) > 0 {
		p.Rules = append(p.Rules, Rule{Name: "deny-hosts", Action: "deny", Destinations: Destinations{Hosts: s.Deny}})
	}
	if len(s.Allow) > 0 {
		p.Rules = append(p.Rules, Rule{Name: "allow-hosts", Action: "allow", Destinations: Destinations{Hosts: s.Allow}})
		p.Defaults.Action = "deny"
	}
	e, err := New(p, Options{})
	if err != nil {
		return nil, err
	}
	e.metadataOnly = true
	e.res.allowDoH = true // host lists only: no built-in denies
	return e, nil
}

// New compiles a decoded policy (see Decode). p must have passed Decode's
// validation; New reports what it cannot compile.
func New(p *Policy, o Options) (*Engine, error) {
	e := &Engine{lim: o.Limiters, now: o.Now, log: o.Log, passthrough: newHostSet(p.TLS.Passthrough), untrustedPass: p.TLS.OnUntrustedClient == OnUntrustedPassthrough}
	if e.lim == nil {
		e.lim = NewLimiters(0)
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	e.log = e.log.With(audit.KeyComponent, audit.ComponentPolicy)
	e.hideDenied = p.MCP.HideDenied == nil || *p.MCP.HideDenied
	if e.onToolChange = p.MCP.OnToolChange; e.onToolChange == "" {
		e.onToolChange = ToolChangeOff
	}
	if e.tokenAud = p.MCP.TokenAudience; e.tokenAud == "" {
		e.tokenAud = TokenAudienceAudit
	}
	getenv := o.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	e.creds = compileCredentials(p.Credentials, getenv)
	global := p.Mode == "audit"
	defAudit := global
	if p.Defaults.Mode != "" {
		defAudit = p.Defaults.Mode == "audit"
	}
	e.guardAudit = global
	if p.SSRF.Mode != "" {
		e.guardAudit = p.SSRF.Mode == "audit"
	}
	for _, c := range p.SSRF.AllowCIDRs {
		pr, err := parseCIDR(c)
		if err != nil {
			return nil, &Problem{Path: "ssrf.allowCIDRs", Value: c, Msg: "not a CIDR"}
		}
		e.allowCIDRs = append(e.allowCIDRs, pr.Masked())
	}
	dl, err := limits(p.Defaults.Limits)
	if err != nil {
		return nil, err
	}
	e.dns = compileDNS(p.DNS, global)
	e.upstreams = compileUpstreams(p.Upstreams)
	if e.res, err = compileResolution(p.Resolution, global); err != nil {
		return nil, err
	}
	e.def = &rule{name: RuleDefault, deny: p.Defaults.Action == "deny", audit: defAudit, maxReq: dl[0], maxResp: dl[1], capture: p.Defaults.Capture}
	if p.Defaults.RateLimit != nil {
		e.def.rl = compileLimiter(RuleDefault, p.Defaults.RateLimit, e.lim)
	}
	for _, pr := range p.Rules {
		// A deny rule in audit mode lets requests through: they carry the
		// default limits.
		r := &rule{name: pr.Name, deny: pr.Action == "deny", audit: defAudit, maxReq: dl[0], maxResp: dl[1], capture: pr.Capture || p.Defaults.Capture}
		if pr.Mode != "" {
			r.audit = pr.Mode == "audit"
		}
		r.mcp = compileMCP(pr.MCP)
		r.wl = newWorkloadSel(pr.Workloads)
		d := pr.Destinations
		r.dst = destSel{hosts: newHostSet(d.Hosts), methods: d.Methods, paths: d.Paths}
		for _, port := range d.Ports {
			r.dst.ports = append(r.dst.ports, uint16(port))
		}
		for _, c := range d.CIDRs {
			cp, err := parseCIDR(c)
			if err != nil {
				return nil, &Problem{Path: "rules." + pr.Name + ".destinations.cidrs", Value: c, Msg: "not a CIDR"}
			}
			r.dst.cidrs = append(r.dst.cidrs, cp.Masked())
		}
		if !r.deny {
			if err := r.compileCarry(pr, fmt.Sprintf("rules[%d]", len(e.rules))); err != nil {
				return nil, err
			}
			l, err := limits(pr.Limits)
			if err != nil {
				return nil, err
			}
			r.maxReq, r.maxResp = pick(l[0], dl[0]), pick(l[1], dl[1])
			r.cache = compileCache(pr.Cache)
			if pr.RateLimit != nil {
				r.rl = compileLimiter(pr.Name, pr.RateLimit, e.lim)
			} else {
				r.rl = e.def.rl
			}
		}
		e.rules = append(e.rules, r)
		for _, h := range d.Hosts {
			if !isGlob(h) && !strings.HasPrefix(h, "*") && !slices.Contains(e.hosts, h) {
				e.hosts = append(e.hosts, h)
			}
		}
	}
	return e, nil
}

func pick(v, def int64) int64 {
	if v != 0 {
		return v
	}
	return def
}

func limits(l Limits) ([2]int64, error) {
	var out [2]int64
	for i, s := range []string{l.RequestBody, l.ResponseBody} {
		if s == "" {
			continue
		}
		n, err := ParseSize(s)
		if err != nil {
			return out, err
		}
		out[i] = n
	}
	return out, nil
}

// Hosts implements HostLister: the exact names of every rule's hosts, and
// of the pass-through list, each once.
func (e *Engine) Hosts() []string { return e.hosts }

// Limiters returns the rate-limit store the Engine uses.
func (e *Engine) Limiters() *Limiters { return e.lim }

// Upstreams returns the policy's upstream groups (UpstreamLister).
func (e *Engine) Upstreams() []upstreams.Spec { return e.upstreams }

// guard is the address guard: the first dialed address in a blocked range
// not exempted by ssrf.allowCIDRs or by an allow rule's cidrs. ok is false
// when an address is blocked; d then says why (WouldDeny in audit mode,
// except for cloud metadata, which is always denied).
func (e *Engine) guard(id *workload.Identity, t *target) (d Decision, ok bool) {
	ok = true
	for _, a := range t.addrs {
		reason := Classify(a)
		if reason == "" || (e.metadataOnly && reason != audit.ReasonMetadata) || inAny(e.allowCIDRs, a) || e.exempt(id, t, a) {
			continue
		}
		d := Decision{Verdict: Deny, Rule: RuleSSRF, Reason: reason}
		if e.guardAudit && reason != audit.ReasonMetadata {
			d.Verdict, d.WouldDeny = Allow, true
		}
		return d, false
	}
	return Decision{}, ok
}

// exempt reports whether an allow rule selecting the workload lists a
// range holding a, with its host and port criteria matching.
func (e *Engine) exempt(id *workload.Identity, t *target, a netip.Addr) bool {
	one := &target{host: t.host, port: t.port, addrs: []netip.Addr{a}}
	for _, r := range e.rules {
		if !r.deny && len(r.dst.cidrs) > 0 && r.wl.match(id) && r.dst.matchConn(one, false) {
			return true
		}
	}
	return false
}

// Connection implements Decider. Enforced denies known before HTTP
// (address guard, a rule without method or path criteria) reject the
// connection; rules that need HTTP leave the decision to Request.
func (e *Engine) Connection(_ context.Context, c *Conn) ConnDecision {
	id := &c.Workload
	t := &target{host: c.Host, port: c.Port, addrs: c.Addrs, names: c.Names}
	g, ok := e.guard(id, t)
	if !ok && g.Denied() {
		return ConnDecision{Action: Reject, Decision: g}
	}
	if rd, rok := e.res.check(c, c.Host, nil); !rok {
		if rd.Denied() {
			return ConnDecision{Action: Reject, Decision: rd}
		}
		if ok {
			g, ok = rd, false // recorded like the address guard in audit mode
		}
	}
	listed := c.TLS && c.Host != "" && e.passthrough.match(c.Host)
	untrusted := !listed && c.TLS && c.Host != "" && c.ClientUntrusted && e.untrustedPass
	pass := listed || untrusted
	var d Decision
	decided := false
	for _, r := range e.rules {
		if !r.wl.match(id) || !r.dst.matchConn(t, r.deny) {
			continue
		}
		if r.dst.perRequest() || r.mcp != nil {
			if pass {
				continue // methods and paths cannot apply to undecrypted TLS
			}
			if c.Opaque {
				// A flow that is not HTTP as far as Sluice can tell may
				// still be HTTP to the upstream: an allow that needs a
				// method or path can't be shown to apply, a deny can't be
				// shown not to.
				if !r.deny {
					continue
				}
				d, decided = r.access(false), true
				break
			}
			d = Decision{Reason: audit.ReasonPerRequest}
			decided = true
			break
		}
		d, decided = r.access(false), true
		break
	}
	if !decided {
		d = e.def.access(true)
	}
	if !ok && !d.Denied() && !d.WouldDeny {
		d.Rule, d.Reason, d.WouldDeny = g.Rule, g.Reason, true
	}
	d.Capture = e.captures(id, t)
	d.CaptureSecrets = d.Capture && e.captureSecrets(id, t)
	switch {
	case d.Denied():
		return ConnDecision{Action: Reject, Decision: d}
	case pass:
		switch {
		case d.WouldDeny:
		case untrusted:
			d.Rule, d.Reason = RuleUntrustedClient, audit.ReasonUntrustedPassthrough
		default:
			d.Rule, d.Reason = RulePassthrough, audit.ReasonPassthrough
		}
		return ConnDecision{Action: Passthrough, Decision: d}
	default:
		return ConnDecision{Action: Decrypt, Decision: d}
	}
}

// captures reports whether the connection's plaintext goes to the pcapng
// capture: capture is decided per connection, before HTTP, so a capture
// rule with methods or paths captures every connection to the hosts,
// ports and ranges it names.
func (e *Engine) captures(id *workload.Identity, t *target) bool {
	if e.def.capture {
		return true
	}
	for _, r := range e.rules {
		if r.capture && r.wl.match(id) && r.dst.matchConn(t, false) {
			return true
		}
	}
	return false
}

// Request implements Decider. It consumes rate-limit tokens: call it once
// per request.
func (e *Engine) Request(ctx context.Context, r *Request) Decision {
	c := r.Conn
	if c == nil {
		c = &Conn{}
	}
	id := &c.Workload
	host := r.Host
	if host == "" {
		host = c.Host
	}
	t := &target{host: host, port: c.Port, addrs: c.Addrs, names: c.Names, method: strings.ToUpper(r.Method), path: cleanPath(r.Path)}
	m := e.memoFor(c, t)
	var g Decision
	ok := m.guard == nil
	if !ok {
		g = *m.guard
	}
	if !ok && g.Denied() {
		return g
	}
	if rd, rok := e.res.checkWith(c, m.publicResolver, r); !rok {
		if rd.Denied() {
			return rd
		}
		if ok {
			g, ok = rd, false
		}
	}
	ru := e.match(id, t, r.MCP)
	d := ru.access(ru == e.def)
	d.Capture = ru.capture
	d.Credentials = e.creds
	if d.Denied() {
		return d
	}
	d.Content, d.Headers, d.LogRequestBody, d.LogResponseBody = ru.content, ru.headers, ru.logReq, ru.logResp
	d.MaxRequestBody, d.MaxResponseBody = ru.maxReq, ru.maxResp
	d.Cache = ru.cache
	if ru.rl != nil && !d.WouldDeny {
		var tool string // a rule with an mcp block counts per tool
		if ru.mcp != nil && r.MCP != nil {
			tool = r.MCP.Tool
		}
		ru.rl.apply(ctx, e.lim, e.log, id, host, tool, e.now(), ru.audit, &d)
	}
	if !ok && !d.Denied() && !d.WouldDeny {
		d.Rule, d.Reason, d.WouldDeny = g.Rule, g.Reason, true
	}
	return d
}

// connMemo is what Request works out from the request's connection
// alone, the same for every request on it: the address guard's verdict
// (guard) and whether the destination is a public resolver
// (isPublicResolver). Both cost more than the rest of an allowed
// request's decision, so they are kept in the Conn for its next
// requests. A memo holds for the Conn and the engine that made it, and
// for the request's host; the Conn's fields do not change once it is
// given to a Decider (Conn), and its port, addresses and names are
// checked again anyway, as cheap as they are.
type connMemo struct {
	c              *Conn
	e              *Engine
	host           string
	port           uint16
	addrs          []netip.Addr
	names          []string
	guard          *Decision // nil: the guard passed; a pointer keeps an idle connection's memo small
	publicResolver bool
}

// memoFor is c's memo for t (c's request, at connection level), made
// and kept in c when c has none that holds.
func (e *Engine) memoFor(c *Conn, t *target) *connMemo {
	if m := c.memo.Load(); m != nil && m.c == c && m.e == e && m.host == t.host && m.port == t.port &&
		sameSlice(m.addrs, t.addrs) && sameSlice(m.names, t.names) {
		return m
	}
	m := &connMemo{c: c, e: e, host: t.host, port: t.port, addrs: t.addrs, names: t.names}
	if g, ok := e.guard(&c.Workload, t); !ok {
		m.guard = &g
	}
	m.publicResolver = isPublicResolver(t.host, t.names, t.addrs, t.port)
	c.memo.Store(m)
	return m
}

// sameSlice reports whether a and b are the same slice: the same length
// over the same memory (it does not compare the elements: a Conn's
// slices are not changed in place).
func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// match is the first rule selecting the workload and matching the
// request (call: its MCP message, nil when it is not MCP), else the
// default rule.
func (e *Engine) match(id *workload.Identity, t *target, call *MCPCall) *rule {
	for _, x := range e.rules {
		if x.wl.match(id) && x.dst.matchConn(t, x.deny) && x.dst.matchRequest(t) && x.mcp.match(call, x.deny) {
			return x
		}
	}
	return e.def
}

// access is the rule's own verdict in its mode.
func (r *rule) access(isDefault bool) Decision {
	d := Decision{Rule: r.name, Reason: audit.ReasonAllowedByRule}
	if isDefault {
		d.Reason = audit.ReasonAllowedByDefault
	}
	if !r.deny {
		return d
	}
	d.Reason = audit.ReasonDeniedByRule
	if isDefault {
		d.Reason = audit.ReasonDeniedByDefault
	}
	if r.audit {
		d.WouldDeny = true
	} else {
		d.Verdict = Deny
	}
	return d
}

// compileCarry compiles what an allow rule does with what a request
// carries: content inspection, header changes, body logging.
func (r *rule) compileCarry(pr Rule, at string) error {
	var err error
	if r.content, err = compileContent(pr.Content, at); err != nil {
		return err
	}
	r.headers = compileHeaders(pr.Headers)
	r.captureSecrets = pr.CaptureSecrets
	if lb := pr.LogBodies; lb != nil {
		for _, f := range []struct {
			key, v string
			n      *int64
		}{{"request", lb.Request, &r.logReq}, {"response", lb.Response, &r.logResp}} {
			if f.v == "" {
				continue
			}
			if *f.n, err = ParseSize(f.v); err != nil {
				return &Problem{Path: at + ".logBodies." + f.key, Value: f.v, Msg: err.Error()}
			}
		}
	}
	return nil
}

// Credentials returns the policy's credentials (nil when it has none).
func (e *Engine) Credentials() *Credentials { return e.creds }

// captureSecrets reports whether the capture of a connection keeps its
// secrets: only when every capturing rule that matches it says
// captureSecrets (and the default rule does not capture).
func (e *Engine) captureSecrets(id *workload.Identity, t *target) bool {
	if e.def.capture {
		return false
	}
	keep := false
	for _, r := range e.rules {
		if r.capture && r.wl.match(id) && r.dst.matchConn(t, false) {
			if !r.captureSecrets {
				return false
			}
			keep = true
		}
	}
	return keep
}
