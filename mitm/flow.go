package mitm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/pcap"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// flow is one client connection after the peek.
type flow struct {
	p     *Proxy
	ctx   context.Context
	id    workload.Identity
	dst   Destination
	start time.Time
	// listener is the explicit listener that accepted the connection,
	// nil for any other (explicit): requests name their target, and a
	// CONNECT detaches its tunnel from it.
	listener *explicitListener
	tunnel   bool // inside CONNECT

	sni     string
	alpn    string // negotiated with the client
	h2c     bool   // plain HTTP/2 with prior knowledge
	tlsMode string

	fixed *target // TLS decrypt and CONNECT: the one destination

	mu      sync.Mutex
	targets map[string]*target // plain HTTP: per host

	h1 *h1Conn // HTTP/1.1 framing tracker; nil for HTTP/2

	requests atomic.Int64 // requests served (HTTP flows)

	dnsNames atomic.Pointer[dnsNames] // setDNSName's memo for the records

	slotMu sync.Mutex
	slot   string // the explicit listener's connection slot key

	finMu     sync.Mutex
	handedOff bool     // the shared HTTP/1.1 server owns the connection
	finished  bool     // and has closed it
	fins      []func() // clean-up waiting for that close
}

// finally runs fn when the flow's connection is done: now, unless the
// connection was handed to the shared HTTP/1.1 server (handOff) and is
// still open; then when it is closed (finish), in the order given.
func (f *flow) finally(fn func()) {
	f.finMu.Lock()
	if f.handedOff && !f.finished {
		f.fins = append(f.fins, fn)
		f.finMu.Unlock()
		return
	}
	f.finMu.Unlock()
	fn()
}

// handOff marks the connection as the shared server's: clean-up passed
// to finally waits for finish.
func (f *flow) handOff() {
	f.finMu.Lock()
	f.handedOff = true
	f.finMu.Unlock()
}

// finish runs the clean-up waiting for the handed-over connection's
// close; what finally is given afterwards runs at once.
func (f *flow) finish() {
	f.finMu.Lock()
	fins := f.fins
	f.fins, f.finished = nil, true
	f.finMu.Unlock()
	for _, fn := range fins {
		fn()
	}
}

// explicit reports whether the explicit listener accepted the
// connection: its requests name their target.
func (f *flow) explicit() bool { return f.listener != nil }

// rekeySlot moves the explicit connection's slot to key.
func (f *flow) rekeySlot(key string) (ok bool, why string) {
	f.slotMu.Lock()
	defer f.slotMu.Unlock()
	if ok, why = f.p.slots.rekey(f.slot, key); ok {
		f.slot = key
	}
	return ok, why
}

// slotKey is the slot the explicit connection holds.
func (f *flow) slotKey() string {
	f.slotMu.Lock()
	defer f.slotMu.Unlock()
	return f.slot
}

// target is one upstream destination of a flow with its Connection
// decision and, once dialed, its pool.
type target struct {
	host   string // name for policy, Host/SNI; may be empty
	port   uint16
	conn   *policy.Conn
	cd     policy.ConnDecision
	useTLS bool
	alpn   string // negotiated with the upstream
	// unbound: the request's host does not resolve to the original
	// destination, so the policy judged the address (transparent HTTP).
	unbound bool

	mu    sync.Mutex
	pool  *upstreamPool
	addr  netip.AddrPort
	spare net.Conn
	err   error // permanent upstream failure (TLS targets)
	fail  string

	addrStr atomic.Pointer[memo[netip.AddrPort, string]]
	hostIP  atomic.Pointer[memo[string, bool]]
	// urlHostMemo: see urlHost.
	urlHostMemo atomic.Pointer[memo[urlHostKey, string]]
}

func (p *Proxy) decider() policy.Decider { return p.deps.Policy.Load() }

// addrs returns the addresses a destination may be dialed at: the original
// destination, the IP literal, or the DNS answers for host.
func (f *flow) addrs(host string) ([]netip.Addr, error) {
	if f.dst.Addr.IsValid() {
		return []netip.Addr{f.dst.Addr.Addr()}, nil
	}
	if f.dst.Host != "" {
		host = f.dst.Host // CONNECT: dial what the client asked the proxy for
	}
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	if host == "" {
		return nil, errors.New("resolve destination: no host and no address")
	}
	ctx, cancel := context.WithTimeout(f.ctx, f.p.cfg.DialTimeout.D())
	defer cancel()
	as, err := f.p.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	if len(as) == 0 {
		return nil, fmt.Errorf("resolve %s: no addresses", host)
	}
	out := make([]netip.Addr, len(as))
	for i, a := range as {
		out[i] = a.Unmap()
	}
	return out, nil
}

// newTarget asks the policy about a destination of this flow. A resolution
// failure becomes the target's permanent error.
func (f *flow) newTarget(host string, port uint16, tlsFlow bool) *target {
	t := &target{host: host, port: port, useTLS: tlsFlow}
	addrs, err := f.addrs(host)
	if err != nil {
		t.err, t.fail = err, audit.ReasonUpstreamUnreachable
	}
	t.conn = &policy.Conn{Workload: f.id, Host: host, Addrs: addrs, Port: t.port, TLS: tlsFlow}
	if (host == "" || isIPLiteral(host)) && len(addrs) > 0 {
		t.conn.Names = f.namesFor(addrs[0])
	}
	if f.dst.Addr.IsValid() { // transparent: the workload chose the address
		names, known := f.p.resolvedNames(f.id, f.dst.Addr.Addr())
		t.conn.Unresolved = known && len(names) == 0
	}
	if tlsFlow {
		t.conn.ClientUntrusted = f.p.untrusted.has(&f.id, host, port)
	}
	t.cd = f.p.decider().Connection(f.ctx, t.conn)
	return t
}

// record starts a record of kind at t with what the flow knows.
func (f *flow) record(kind string, t time.Time) *audit.Record {
	r := new(audit.Record)
	f.startRecord(r, kind, t)
	return r
}

// startRecord fills r, a zero Record (a new one, or one allocated with
// an Exchange), with the start of a record of kind at t: what the flow
// knows; the fields it does not set stay zero.
func (f *flow) startRecord(r *audit.Record, kind string, t time.Time) {
	// One statement each: a tuple assignment copies the identity (over
	// 200 bytes) through a temporary on the stack before the record.
	r.Time, r.Kind = t, kind
	r.Workload = f.id
	r.Host, r.Port = f.dst.Host, f.dst.Port
	r.SNI, r.TLS, r.ALPN = f.sni, f.tlsMode, f.alpn
	if f.dst.Addr.IsValid() {
		r.DstIP = f.dst.Addr.Addr()
	}
}

// l4Record starts the record of this flow at L4.
func (f *flow) l4Record() *audit.Record {
	r := f.record(audit.KindL4, f.start)
	r.Duration = time.Since(f.start)
	return r
}

func decisionString(d policy.Decision) string {
	switch {
	case d.Denied():
		return audit.DecisionDeny
	case d.WouldDeny:
		return audit.DecisionWouldDeny
	default:
		return audit.DecisionAllow
	}
}

// release closes the target's first upstream connection if no request
// took it.
func (t *target) release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pool != nil && t.spare != nil {
		t.pool.reclaim(t.spare)
		t.spare = nil
	}
}

// ensure dials a plain-HTTP target on first use.
func (t *target) ensure(f *flow) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil || t.pool != nil {
		return t.err
	}
	alpn := ""
	if f.h2c {
		alpn = "h2c"
	}
	for _, a := range t.conn.Addrs { // a pool another connection made
		k := poolKey{host: t.host, addr: netip.AddrPortFrom(a, t.port), alpn: alpn}
		if up, ok := f.p.pools.peek(k); ok {
			t.pool, t.addr = up, k.addr
			return nil
		}
	}
	c, addr, err := f.p.dialAny(f.ctx, t.conn.Addrs, t.port)
	if err != nil {
		t.fail = audit.ReasonUpstreamUnreachable
		return fmt.Errorf("upstream %s unreachable: %w", hostOr(t.host, t.conn.Addrs), err)
	}
	t.addr = addr
	t.pool = f.p.pools.get(poolKey{host: t.host, addr: addr, alpn: alpn})
	t.spare = c
	t.pool.offer(c)
	return nil
}

func hostOr(h string, addrs []netip.Addr) string {
	if h != "" || len(addrs) == 0 {
		return h
	}
	return addrs[0].String()
}

func (f *flow) releaseTargets() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, t := range f.targets {
		t.release()
	}
	if f.fixed != nil && !f.fixed.useTLS {
		f.fixed.release()
	}
}

// memo is a value computed from a key, kept for as long as the key stays
// the same (see target.addrString and target.connHostIsIP).
type memo[K comparable, V any] struct {
	k K
	v V
}

// addrString is a.String(), remembered per target: a request of a
// keep-alive connection need not format its upstream address anew.
func (t *target) addrString(a netip.AddrPort) string {
	if m := t.addrStr.Load(); m != nil && m.k == a {
		return m.v
	}
	s := a.String()
	t.addrStr.Store(&memo[netip.AddrPort, string]{a, s})
	return s
}

// connHostIsIP is isIPLiteral(t.conn.Host), remembered per target.
func (t *target) connHostIsIP() bool {
	h := t.conn.Host
	if m := t.hostIP.Load(); m != nil && m.k == h {
		return m.v
	}
	ip := isIPLiteral(h)
	t.hostIP.Store(&memo[string, bool]{h, ip})
	return ip
}

// tap mirrors the client side plaintext of c into a capture flow when
// capture is on and the policy's decision for the connection's destination
// asks for it (a rule with capture: true); h2: c speaks HTTP/2.
func (f *flow) tap(c net.Conn, h2 bool) net.Conn {
	if f.p.deps.Capture == nil || f.fixed == nil || !f.fixed.cd.Capture {
		return c
	}
	server, host := f.dst.Addr, f.dst.Host
	if f.fixed.addr.IsValid() {
		server = f.fixed.addr
	}
	if f.fixed.host != "" {
		host = f.fixed.host
	}
	if f.sni != "" {
		host = f.sni
	}
	m := pcap.FlowMeta{Client: f.id.Client, Server: server, Workload: f.id.Name(), Host: host}
	if !f.fixed.cd.CaptureSecrets {
		m.Redact = newCaptureRedactor(h2)
	}
	fl := f.p.deps.Capture.NewFlow(m)
	return fl.Conn(c)
}
