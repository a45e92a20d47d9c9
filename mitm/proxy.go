// Package mitm is the intercepting proxy: it takes an accepted client
// connection whose original destination and workload are known, peeks at the
// first bytes (TLS ClientHello, plain HTTP, or other TCP), asks the policy
// what to do, and decrypts, passes through, relays or rejects. Decrypted and
// plain HTTP runs through the request pipeline and is forwarded, streaming,
// over HTTP/1.1 or HTTP/2 to the real destination. It also serves the
// explicit proxy listener (CONNECT and absolute-form requests), which feeds
// the same path.
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

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/pcap"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// Destination is where the client meant to go; the agent names it from
// the kernel's record of the connect.
type Destination = workload.Destination

// Resolver resolves explicit-mode destination names. *net.Resolver
// implements it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Deps are the collaborators of a Proxy. CA is required; a nil Policy
// allows everything, a nil Audit discards records, a nil Log is
// slog.Default(), and the rest are optional.
type Deps struct {
	CA     *ca.Authority
	Policy *policy.Current
	Audit  audit.Sink
	Log    *slog.Logger
	// Dialer dials upstreams; its Control sets the agent's SO_MARK so the
	// hooks never redirect the proxy's own connections. Nil: net.Dialer{}.
	// Its Timeout is replaced by the config's DialTimeout.
	Dialer *net.Dialer
	// Resolver resolves CONNECT and absolute-form hosts in explicit mode.
	// Nil: net.DefaultResolver.
	Resolver Resolver
	// LogHeaders records each request's headers, redacted with
	// audit.Redact and RedactHeaders, in its audit record (config.Audit).
	LogHeaders    bool
	RedactHeaders []string
	// Capture, when set, records the plaintext of decrypted and plain
	// HTTP client connections (and of non-HTTP protocols relayed after
	// decryption) as pcapng flows, for connections whose policy decision
	// asks for it (Decision.Capture). Nil: no capture.
	Capture pcap.Capture
	// Observer is told about client connections (metrics). Nil: nobody.
	Observer Observer
}

// Observer is told what happens to client connections, for gauges and
// counters that audit records can't give (a decrypted connection has no
// record of its own, only its requests do). *metrics.Metrics implements
// it. Methods are called from connection goroutines and must not block.
type Observer interface {
	// ConnOpened and ConnClosed bracket every client connection served.
	ConnOpened()
	ConnClosed()
	// TLSConnection is called once per client TLS handshake Sluice
	// completed (mode audit.TLSDecrypted).
	TLSConnection(mode string)
}

// nopObserver is the Observer when none is given.
type nopObserver struct{}

func (nopObserver) ConnOpened()          {}
func (nopObserver) ConnClosed()          {}
func (nopObserver) TLSConnection(string) {}

// Proxy is safe for concurrent use.
type Proxy struct {
	cfg      config.Proxy
	deps     Deps
	log      *slog.Logger
	leaf     func(ctx context.Context, name string) (*tls.Certificate, error)
	roots    *x509.CertPool
	sessions tls.ClientSessionCache
	dialer   *net.Dialer
	resolver Resolver
	obs      Observer
	// seen remembers, per name, the addresses recent lookups gave (a
	// union over bindingTTL), so name binding costs at most one lookup per
	// name and minute, and rotating DNS answers still bind.
	seen   *lru.Cache[string, binding]
	pools  *poolSet
	h2     *http2.Server
	errLog *slog.Logger
	slots  chan struct{} // one per client connection being served
}

// New builds a Proxy from its configuration (already validated by
// config.Load; zero values get the defaults) and collaborators.
func New(cfg config.Proxy, deps Deps) (*Proxy, error) {
	def := config.DefaultProxy()
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = def.MaxHeaderBytes
	}
	for _, d := range []struct{ v, def *config.Duration }{
		{&cfg.DialTimeout, &def.DialTimeout},
		{&cfg.ResponseHeaderTimeout, &def.ResponseHeaderTimeout},
		{&cfg.IdleTimeout, &def.IdleTimeout},
		{&cfg.HandshakeTimeout, &def.HandshakeTimeout},
		{&cfg.PeekTimeout, &def.PeekTimeout},
	} {
		if *d.v <= 0 {
			*d.v = *d.def
		}
	}
	if cfg.MaxUpstreamPools <= 0 {
		cfg.MaxUpstreamPools = def.MaxUpstreamPools
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = def.MaxConnections
	}
	if cfg.MaxIdleConnsPerUpstream <= 0 {
		cfg.MaxIdleConnsPerUpstream = def.MaxIdleConnsPerUpstream
	}
	if deps.CA == nil {
		return nil, errors.New("new proxy: a CA is required")
	}
	if deps.Policy == nil {
		deps.Policy = &policy.Current{}
	}
	if deps.Audit == nil {
		deps.Audit = audit.Discard{}
	}
	if deps.Log == nil {
		deps.Log = slog.Default()
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if cfg.UpstreamCA != "" {
		pem, err := readFile(cfg.UpstreamCA)
		if err != nil {
			return nil, fmt.Errorf("proxy.upstreamCA %q: %w", cfg.UpstreamCA, err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("proxy.upstreamCA %q: no PEM certificate found, give a PEM bundle of CA certificates", cfg.UpstreamCA)
		}
	}
	d := &net.Dialer{}
	if deps.Dialer != nil {
		c := *deps.Dialer
		d = &c
	}
	d.Timeout = cfg.DialTimeout.D()
	var obs Observer = nopObserver{}
	if deps.Observer != nil {
		obs = deps.Observer
	}
	seen, _ := lru.New[string, binding](bindingCacheSize)
	var res Resolver = net.DefaultResolver
	if deps.Resolver != nil {
		res = deps.Resolver
	}
	log := deps.Log.With("component", "mitm")
	p := &Proxy{
		cfg:      cfg,
		deps:     deps,
		log:      log,
		leaf:     deps.CA.Leaf,
		roots:    roots,
		sessions: tls.NewLRUClientSessionCache(1024),
		dialer:   d,
		resolver: res,
		seen:     seen,
		obs:      obs,
		h2: &http2.Server{
			IdleTimeout:          cfg.IdleTimeout.D(),
			MaxConcurrentStreams: 250,
		},
		errLog: log.With("source", "net/http"),
		slots:  make(chan struct{}, cfg.MaxConnections),
	}
	p.pools, err = newPoolSet(p, cfg.MaxUpstreamPools)
	if err != nil {
		return nil, fmt.Errorf("new proxy: %w", err)
	}
	return p, nil
}

// Close closes the idle upstream connections of every pool. Connections in
// use finish first; Handle and ServeExplicit may still be called after it.
func (p *Proxy) Close() error {
	p.pools.closeAll()
	return nil
}

// Handle serves one client connection until it is done and closes it.
// Handle owns conn. It returns when ctx is cancelled or the exchange ends.
// dst.Addr is the original destination (transparent mode) and id the
// workload the agent attributed the connection to.
func (p *Proxy) Handle(ctx context.Context, conn net.Conn, dst Destination, id workload.Identity) {
	if dst.Addr.IsValid() {
		dst.Addr = netip.AddrPortFrom(dst.Addr.Addr().Unmap(), dst.Addr.Port())
		if dst.Port == 0 {
			dst.Port = dst.Addr.Port()
		}
	}
	if !p.acquire() {
		p.refuse(conn, dst, id)
		return
	}
	defer p.release()
	p.obs.ConnOpened()
	defer p.obs.ConnClosed()
	p.serve(ctx, conn, dst, id, false)
}

func (p *Proxy) acquire() bool {
	select {
	case p.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

func (p *Proxy) release() { <-p.slots }

// refuse closes a connection over MaxConnections and records it.
func (p *Proxy) refuse(conn net.Conn, dst Destination, id workload.Identity) {
	conn.Close()
	rec := (&flow{id: id, dst: dst, start: time.Now()}).l4Record()
	rec.Decision, rec.Reason = audit.DecisionError, reasonTooMany
	rec.Error = fmt.Sprintf("more than proxy.maxConnections (%d) connections at once", p.cfg.MaxConnections)
	p.emit(rec)
}

// flow is one client connection after the peek.
type flow struct {
	p        *Proxy
	ctx      context.Context
	id       workload.Identity
	dst      Destination
	start    time.Time
	explicit bool // the explicit listener: requests name their target
	tunnel   bool // inside CONNECT

	sni     string
	alpn    string // negotiated with the client
	h2c     bool   // plain HTTP/2 with prior knowledge
	tlsMode string

	fixed *target // TLS decrypt and CONNECT: the one destination

	mu      sync.Mutex
	targets map[string]*target // plain HTTP: per host

	h1 *h1Conn // HTTP/1.1 framing tracker; nil for HTTP/2
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

func (p *Proxy) serve(ctx context.Context, conn net.Conn, dst Destination, id workload.Identity, tunnel bool) {
	f := &flow{p: p, id: id, dst: dst, start: time.Now(), tunnel: tunnel}
	ctx, cancel := context.WithCancel(ctx)
	f.ctx = ctx
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer func() {
		stop()
		cancel()
		conn.Close()
	}()
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("panic serving connection", "client", id.Client.String(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()

	pc := newPeekedConn(conn, peekBufferSize)
	br := pc
	_ = conn.SetReadDeadline(time.Now().Add(p.cfg.PeekTimeout.D()))
	first, err := br.Peek(1)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			_ = conn.SetReadDeadline(time.Time{})
			f.serveOther(pc, "")
			return
		}
		rec := f.l4Record()
		rec.Decision = audit.DecisionError
		rec.Reason = reasonClientSilent
		rec.Error = fmt.Sprintf("read first byte: %v", err)
		p.emit(rec)
		return
	}
	skip, isHTTP := 0, false
	if first[0] != recordTypeHandshake {
		skip, isHTTP = sniffHTTP(br)
	}
	switch {
	case first[0] == recordTypeHandshake:
		_ = conn.SetReadDeadline(time.Now().Add(p.cfg.HandshakeTimeout.D()))
		hello, err := peekClientHello(br)
		if err != nil {
			rec := f.l4Record()
			rec.Decision = audit.DecisionError
			rec.Reason = reasonBadHello
			rec.Error = err.Error()
			p.emit(rec)
			return
		}
		f.serveTLS(pc, hello)
	case isHTTP, sniffH2C(br):
		_ = conn.SetReadDeadline(time.Time{})
		pc.discard(skip)
		f.tlsMode = audit.TLSNone
		f.h2c = sniffH2C(br) // HTTP/2 with prior knowledge (gRPC without TLS)
		if tunnel {
			// CONNECT followed by plain HTTP: one destination.
			f.fixed = f.newTarget(dst.Host, dst.Port, false)
		}
		f.serveHTTP(pc, f.h2c)
	default:
		_ = conn.SetReadDeadline(time.Time{})
		f.serveOther(pc, "")
	}
}

// sniffH2C reports whether the client starts with the HTTP/2 connection
// preface (prior knowledge, no TLS).
func sniffH2C(br peeker) bool {
	const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	b, err := br.Peek(4)
	if err != nil || string(b) != preface[:4] {
		return false
	}
	b, err = br.Peek(len(preface))
	return err == nil && string(b) == preface
}

// sniffHTTP reports whether the buffered bytes start an HTTP/1.x request:
// optional empty lines (RFC 9112 section 2.2 lets servers skip them, and
// nginx and Node do), a method token (any RFC 9110 token: servers accept
// extension methods, in any case), a space, and a request target that
// starts like one: '/', '*', an absolute URI (scheme "://"), or anything
// after CONNECT. skip is the number of leading CR/LF bytes the caller must
// drop before serving. It reads only as far as it must to say no, so a
// client-first text protocol is not held up. Bytes that don't look like
// this are not HTTP; such flows are decided as opaque (policy.Conn.Opaque),
// where deny rules with methods or paths still apply, so a request that
// slips past this sniffing can't escape them.
func sniffHTTP(br peeker) (skip int, ok bool) {
	const maxSkip, maxMethod, maxScheme = 32, 32, 32
	at := func(i int) (byte, bool) {
		b, err := br.Peek(i + 1)
		if err != nil || len(b) <= i {
			return 0, false
		}
		return b[i], true
	}
	for {
		c, ok := at(skip)
		if !ok {
			return 0, false
		}
		if c != '\r' && c != '\n' {
			break
		}
		if skip++; skip > maxSkip {
			return 0, false
		}
	}
	i := skip
	for ; ; i++ {
		c, ok := at(i)
		if !ok || i >= skip+maxMethod {
			return 0, false
		}
		if c == ' ' && i > skip {
			break
		}
		if !isTokenChar(c) {
			return 0, false
		}
	}
	if b, _ := br.Peek(i); string(b[skip:i]) == "CONNECT" {
		return skip, true
	}
	t, ok := at(i + 1)
	switch {
	case !ok:
		return 0, false
	case t == '/' || t == '*':
		return skip, true
	case !isAlpha(t):
		return 0, false
	}
	// absolute-form: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) "://"
	for j := i + 2; j < i+2+maxScheme; j++ {
		c, ok := at(j)
		switch {
		case !ok:
			return 0, false
		case c == ':':
			s1, ok1 := at(j + 1)
			s2, ok2 := at(j + 2)
			return skip, ok1 && ok2 && s1 == '/' && s2 == '/'
		case isAlpha(c) || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.':
		default:
			return 0, false
		}
	}
	return 0, false
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// isTokenChar is RFC 9110's tchar.
func isTokenChar(c byte) bool {
	return isAlpha(c) || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

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
		t.err, t.fail = err, reasonUnreachable
	}
	t.conn = &policy.Conn{Workload: f.id, Host: host, Addrs: addrs, Port: t.port, TLS: tlsFlow}
	t.cd = f.p.decider().Connection(f.ctx, t.conn)
	return t
}

// record starts a record of kind at t with what the flow knows.
func (f *flow) record(kind string, t time.Time) *audit.Record {
	r := &audit.Record{
		Time:     t,
		Kind:     kind,
		Workload: f.id,
		Host:     f.dst.Host,
		Port:     f.dst.Port,
		SNI:      f.sni,
		TLS:      f.tlsMode,
		ALPN:     f.alpn,
	}
	if f.dst.Addr.IsValid() {
		r.DstIP = f.dst.Addr.Addr()
	}
	return r
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

// serveOther relays a flow that is neither TLS nor HTTP (or a pass-through
// TLS flow when mode is TLSPassthrough) and records it at L4.
func (f *flow) serveOther(c net.Conn, mode string) {
	p := f.p
	var t *target
	if mode == audit.TLSPassthrough {
		t = f.fixed
	} else {
		f.tlsMode = audit.TLSNone
		t = f.newTarget(f.dst.Host, f.dst.Port, false)
		t.cd = f.opaque(t)
	}
	rec := f.l4Record()
	if t.host != "" {
		rec.Host = t.host
	}
	rec.Decision, rec.Rule, rec.Reason = decisionString(t.cd.Decision), t.cd.Rule, t.cd.Reason
	if t.cd.Action == policy.Reject {
		rec.Decision = audit.DecisionDeny
		rec.Duration = time.Since(f.start)
		p.emit(rec)
		return
	}
	if t.err != nil {
		rec.Decision, rec.Reason, rec.Error = audit.DecisionError, t.fail, t.err.Error()
		rec.Duration = time.Since(f.start)
		p.emit(rec)
		return
	}
	up, addr, err := p.dialAny(f.ctx, t.conn.Addrs, t.port)
	if err != nil {
		rec.Decision, rec.Reason, rec.Error = audit.DecisionError, reasonUnreachable, err.Error()
		rec.Duration = time.Since(f.start)
		p.emit(rec)
		return
	}
	rec.DstIP = addr.Addr()
	rec.UpstreamAddr = addr.String()
	in, out, err := relay(f.ctx, c, up, p.cfg.IdleTimeout.D())
	rec.BytesIn, rec.BytesOut = in, out
	if err != nil {
		rec.Error = err.Error()
	}
	rec.Duration = time.Since(f.start)
	p.emit(rec)
}

// isIPLiteral reports whether h is an IP address (with or without brackets).
func isIPLiteral(h string) bool {
	_, err := netip.ParseAddr(strings.Trim(h, "[]"))
	return err == nil
}

// binding is what recent lookups of one name returned.
type binding struct {
	addrs   []netip.Addr
	expires time.Time
}

const (
	bindingCacheSize = 4096
	bindingTTL       = time.Minute
	maxBoundAddrs    = 64
)

// resolvesTo reports whether name is ip, or resolves to it: now, or in a
// lookup of the last bindingTTL (DNS that rotates its answers still binds).
func (f *flow) resolvesTo(name string, ip netip.Addr) bool {
	if a, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil {
		return a.Unmap() == ip.Unmap()
	}
	ip = ip.Unmap()
	key := strings.TrimSuffix(strings.ToLower(name), ".")
	p := f.p
	var known []netip.Addr
	if b, ok := p.seen.Get(key); ok && time.Now().Before(b.expires) {
		known = b.addrs
	}
	if slices.Contains(known, ip) {
		return true
	}
	ctx, cancel := context.WithTimeout(f.ctx, p.cfg.DialTimeout.D())
	defer cancel()
	as, err := p.resolver.LookupNetIP(ctx, "ip", name)
	if err != nil {
		p.log.Warn("name binding lookup failed", "host", name, "addr", ip.String(), "error", err.Error())
		return false
	}
	union := slices.Clone(known)
	for _, a := range as {
		if a = a.Unmap(); !slices.Contains(union, a) && len(union) < maxBoundAddrs {
			union = append(union, a)
		}
	}
	p.seen.Add(key, binding{addrs: union, expires: time.Now().Add(bindingTTL)})
	return slices.Contains(union, ip)
}

// serveTLS decides a TLS flow from its ClientHello.
func (f *flow) serveTLS(c *peekedConn, hello clientHello) {
	p := f.p
	f.sni = hello.SNI
	host := hello.SNI
	if host == "" {
		host = f.dst.Host
	}
	if f.tunnel && hello.SNI != "" && !isIPLiteral(f.dst.Host) && !sameHost(hello.SNI, f.dst.Host) {
		// CONNECT a.example then SNI b.example: the policy would judge
		// b while the bytes go to a.
		rec := f.l4Record()
		rec.Host = f.dst.Host
		rec.Decision, rec.Reason = audit.DecisionDeny, reasonSNIMismatch
		rec.Error = fmt.Sprintf("SNI %q in a tunnel to %q", hello.SNI, f.dst.Host)
		p.emit(rec)
		return
	}
	f.fixed = f.newTarget(host, f.dst.Port, true)
	t := f.fixed
	if t.cd.Action == policy.Passthrough && hello.SNI != "" && len(t.conn.Addrs) > 0 &&
		!sameHost(hello.SNI, f.dst.Host) && !f.resolvesTo(hello.SNI, t.conn.Addrs[0]) {
		// Pass-through trusts the SNI, and nothing verifies it: only
		// where the name resolves to the address dialed. Elsewhere the
		// connection is decrypted like any other, so the upstream's
		// certificate is checked against the name.
		t.cd.Action = policy.Decrypt
		t.cd.Reason = reasonPassthroughUnbound
		p.log.Warn("pass-through refused: SNI does not resolve to the destination; decrypting",
			"sni", hello.SNI, "addr", t.conn.Addrs[0].String(), "workload", f.id.Name())
	}
	switch t.cd.Action {
	case policy.Reject:
		rec := f.l4Record()
		rec.Host = host
		rec.Decision, rec.Rule, rec.Reason = audit.DecisionDeny, t.cd.Rule, t.cd.Reason
		p.emit(rec)
		return
	case policy.Passthrough:
		_ = c.SetReadDeadline(time.Time{})
		f.tlsMode = audit.TLSPassthrough
		f.serveOther(c, audit.TLSPassthrough)
		return
	}
	f.tlsMode = audit.TLSDecrypted

	// The name the upstream certificate must carry and the client's leaf
	// is minted for: the SNI, else the CONNECT host, else the IP.
	name := host
	if name == "" && f.dst.Addr.IsValid() {
		name = f.dst.Addr.Addr().String()
	}
	t.host = name
	offer := intersectALPN(hello.ALPN)
	if t.err == nil && !f.reusePool(t, name, offer) {
		f.dialUpstreamTLS(t, name, offer)
	}
	var protos []string
	switch {
	case t.err == nil && t.alpn != "":
		protos = []string{t.alpn}
	case t.err != nil && contains(offer, "http/1.1"):
		protos = []string{"http/1.1"}
	case t.err != nil && contains(offer, "h2"):
		protos = []string{"h2"}
	}
	// The upstream side may have used the time the peek was given.
	_ = c.SetDeadline(time.Now().Add(p.cfg.HandshakeTimeout.D()))
	hctx, cancel := context.WithTimeout(f.ctx, p.cfg.HandshakeTimeout.D())
	defer cancel()
	srv := tls.Server(c, &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: protos,
		GetCertificate: func(chi *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return p.leaf(chi.Context(), name)
		},
	})
	if err := srv.HandshakeContext(hctx); err != nil {
		rec := f.l4Record()
		rec.Host = host
		rec.Decision, rec.Reason, rec.Error = audit.DecisionError, reasonClientHandshake, err.Error()
		p.emit(rec)
		t.release()
		return
	}
	_ = c.SetDeadline(time.Time{})
	p.obs.TLSConnection(audit.TLSDecrypted)
	f.alpn = srv.ConnectionState().NegotiatedProtocol
	defer t.release()
	f.serveDecrypted(srv, t)
}

// serveDecrypted decides from the first plaintext bytes whether the client
// speaks HTTP (served and decided per request) or another protocol over
// TLS (relayed decrypted, with an L4 record). A client that negotiated an
// HTTP ALPN is HTTP. Without one, a client that says nothing for
// PeekTimeout may be waiting for a server greeting (IMAPS, SMTPS): then
// whichever side speaks first decides, and since an HTTP server never
// speaks first, waiting can't make HTTP escape per-request policy.
func (f *flow) serveDecrypted(tc *tls.Conn, t *target) {
	p := f.p
	pc := newPeekedConn(tc, 64)
	if f.alpn == "h2" || f.alpn == "http/1.1" || t.err != nil {
		f.serveHTTP(pc, f.alpn == "h2")
		return
	}
	_ = tc.SetReadDeadline(time.Now().Add(p.cfg.PeekTimeout.D()))
	_, err := pc.Peek(1)
	if isTimeout(err) {
		_ = tc.SetReadDeadline(time.Time{})
		f.raceFirstSpeaker(pc, t)
		return
	}
	if err != nil {
		return // the client left without a word
	}
	_ = tc.SetReadDeadline(time.Now().Add(p.cfg.HandshakeTimeout.D()))
	skip, isHTTP := sniffHTTP(pc)
	isH2 := sniffH2C(pc)
	_ = tc.SetReadDeadline(time.Time{})
	if isHTTP || isH2 {
		pc.discard(skip)
		f.serveHTTP(pc, isH2)
		return
	}
	f.relayDecrypted(pc, nil, t)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// raceFirstSpeaker waits for the client or the upstream to send first.
func (f *flow) raceFirstSpeaker(pc *peekedConn, t *target) {
	up, err := t.pool.dial(f.ctx)
	if err != nil {
		f.serveHTTP(pc, false) // an HTTP client gets the 502 that says why
		return
	}
	upc := newPeekedConn(up, 64)
	clientCh, upCh := make(chan error, 1), make(chan error, 1)
	go func() { _, err := pc.Peek(1); clientCh <- err }()
	go func() { _, err := upc.Peek(1); upCh <- err }()
	// stop ends the other side's peek (a deadline error is not sticky on
	// a tls.Conn) and waits for it.
	stop := func(c net.Conn, ch chan error) {
		_ = c.SetReadDeadline(time.Unix(1, 0))
		<-ch
		_ = c.SetReadDeadline(time.Time{})
	}
	select {
	case err := <-clientCh:
		stop(upc.Conn, upCh)
		if err != nil {
			up.Close()
			return
		}
		if upc.Buffered() == 0 {
			_ = pc.SetReadDeadline(time.Now().Add(f.p.cfg.HandshakeTimeout.D()))
			skip, isHTTP := sniffHTTP(pc)
			isH2 := sniffH2C(pc)
			_ = pc.SetReadDeadline(time.Time{})
			if isHTTP || isH2 {
				pc.discard(skip)
				t.pool.offer(up) // unread: the first request can use it
				f.serveHTTP(pc, isH2)
				return
			}
		}
		f.relayDecrypted(pc, upc, t)
	case err := <-upCh:
		stop(pc.Conn, clientCh)
		if err != nil && upc.Buffered() == 0 {
			up.Close()
			rec := f.l4Record()
			rec.Host = t.host
			rec.Decision, rec.Reason, rec.Error = audit.DecisionError, reasonUpstreamError, "upstream closed before anyone spoke: "+err.Error()
			f.p.emit(rec)
			return
		}
		f.relayDecrypted(pc, upc, t)
	}
}

// opaque asks the policy again about t's connection, now known not to be
// HTTP: rules with methods or paths can't match it, and what is left
// decides (a connection that was waiting for per-request decisions must
// not be relayed unchecked).
func (f *flow) opaque(t *target) policy.ConnDecision {
	c := *t.conn
	c.Opaque = true
	return f.p.decider().Connection(f.ctx, &c)
}

// relayDecrypted relays a non-HTTP protocol between the client's and the
// upstream's TLS sessions and records it at L4. up may be nil.
func (f *flow) relayDecrypted(pc *peekedConn, up net.Conn, t *target) {
	p := f.p
	rec := f.l4Record()
	rec.Host = t.host
	cd := f.opaque(t)
	rec.Decision, rec.Rule, rec.Reason = decisionString(cd.Decision), cd.Rule, cd.Reason
	if cd.Action == policy.Reject {
		if up != nil {
			up.Close()
		}
		rec.Decision = audit.DecisionDeny
		rec.Duration = time.Since(f.start)
		p.emit(rec)
		return
	}
	if t.addr.IsValid() {
		rec.DstIP, rec.UpstreamAddr = t.addr.Addr(), t.addr.String()
	}
	if up == nil {
		c, err := t.pool.dial(f.ctx)
		if err != nil {
			rec.Decision, rec.Reason, rec.Error = audit.DecisionError, reasonUnreachable, err.Error()
			var de *dialError
			if errors.As(err, &de) {
				rec.Reason = de.reason
			}
			rec.Duration = time.Since(f.start)
			p.emit(rec)
			return
		}
		up = c
	}
	client := f.tap(pc)
	defer client.Close()
	in, out, err := relay(f.ctx, client, up, p.cfg.IdleTimeout.D())
	rec.BytesIn, rec.BytesOut = in, out
	if err != nil {
		rec.Error = err.Error()
	}
	rec.Duration = time.Since(f.start)
	p.emit(rec)
}

// tap mirrors the client side plaintext of c into a capture flow when
// capture is on and the policy's decision for the connection's destination
// asks for it (a rule with capture: true).
func (f *flow) tap(c net.Conn) net.Conn {
	if f.p.deps.Capture == nil || f.fixed == nil || !f.fixed.cd.Capture {
		return c
	}
	server, host := f.dst.Addr, f.dst.Host
	if f.fixed != nil {
		if f.fixed.addr.IsValid() {
			server = f.fixed.addr
		}
		if f.fixed.host != "" {
			host = f.fixed.host
		}
	}
	if f.sni != "" {
		host = f.sni
	}
	fl := f.p.deps.Capture.NewFlow(pcap.FlowMeta{Client: f.id.Client, Server: server, Workload: f.id.Name(), Host: host})
	return fl.Conn(c)
}

// dialUpstreamTLS connects to the target first, so the client's handshake
// can mirror the upstream's ALPN. Failures are kept on t for the 502s.
func (f *flow) dialUpstreamTLS(t *target, name string, offer []string) {
	p := f.p
	raw, addr, err := p.dialAny(f.ctx, t.conn.Addrs, t.port)
	if err != nil {
		t.err, t.fail = fmt.Errorf("upstream %s unreachable: %w", name, err), reasonUnreachable
		return
	}
	t.addr = addr
	hctx, cancel := context.WithTimeout(f.ctx, p.cfg.HandshakeTimeout.D())
	defer cancel()
	up := tls.Client(raw, p.upstreamTLSConfig(name, offer))
	if err := up.HandshakeContext(hctx); err != nil {
		raw.Close()
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) {
			t.err, t.fail = fmt.Errorf("upstream certificate verification failed for %s: %w", name, verr.Err), reasonVerify
		} else {
			t.err, t.fail = fmt.Errorf("upstream TLS handshake with %s failed: %w", name, err), reasonUpstreamTLS
		}
		return
	}
	t.alpn = up.ConnectionState().NegotiatedProtocol
	p.pools.remember(name, addr, offer, t.alpn)
	t.pool = p.pools.get(poolKey{host: name, addr: addr, alpn: t.alpn, tls: true})
	t.spare = up
	t.pool.offer(up)
}

// reusePool takes a live pool that served the same offer to one of the
// checked addresses before: the client's handshake then needs no new
// upstream connection.
func (f *flow) reusePool(t *target, name string, offer []string) bool {
	for _, a := range t.conn.Addrs {
		ap := netip.AddrPortFrom(a, t.port)
		if up, alpn, ok := f.p.pools.lookup(name, ap, offer); ok {
			t.pool, t.addr, t.alpn = up, ap, alpn
			return true
		}
	}
	return false
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
		t.fail = reasonUnreachable
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

// target returns the destination of a request: the flow's fixed one, or
// the one for the request's host (plain HTTP).
func (f *flow) target(r *http.Request, host string) *target {
	if f.fixed != nil {
		return f.fixed
	}
	f.mu.Lock()
	t, ok := f.targets[host]
	f.mu.Unlock()
	if ok {
		return t
	}
	// Transparent plain HTTP: the Host header is only the client's word
	// for where the original destination is. Policy judges the name only
	// when it resolves to that address; otherwise the request is judged
	// by the address alone.
	policyHost := host
	if f.dst.Addr.IsValid() && host != "" && !f.resolvesTo(host, f.dst.Addr.Addr()) {
		policyHost = ""
	}
	t = f.newTarget(policyHost, f.dst.Port, false)
	t.host = host
	t.unbound = policyHost != host
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.targets == nil {
		f.targets = map[string]*target{}
	}
	if old, ok := f.targets[host]; ok {
		return old
	}
	if len(f.targets) < 16 {
		f.targets[host] = t
	}
	return t
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

// serveHTTP serves HTTP/1.1 or HTTP/2 on c until the client is done.
func (f *flow) serveHTTP(c net.Conn, h2 bool) {
	p := f.p
	defer f.releaseTargets()
	c = f.tap(c)
	defer c.Close() // closes the capture flow too
	if h2 {
		p.h2.ServeConn(c, &http2.ServeConnOpts{
			Context: f.ctx,
			Handler: f,
			BaseConfig: &http.Server{
				MaxHeaderBytes: 2 * p.cfg.MaxHeaderBytes,
				ErrorLog:       slog.NewLogLogger(p.errLog.Handler(), slog.LevelDebug),
			},
		})
		return
	}
	hc := newH1Conn(c, f)
	f.h1 = hc
	srv := &http.Server{
		Handler:           f,
		ReadHeaderTimeout: p.cfg.HandshakeTimeout.D(),
		IdleTimeout:       p.cfg.IdleTimeout.D(),
		MaxHeaderBytes:    p.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(p.errLog.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return f.ctx },
	}
	srv.SetKeepAlivesEnabled(true)
	_ = srv.Serve(newOneConnListener(hc))
}

func intersectALPN(client []string) []string {
	var out []string
	for _, p := range client {
		if (p == "h2" || p == "http/1.1") && !contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
