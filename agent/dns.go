package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// The agent's DNS server. The hooks steer selected workloads' DNS (UDP
// and TCP to port 53, whatever resolver they asked) to it, on the
// intercept address; it names the workload from the kernel's record of
// the sender, applies the policy's dns rules, forwards what is allowed to
// the node's resolvers, answers from a TTL-bounded cache, records every
// query (kind "dns") and remembers which names resolved to which
// addresses for each workload (NamesFor), so that the proxy can judge a
// connection to a bare address by the names behind it.

// DNSOptions configure a DNSServer.
type DNSOptions struct {
	// Upstreams are the resolvers queries are forwarded to, tried in
	// order. Required.
	Upstreams []netip.AddrPort
	// DenyRcode answers a denied name: dns.RcodeNameError (NXDOMAIN,
	// the default when 0) or dns.RcodeRefused.
	DenyRcode int
	// CacheSize bounds the cached answers; 0 disables the cache.
	CacheSize int
	// NamesSize bounds the {workload, address} bindings kept for
	// NamesFor; 0 means 65536.
	NamesSize int
	// Policy holds the policy in force; its dns rules (a
	// policy.NameDecider) decide names. Nil allows every name.
	Policy *policy.Current
	// Identify names the workload that sent a query from peer over
	// network ("udp" or "tcp"). ServeDNS uses it; the agent identifies
	// the sender itself (from its kernel maps) and calls Answer. Nil:
	// every sender is unknown and refused.
	Identify func(peer netip.AddrPort, network string) (workload.Identity, error)
	// Audit receives one record per query. Nil: none.
	Audit audit.Sink
	// Log receives the server's diagnostics. Nil: discarded.
	Log *slog.Logger
	// Dialer dials the upstreams; in the agent its Control sets the
	// agent's mark, so the hooks never steer the forwarding back here.
	// Nil: net.Dialer{}.
	Dialer *net.Dialer
	// Timeout bounds one exchange with one upstream; 0 means 2s.
	Timeout time.Duration
	// Now is the clock of the cache and the bindings. Nil: time.Now.
	Now func() time.Time
	// Exfil is the exfiltration guard (dnsguard.go); nil: none.
	Exfil *ExfilOptions
}

// DNSServer answers workloads' queries; see the comment above DNSOptions.
// It is safe for concurrent use.
type DNSServer struct {
	o     DNSOptions
	udp   *dns.Client
	tcp   *dns.Client
	cache *dnsCache
	names *dnsNames
	exfil *exfilGuard // nil: no guard
	log   *slog.Logger
	// noOrigin limits the warnings about queries from senders Identify
	// could not name (each is still answered and audited).
	noOrigin logLimit
}

// RuleExfil is the rule of records the exfiltration guard decided.
const RuleExfil = "dns-exfiltration"

// upstreamUDPSize is the EDNS0 buffer size offered to upstreams (the DNS
// flag day 2020 value: no fragmentation on common paths).
const upstreamUDPSize = 1232

// NewDNSServer builds a server; nothing listens until it is served (the
// agent serves it on the intercept addresses, or Serve).
func NewDNSServer(o DNSOptions) (*DNSServer, error) {
	if len(o.Upstreams) == 0 {
		return nil, errors.New("new dns server: no upstream resolvers (agent.dns.upstreams empty and none in /etc/resolv.conf)")
	}
	if o.DenyRcode == 0 {
		o.DenyRcode = dns.RcodeNameError
	}
	if o.NamesSize <= 0 {
		o.NamesSize = 65536
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Dialer == nil {
		o.Dialer = &net.Dialer{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Audit == nil {
		o.Audit = audit.Discard{}
	}
	d := *o.Dialer
	d.Timeout = o.Timeout
	s := &DNSServer{
		o:     o,
		udp:   &dns.Client{Net: "udp", Dialer: &d, Timeout: o.Timeout, UDPSize: upstreamUDPSize},
		tcp:   &dns.Client{Net: "tcp", Dialer: &d, Timeout: o.Timeout},
		names: newDNSNames(o.NamesSize),
		log:   o.Log.With(audit.KeyComponent, "dns"),

		noOrigin: logLimit{every: noOriginLogEvery},
	}
	if o.CacheSize > 0 {
		s.cache = newDNSCache(o.CacheSize)
	}
	if o.Exfil != nil {
		s.exfil = newExfilGuard(*o.Exfil)
	}
	return s, nil
}

// ResolvConfUpstreams reads the nameservers of a resolv.conf file (the
// node's resolvers) as upstreams.
func ResolvConfUpstreams(path string) ([]netip.AddrPort, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("read resolvers from %s: %w", path, err)
	}
	var out []netip.AddrPort
	for _, s := range cc.Servers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue // a scoped address or a name: not ours to guess
		}
		ap, err := netip.ParseAddrPort(net.JoinHostPort(a.String(), cc.Port))
		if err != nil {
			continue
		}
		out = append(out, ap)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read resolvers from %s: no nameserver lines with an IP address; set agent.dns.upstreams", path)
	}
	return out, nil
}

// ServeDNS implements dns.Handler: the sender is named by Identify.
func (s *DNSServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	var id *workload.Identity
	if ap, network, ok := remote(w); ok && s.o.Identify != nil {
		if got, err := s.o.Identify(ap, network); err == nil {
			id = &got
		} else {
			if held, ok := s.noOrigin.allow(time.Now()); ok {
				s.log.Warn("dns query without origin", audit.KeyPeer, ap.String(), audit.KeyError, err, audit.KeySuppressed, held)
			}
		}
	}
	s.Answer(context.Background(), w, r, id)
}

// remote returns the sender of a query and the network it came over.
func remote(w dns.ResponseWriter) (netip.AddrPort, string, bool) {
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), "udp", true
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), "tcp", true
	}
	return netip.AddrPort{}, "", false
}

// Answer answers r, sent by the workload id (nil: unknown, refused), on
// w, and records it. It never panics on a malformed message.
func (s *DNSServer) Answer(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, id *workload.Identity) {
	start := s.o.Now()
	_, network, _ := remote(w)
	resp, rec := s.answer(ctx, r, id, network == "tcp")
	if network != "tcp" {
		resp.Truncate(clientUDPSize(r))
	}
	rec.Time, rec.Duration = start, s.o.Now().Sub(start)
	rec.Rcode = rcodeName(resp.Rcode)
	s.o.Audit.Record(rec) // before the answer: whoever sees it can see the record
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("write dns answer", audit.KeyError, err)
	}
}

// clientUDPSize is the largest UDP answer the client takes: its EDNS0
// buffer size, else 512.
func clientUDPSize(r *dns.Msg) int {
	if opt := r.IsEdns0(); opt != nil && opt.UDPSize() > dns.MinMsgSize {
		return int(opt.UDPSize())
	}
	return dns.MinMsgSize
}

// answer builds the response to r and its audit record (without time,
// duration and rcode).
func (s *DNSServer) answer(ctx context.Context, r *dns.Msg, id *workload.Identity, tcp bool) (*dns.Msg, *audit.Record) {
	rec := &audit.Record{Kind: audit.KindDNS}
	if id != nil {
		rec.Workload = *id
	}
	reply := func(rcode int) *dns.Msg {
		m := new(dns.Msg)
		m.SetRcode(r, rcode)
		m.RecursionAvailable = true
		return m
	}
	if r.Response || r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		rec.Decision, rec.Reason = audit.DecisionDeny, audit.ReasonDNSMalformed
		m := new(dns.Msg)
		m.SetRcodeFormatError(r)
		return m, rec
	}
	q := r.Question[0]
	rec.DNSName = strings.TrimSuffix(strings.ToLower(q.Name), ".")
	rec.QType = dns.TypeToString[q.Qtype]
	if rec.QType == "" {
		rec.QType = fmt.Sprintf("TYPE%d", q.Qtype)
	}
	if id == nil {
		rec.Decision, rec.Reason = audit.DecisionDeny, audit.ReasonDNSNoOrigin
		return reply(dns.RcodeRefused), rec
	}
	d := s.decide(id, q.Name)
	rec.Rule, rec.Reason = d.Rule, d.Reason
	switch {
	case d.Denied():
		rec.Decision = audit.DecisionDeny
		s.log.Warn("dns name denied", audit.KeyWorkload, id.Name(), audit.KeyDNSName, rec.DNSName, audit.KeyRule, d.Rule)
		return reply(s.o.DenyRcode), rec
	case d.WouldDeny:
		rec.Decision = audit.DecisionWouldDeny
	default:
		rec.Decision = audit.DecisionAllow
	}
	key := id.Key()
	if s.exfil != nil {
		if why := s.exfil.check(key, rec.DNSName, s.o.Now()); why != "" {
			if s.exfil.o.Enforce {
				rec.Decision, rec.Rule, rec.Reason = audit.DecisionDeny, RuleExfil, why
				s.log.Warn("dns query denied as exfiltration", audit.KeyWorkload, id.Name(), audit.KeyDNSName, rec.DNSName, audit.KeyReason, why)
				return reply(s.o.DenyRcode), rec
			}
			if rec.Decision == audit.DecisionAllow {
				rec.Decision, rec.Rule, rec.Reason = audit.DecisionWouldDeny, RuleExfil, why
			}
		}
	}
	resp, err := s.resolve(ctx, r, q)
	if err != nil {
		rec.Decision, rec.Reason, rec.Error = audit.DecisionError, audit.ReasonDNSUpstream, err.Error()
		rec.PolicyDecision, rec.PolicyRule, rec.PolicyReason = d.Verdict.String(), d.Rule, d.Reason
		return reply(dns.RcodeServerFailure), rec
	}
	rec.Answers = s.names.learn(id.StateKey(), rec.DNSName, resp, s.o.Now())
	// The client's own id, question and EDNS0 stance.
	resp.Id = r.Id
	resp.Question = r.Question
	if r.IsEdns0() == nil {
		stripOPT(resp)
	}
	return resp, rec
}

func (s *DNSServer) decide(id *workload.Identity, name string) policy.Decision {
	if s.o.Policy != nil {
		if nd, ok := s.o.Policy.Load().(policy.NameDecider); ok {
			return nd.DecideName(id, name)
		}
	}
	return policy.Decision{Verdict: policy.Allow, Rule: policy.RuleDefault, Reason: policy.ReasonDNSAllowed}
}

// resolve answers q from the cache or the upstreams. The message it
// returns is the caller's to change.
func (s *DNSServer) resolve(ctx context.Context, r *dns.Msg, q dns.Question) (*dns.Msg, error) {
	key := cacheKey(q, r.CheckingDisabled)
	now := s.o.Now()
	if s.cache != nil {
		if m, ok := s.cache.get(key, now); ok {
			return m, nil
		}
	}
	up := new(dns.Msg)
	up.SetQuestion(q.Name, q.Qtype)
	up.Question[0].Qclass = q.Qclass
	up.RecursionDesired = r.RecursionDesired
	up.CheckingDisabled = r.CheckingDisabled
	do := false
	if opt := r.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	up.SetEdns0(upstreamUDPSize, do)
	var errs []error
	for _, u := range s.o.Upstreams {
		m, err := s.exchange(ctx, up, u.String())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if s.cache != nil && (m.Rcode == dns.RcodeSuccess || m.Rcode == dns.RcodeNameError) {
			s.cache.put(key, m, now)
		}
		return m.Copy(), nil
	}
	return nil, errors.Join(errs...)
}

// exchange asks one upstream over UDP, and over TCP when the answer was
// truncated.
func (s *DNSServer) exchange(ctx context.Context, q *dns.Msg, addr string) (*dns.Msg, error) {
	m, _, err := s.udp.ExchangeContext(ctx, q, addr)
	if err == nil && !m.Truncated {
		return m, nil
	}
	if err != nil && !errors.Is(err, dns.ErrBuf) {
		return nil, fmt.Errorf("ask %s over udp: %w", addr, err)
	}
	m, _, err = s.tcp.ExchangeContext(ctx, q, addr)
	if err != nil {
		return nil, fmt.Errorf("ask %s over tcp: %w", addr, err)
	}
	return m, nil
}

func stripOPT(m *dns.Msg) {
	out := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, rr)
		}
	}
	m.Extra = out
}

func rcodeName(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", rc)
}

// NamesFor returns the names that id resolved to addr through this
// server and whose answers have not expired, sorted. The proxy can be
// given it (policy.Conn.Names, dns_name). Safe for concurrent use.
func (s *DNSServer) NamesFor(id workload.Identity, addr netip.Addr) []string {
	return s.names.lookup(id.StateKey(), addr.Unmap(), s.o.Now())
}
