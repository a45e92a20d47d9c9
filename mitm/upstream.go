package mitm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/sluicehq/sluice/audit"
)

// poolKey names an upstream pool: connections to one host name at one
// dialed address speaking one protocol.
type poolKey struct {
	host string
	addr netip.AddrPort
	alpn string // "h2", "http/1.1" or "" (no ALPN); plain HTTP has "" or "h2c"
	tls  bool
}

// upstreamPool reuses connections to one upstream. Its first connection
// may be one the proxy dialed itself to learn the ALPN (the spare).
type upstreamPool struct {
	p   *Proxy
	key poolKey
	rt  http.RoundTripper
	// h1 carries the HTTP/1.1 requests that need no goroutine of the
	// Transport's (h1upstream.go); nil for HTTP/2 pools.
	h1 *h1Pool
	// h2 is rt for HTTP/2 pools, nil for others: its client keeps the
	// response header timeout itself (h2Transport.headerTimeout).
	h2 *h2Transport

	closeIdle func()

	mu    sync.Mutex
	spare net.Conn
}

// poolSet bounds the pools with an LRU; an evicted pool closes its idle
// connections (requests in flight on it finish).
type poolSet struct {
	mu    sync.Mutex
	cache *lru.Cache[poolKey, *upstreamPool]
	// alpn remembers what an upstream negotiated for a client's offer, so
	// later connections with the same offer go straight to the pool
	// instead of dialing again to learn it.
	alpn *lru.Cache[offerKey, string]
	p    *Proxy
}

type offerKey struct {
	host  string
	addr  netip.AddrPort
	offer string // the ALPN list offered upstream, comma-joined
}

func newPoolSet(p *Proxy, size int) (*poolSet, error) {
	c, err := lru.NewWithEvict(size, func(_ poolKey, up *upstreamPool) { up.close() })
	if err != nil {
		return nil, fmt.Errorf("upstream pools: %w", err)
	}
	a, err := lru.New[offerKey, string](size)
	if err != nil {
		return nil, fmt.Errorf("upstream pools: %w", err)
	}
	return &poolSet{cache: c, alpn: a, p: p}, nil
}

// remember records the ALPN an upstream chose for an offer.
func (s *poolSet) remember(host string, addr netip.AddrPort, offer []string, alpn string) {
	s.alpn.Add(offerKey{host, addr, strings.Join(offer, ",")}, alpn)
}

// forget drops a pool whose upstream changed what it speaks, and the
// offers that led to it.
func (s *poolSet) forget(k poolKey) {
	for _, ok := range s.alpn.Keys() {
		if ok.host == k.host && ok.addr == k.addr {
			s.alpn.Remove(ok)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cache.Remove(k)
}

// lookup returns the live pool that served this offer before.
func (s *poolSet) lookup(host string, addr netip.AddrPort, offer []string) (*upstreamPool, string, bool) {
	alpn, ok := s.alpn.Get(offerKey{host, addr, strings.Join(offer, ",")})
	if !ok {
		return nil, "", false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	up, ok := s.cache.Get(poolKey{host: host, addr: addr, alpn: alpn, tls: true})
	return up, alpn, ok
}

func (s *poolSet) get(k poolKey) *upstreamPool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if up, ok := s.cache.Get(k); ok {
		return up
	}
	up := s.p.newPool(k)
	s.cache.Add(k, up)
	return up
}

// peek returns an existing pool without creating one.
func (s *poolSet) peek(k poolKey) (*upstreamPool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache.Get(k)
}

func (s *poolSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, up := range s.cache.Values() {
		up.closeIdle()
	}
}

func (p *Proxy) newPool(k poolKey) *upstreamPool {
	up := &upstreamPool{p: p, key: k}
	idle := p.cfg.IdleTimeout.D()
	if k.alpn == "h2" || k.alpn == "h2c" {
		// h2c: prior-knowledge HTTP/2 without TLS; the pool's dial gives
		// the plain connection either way.
		t := newH2Transport(func(ctx context.Context) (net.Conn, error) {
			c, err := up.dial(ctx)
			if err != nil {
				return nil, err
			}
			return coalesce(c), nil // one syscall for the frames of many requests
		}, idle, 1<<20)
		t.headerTimeout = p.cfg.ResponseHeaderTimeout.D()
		up.rt, up.closeIdle, up.h2 = t, t.CloseIdleConnections, t
		return up
	}
	t := &http.Transport{
		Proxy:                  nil,
		MaxIdleConnsPerHost:    p.cfg.MaxIdleConnsPerUpstream,
		MaxIdleConns:           p.cfg.MaxIdleConnsPerUpstream,
		IdleConnTimeout:        idle,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 1 << 20,
		ForceAttemptHTTP2:      false,
		TLSNextProto:           map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	if k.tls {
		t.DialTLSContext = func(ctx context.Context, _, _ string) (net.Conn, error) { return up.dial(ctx) }
	} else {
		t.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) { return up.dial(ctx) }
	}
	up.h1 = newH1Pool(up.dial, p.cfg.MaxIdleConnsPerUpstream, idle)
	up.rt = t
	up.closeIdle = func() {
		t.CloseIdleConnections()
		up.h1.closeIdle()
	}
	return up
}

// offer hands the pool a connection the proxy already has; the next dial
// takes it. A second spare is closed.
func (up *upstreamPool) offer(c net.Conn) {
	up.mu.Lock()
	defer up.mu.Unlock()
	if up.spare != nil {
		old := up.spare
		up.spare = c
		old.Close()
		return
	}
	up.spare = c
}

// reclaim closes c if it is still the unused spare.
func (up *upstreamPool) reclaim(c net.Conn) {
	up.mu.Lock()
	defer up.mu.Unlock()
	if up.spare == c {
		up.spare = nil
		c.Close()
	}
}

func (up *upstreamPool) takeSpare() net.Conn {
	up.mu.Lock()
	defer up.mu.Unlock()
	c := up.spare
	up.spare = nil
	return c
}

func (up *upstreamPool) close() {
	if c := up.takeSpare(); c != nil {
		c.Close()
	}
	up.closeIdle()
}

// dial returns the spare, else a new connection to the pool's address,
// with TLS when the pool is a TLS one.
func (up *upstreamPool) dial(ctx context.Context) (net.Conn, error) {
	if c := up.takeSpare(); c != nil {
		return c, nil
	}
	p := up.p
	c, err := p.dialTCP(ctx, up.key.addr)
	if err != nil {
		return nil, &dialError{audit.ReasonUpstreamUnreachable, fmt.Errorf("upstream %s unreachable: %w", up.key.host, err)}
	}
	if !up.key.tls {
		return c, nil
	}
	var offer []string
	if up.key.alpn != "" {
		offer = []string{up.key.alpn}
	}
	hctx, cancel := context.WithTimeout(ctx, p.cfg.HandshakeTimeout.D())
	defer cancel()
	tc := newUpstreamTLS(c, p.upstreamTLSConfig(up.key.host, offer))
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		// The upstream may have changed what it speaks (or its
		// certificate): later client connections learn it afresh.
		go p.pools.forget(up.key)
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) {
			return nil, &dialError{audit.ReasonUpstreamVerify, fmt.Errorf("upstream certificate verification failed for %s: %w", up.key.host, verr.Err)}
		}
		return nil, &dialError{audit.ReasonUpstreamTLS, fmt.Errorf("upstream TLS handshake with %s failed: %w", up.key.host, err)}
	}
	if got := tc.ConnectionState().NegotiatedProtocol; up.key.alpn == "h2" && got != "h2" {
		tc.Close()
		go p.pools.forget(up.key) // later connections learn the ALPN afresh
		return nil, &dialError{audit.ReasonUpstreamTLS, fmt.Errorf("upstream %s no longer negotiates h2 (got %q)", up.key.host, got)}
	}
	return tc, nil
}

// upstreamTLSConfig verifies name against the system roots plus
// proxy.upstreamCA (an IP literal is checked against IP SANs).
func (p *Proxy) upstreamTLSConfig(name string, alpn []string) *tls.Config {
	return &tls.Config{
		ServerName:         name,
		RootCAs:            p.roots,
		NextProtos:         alpn,
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: p.sessions,
	}
}

// dialTCP connects to an upstream address: every upstream socket the
// proxy opens comes from here, with raw reads and writes (sysConn).
func (p *Proxy) dialTCP(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	c, err := p.dialer.DialContext(ctx, "tcp", ap.String())
	if err != nil {
		return nil, err
	}
	return newSysConn(c), nil
}

// dialAny dials the addresses in order and returns the first connection.
// DialTimeout bounds the whole attempt.
func (p *Proxy) dialAny(ctx context.Context, addrs []netip.Addr, port uint16) (net.Conn, netip.AddrPort, error) {
	if len(addrs) == 0 {
		return nil, netip.AddrPort{}, errors.New("dial: no address")
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout.D())
	defer cancel()
	var errs []error
	for _, a := range addrs {
		ap := netip.AddrPortFrom(a, port)
		c, err := p.dialTCP(ctx, ap)
		if err == nil {
			return c, ap, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, netip.AddrPort{}, errors.Join(errs...)
}

// dialError is a pool's failure to connect, with the fixed reason the
// audit record carries.
type dialError struct {
	reason string
	err    error
}

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func readFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return b, nil
}
