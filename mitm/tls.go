package mitm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

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
		rec.Decision, rec.Reason = audit.DecisionDeny, audit.ReasonSNIMismatch
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
		t.cd.Reason = audit.ReasonPassthroughUnbound
		p.log.Warn("pass-through refused: SNI does not resolve to the destination; decrypting", audit.KeySNI, hello.SNI, audit.KeyAddr, t.conn.Addrs[0].String(), audit.KeyWorkload, f.id.Name())
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
		f.serveOther(c, audit.TLSPassthrough, nil)
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
	// The upstream side may have used the time the peek was given. The
	// deadline bounds the handshake, and the flow's end closes c (serve),
	// so its context need not be cancellable: crypto/tls starts a
	// goroutine per handshake to watch one that is.
	_ = c.SetDeadline(time.Now().Add(p.cfg.HandshakeTimeout.D()))
	watch := &alertWatch{Conn: c}
	hs := &clientHandshake{name: name, protos: protos, local: f.nodeLocal()}
	hctx := context.WithValue(context.WithoutCancel(f.ctx), clientHandshakeKey{}, hs)
	srv := tls.Server(watch, p.clientTLS)
	if err := srv.HandshakeContext(hctx); err != nil {
		if rejectedCertificate(err) {
			f.clientUntrusted(name, err.Error())
			t.release()
			return
		}
		if alert, ok := watch.rejected(); ok {
			f.clientUntrusted(name, "client sent the alert "+alert+" in plaintext ("+err.Error()+")")
			t.release()
			return
		}
		if errors.Is(err, io.EOF) && !srv.ConnectionState().DidResume {
			// The ClientHello was read whole (peeked), so the client hung
			// up once it had Sluice's certificate: Java's HttpClient
			// does so without an alert. Not so in a resumed handshake,
			// which sends no certificate (the client accepted the leaf on
			// the connection it got the ticket from): a client that hangs
			// up there left mid-handshake (wrk at the end of its run),
			// recorded below, and its host stays decrypted.
			f.clientUntrusted(name, "client closed the connection after Sluice's certificate, without an alert ("+err.Error()+")")
			t.release()
			return
		}
		rec := f.l4Record()
		rec.Host = host
		rec.Decision, rec.Reason, rec.Error = audit.DecisionError, audit.ReasonClientHandshake, err.Error()
		p.emit(rec)
		t.release()
		return
	}
	watch.off = true
	_ = c.SetDeadline(time.Time{})
	p.obs.TLSConnection(audit.TLSDecrypted)
	f.alpn = srv.ConnectionState().NegotiatedProtocol
	defer f.finally(t.release)
	f.serveDecrypted(srv, t, name)
}

// clientHandshake is what one client handshake needs from its flow: the
// name its leaf is minted for, the ALPN protocols offered back, and
// whether the client is on this node (see localCurves).
type clientHandshake struct {
	name   string
	protos []string
	local  bool
}

type clientHandshakeKey struct{}

// nodeLocal reports whether the client is a workload on this node: a
// transparent connection, which the agent serves only with the kernel's
// record of a local connect, or a client of the explicit listener that
// connected from a loopback address (the kernel delivers those only from
// this node). Other clients of the explicit listener may be anywhere.
func (f *flow) nodeLocal() bool {
	if f.explicit() || f.tunnel {
		return f.id.Client.Addr().IsLoopback()
	}
	return f.dst.Addr.IsValid()
}

// localCurves are the key exchanges of a node-local client's handshake:
// X25519 (then the NIST curves) without the hybrid post-quantum ones.
// Those protect a connection an eavesdropper records on the network
// today and decrypts later; this one never leaves the node (the workload
// and the proxy share its kernel), and X25519MLKEM768 costs an ML-KEM
// encapsulation and 1 KiB more per handshake. crypto/tls picks the group
// a client sent a key share for (modern clients send X25519 with the
// hybrid); one that supports X25519 but sent only a hybrid share is asked
// for X25519 with a HelloRetryRequest, and one that supports none of
// these keeps Go's default. So do the clients of the explicit listener
// that are not on a loopback address, which may be anywhere: hybrids
// first.
var localCurves = []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}

// clientConfig is one of the shared configs clientTLSFor hands out.
type clientConfig struct {
	local  bool
	protos []string
	cfg    *tls.Config
}

// clientTLSFor is p.clientTLS's GetConfigForClient: the config of one
// handshake, by the ALPN answer and locality in its context's
// clientHandshake (one of p.clientConfigs, made once). These configs have
// no ticket keys of their own, so crypto/tls uses p.clientTLS's.
func (p *Proxy) clientTLSFor(chi *tls.ClientHelloInfo) (*tls.Config, error) {
	hs, ok := chi.Context().Value(clientHandshakeKey{}).(*clientHandshake)
	if !ok {
		return nil, errors.New("client handshake without its flow")
	}
	// A client that supports none of localCurves (post-quantum only)
	// gets the default list.
	local := hs.local && slices.ContainsFunc(chi.SupportedCurves, func(c tls.CurveID) bool { return slices.Contains(localCurves, c) })
	for _, c := range p.clientConfigs {
		if c.local == local && slices.Equal(c.protos, hs.protos) {
			return c.cfg, nil
		}
	}
	return p.newClientConfig(local, hs.protos), nil
}

// clientLeaf is the GetCertificate of the client configs: the leaf for
// the name in the handshake's clientHandshake (the SNI, else the CONNECT
// host or the original destination's IP).
func (p *Proxy) clientLeaf(chi *tls.ClientHelloInfo) (*tls.Certificate, error) {
	hs, ok := chi.Context().Value(clientHandshakeKey{}).(*clientHandshake)
	if !ok {
		return nil, errors.New("client handshake without its flow")
	}
	return p.leaf(chi.Context(), hs.name)
}

// newClientTLS makes p.clientTLS and the configs clientTLSFor hands
// out: node-local or not, offering no ALPN, h2 or http/1.1.
func (p *Proxy) newClientTLS() {
	p.clientTLS = &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: p.clientTLSFor}
	for _, local := range []bool{true, false} {
		for _, protos := range [][]string{nil, {"h2"}, {"http/1.1"}} {
			p.clientConfigs = append(p.clientConfigs, clientConfig{local, protos, p.newClientConfig(local, protos)})
		}
	}
}

func (p *Proxy) newClientConfig(local bool, protos []string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: protos, GetCertificate: p.clientLeaf}
	if local {
		c.CurvePreferences = localCurves
	}
	return c
}

// serveDecrypted decides from the first plaintext bytes whether the client
// speaks HTTP (served and decided per request) or another protocol over
// TLS (relayed decrypted, with an L4 record). A client that negotiated an
// HTTP ALPN is HTTP. Without one, a client that says nothing for
// PeekTimeout may be waiting for a server greeting (IMAPS, SMTPS): then
// whichever side speaks first decides, and since an HTTP server never
// speaks first, waiting can't make HTTP escape per-request policy.
//
// A client that closes within untrustedCloseWindow of the handshake
// without a byte rejected the certificate after TLS accepted it (an
// application that pins): recorded as client_untrusted for name. Not
// when the upstream could not be reached (t.err): the record then says
// that, and the memory of rejections that the policy reads is left
// alone, as a client leaving then may be one that gave up on it.
func (f *flow) serveDecrypted(tc *tls.Conn, t *target, name string) {
	p := f.p
	pc := newPeekedConn(tc, 64)
	handshake := time.Now()
	if f.alpn == "h2" || f.alpn == "http/1.1" || t.err != nil {
		_ = tc.SetReadDeadline(handshake.Add(untrustedCloseWindow))
		if _, err := pc.Peek(1); closedAfterHandshake(err, handshake) {
			const why = "client closed the connection right after the TLS handshake without a request"
			if t.err == nil {
				f.clientUntrusted(name, why)
				return
			}
			rec := f.l4Record()
			rec.Host = name
			rec.Decision, rec.Reason, rec.Error = audit.DecisionError, t.fail, t.err.Error()+"; the "+why
			f.p.emit(rec)
			return
		}
		_ = tc.SetReadDeadline(time.Time{})
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
		if closedAfterHandshake(err, handshake) {
			f.clientUntrusted(name, "client closed the connection right after the TLS handshake without a word")
		}
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
	if err == nil {
		return false
	}
	// A deadline's error first: it is the common one (net/http ends its
	// background read of every request with one), and errors.As's target
	// would escape to the heap per call.
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
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
			rec.Decision, rec.Reason, rec.Error = audit.DecisionError, audit.ReasonUpstreamError, "upstream closed before anyone spoke: "+err.Error()
			f.p.emit(rec)
			return
		}
		f.relayDecrypted(pc, upc, t)
	}
}

// dialUpstreamTLS connects to the target first, so the client's handshake
// can mirror the upstream's ALPN. Failures are kept on t for the 502s.
func (f *flow) dialUpstreamTLS(t *target, name string, offer []string) {
	p := f.p
	raw, addr, err := p.dialAny(f.ctx, t.conn.Addrs, t.port)
	if err != nil {
		t.err, t.fail = fmt.Errorf("upstream %s unreachable: %w", name, err), audit.ReasonUpstreamUnreachable
		return
	}
	t.addr = addr
	hctx, cancel := context.WithTimeout(f.ctx, p.cfg.HandshakeTimeout.D())
	defer cancel()
	up := newUpstreamTLS(raw, p.upstreamTLSConfig(name, offer))
	if err := up.HandshakeContext(hctx); err != nil {
		raw.Close()
		var verr *tls.CertificateVerificationError
		if errors.As(err, &verr) {
			t.err, t.fail = fmt.Errorf("upstream certificate verification failed for %s: %w", name, verr.Err), audit.ReasonUpstreamVerify
		} else {
			t.err, t.fail = fmt.Errorf("upstream TLS handshake with %s failed: %w", name, err), audit.ReasonUpstreamTLS
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
