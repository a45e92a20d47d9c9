package mitm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/ca"
	"github.com/sluicehq/sluice/cache"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/mcpstate"
	"github.com/sluicehq/sluice/pcap"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/upstreams"
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
	// Names tells which names a workload resolved (through the agent's
	// DNS server) to an address: a destination with no bound name is
	// judged by them too (see binding.go). Nil: none.
	Names Names
}

// Names is what the proxy asks about a workload's DNS answers.
// *agent.DNSServer implements it. NamesFor must be safe for concurrent
// use and fast: it is asked on the connection path.
type Names interface {
	NamesFor(id workload.Identity, addr netip.Addr) []string
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
	// clientTLS is the one server config of decrypted client connections:
	// its session ticket keys (rotated by crypto/tls) are shared, so a
	// client resumes on its next connection (no leaf signature, no
	// certificate sent); clientTLSFor gives each connection its leaf name
	// and ALPN.
	clientTLS *tls.Config
	// clientConfigs are the configs clientTLSFor hands out, one per ALPN
	// answer (none, h2, http/1.1) and locality, shared by all connections.
	clientConfigs []clientConfig
	dialer        *net.Dialer
	resolver      Resolver
	obs           Observer
	// seen remembers, per name, the addresses recent lookups gave (a
	// union over bindingTTL), so name binding costs at most one lookup per
	// name and minute, and rotating DNS answers still bind.
	seen    *lru.Cache[string, binding]
	pools   *poolSet
	h2      *h2Server
	h1      *h1Server // serves every HTTP/1.1 client connection
	errLog  *slog.Logger
	slots   *slots      // client connections being served
	clients *clientGate // who may use the explicit proxy
	stages  []Stage     // the per-request chain (see chain)
	// mcpTools holds each MCP tool as acknowledged (first seen, or
	// acked), per server, workload and tool name, and its changes
	// (rug-pull detection, stage_mcp.go, stage_toolchange.go).
	mcpTools *mcpstate.Store
	// mcpStateWarned is when (unix seconds) writing mcpTools' state
	// file last failed with a warning: at most one a minute.
	mcpStateWarned atomic.Int64
	// mcpSessions are the HTTP+SSE sessions open through the proxy
	// (mcp_session.go).
	mcpSessions mcpSessions
	cache       *cache.Store // the response cache (rules' cache blocks)
	groups      *groupSet    // upstream groups (stage_balance.go)
	// untrusted remembers the clients that rejected Sluice's
	// certificate, per workload and host (untrusted.go).
	untrusted *untrustedSet
}

// New builds a Proxy from its configuration (already validated by
// config.Load; zero values get the defaults) and collaborators.
func New(cfg config.Proxy, deps Deps) (*Proxy, error) {
	def := config.DefaultProxy()
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = def.MaxHeaderBytes
	}
	if cfg.MCPMaxMessageBytes <= 0 {
		cfg.MCPMaxMessageBytes = def.MCPMaxMessageBytes
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
	if cfg.MaxConnectionsPerWorkload <= 0 {
		cfg.MaxConnectionsPerWorkload = min(def.MaxConnectionsPerWorkload, cfg.MaxConnections)
	}
	if cfg.CacheMaxBytes <= 0 {
		cfg.CacheMaxBytes = def.CacheMaxBytes
	}
	if cfg.MaxIdleConnsPerUpstream <= 0 {
		// Grow with demand: never fewer idle slots than client
		// connections that can be in flight at once.
		cfg.MaxIdleConnsPerUpstream = cfg.MaxConnections
	}
	clients, err := newClientGate(cfg.Clients)
	if err != nil {
		return nil, fmt.Errorf("new proxy: %w", err)
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
	log := deps.Log.With(audit.KeyComponent, audit.ComponentMITM)
	p := &Proxy{
		cfg:       cfg,
		deps:      deps,
		log:       log,
		leaf:      deps.CA.Leaf,
		roots:     roots,
		sessions:  tls.NewLRUClientSessionCache(1024),
		dialer:    d,
		resolver:  res,
		seen:      seen,
		obs:       obs,
		untrusted: newUntrustedSet(untrustedSize, untrustedTTL),
		h2: &h2Server{
			// A client that stops reading its socket (while its windows
			// stay open) blocks the connection's writes, not one stream's:
			// it is closed after IdleTimeout without a byte written.
			idleTimeout: cfg.IdleTimeout.D(),
			maxStreams:  250,
			// Twice ours: up to it, the framing stage answers and records
			// a head over proxy.maxHeaderBytes (x/net's server allowed
			// as much).
			maxHeaderList: uint32(2*cfg.MaxHeaderBytes + h2HeaderListSlack),
		},
		errLog:  log.With(audit.KeySource, "net/http"),
		slots:   newSlots(cfg.MaxConnections, cfg.MaxConnectionsPerWorkload),
		clients: clients,
		cache:   cache.NewStore(int64(cfg.CacheMaxBytes)),
	}
	if p.mcpTools, err = mcpstate.Open(cfg.MCPStateFile, mcpstate.DefaultMaxTools); err != nil {
		return nil, fmt.Errorf("proxy.mcpStateFile: %w", err)
	}
	p.h1 = newH1Server(p)
	p.h2.log, p.h2.parked = p.errLog, p.h1.parked
	p.newClientTLS()
	p.groups = &groupSet{set: upstreams.NewSet(upstreams.NetProber{Dial: d.DialContext}, nil)}
	p.upstreamGroups() // health checks start with the policy, not the first request
	p.stages = p.chain()
	p.pools, err = newPoolSet(p, cfg.MaxUpstreamPools)
	if err != nil {
		return nil, fmt.Errorf("new proxy: %w", err)
	}
	return p, nil
}

// MCPTools is the store of the MCP tools the proxy has seen (the admin
// API's /api/mcp, sluice mcp).
func (p *Proxy) MCPTools() *mcpstate.Store { return p.mcpTools }

// Close closes the idle upstream connections of every pool. Connections in
// use finish first; Handle and ServeExplicit may still be called after it.
func (p *Proxy) Close() error {
	p.pools.closeAll()
	p.groups.set.Close()
	return nil
}

// Handle serves one client connection until it is done and closes it.
// Handle owns conn. It returns when ctx is cancelled or the exchange ends,
// or once an HTTP/1.1 connection is handed to the proxy's HTTP server,
// which serves it from then on (and closes it when ctx is cancelled).
// dst.Addr is the original destination (transparent mode) and id the
// workload the agent attributed the connection to.
func (p *Proxy) Handle(ctx context.Context, conn net.Conn, dst Destination, id workload.Identity) {
	if dst.Addr.IsValid() {
		dst.Addr = netip.AddrPortFrom(dst.Addr.Addr().Unmap(), dst.Addr.Port())
		if dst.Port == 0 {
			dst.Port = dst.Addr.Port()
		}
	}
	key := slotKey(&id)
	if ok, why := p.slots.acquire(key); !ok {
		p.refuse(conn, dst, id, why)
		return
	}
	p.obs.ConnOpened()
	p.serve(ctx, newSysConn(conn), dst, id, false, func() {
		p.obs.ConnClosed()
		p.slots.release(key)
	})
}

// refuse closes a connection over a connection bound and records it.
func (p *Proxy) refuse(conn net.Conn, dst Destination, id workload.Identity, why string) {
	conn.Close()
	rec := (&flow{id: id, dst: dst, start: time.Now()}).l4Record()
	rec.Decision, rec.Reason, rec.Error = audit.DecisionError, audit.ReasonTooManyConns, why
	p.emit(rec)
}
