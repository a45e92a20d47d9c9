package mitm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

func (p *Proxy) serve(ctx context.Context, conn net.Conn, dst Destination, id workload.Identity, tunnel bool, done func()) {
	f := &flow{p: p, id: id, dst: dst, start: time.Now(), tunnel: tunnel}
	ctx, cancel := context.WithCancel(ctx)
	f.ctx = ctx
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer f.finally(func() {
		stop()
		cancel()
		conn.Close()
		if done != nil {
			done()
		}
	})
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("panic serving connection", audit.KeyClient, id.Client.String(), audit.KeyPanic, fmt.Sprint(r), audit.KeyStack, string(debug.Stack()))
			rec := f.l4Record()
			rec.Decision, rec.Reason, rec.Error = audit.DecisionError, audit.ReasonInternal, "panic: "+fmt.Sprint(r)
			p.emit(rec)
		}
	}()

	pc := newPeekedConn(conn, peekBufferSize)
	br := pc
	_ = conn.SetReadDeadline(time.Now().Add(p.cfg.PeekTimeout.D()))
	var first []byte
	var err error
	if f.serverMaySpeakFirst() {
		var up *peekedConn
		if first, up, err = f.raceFirstByte(pc); up != nil {
			_ = conn.SetReadDeadline(time.Time{})
			f.serveOther(pc, "", up) // the upstream spoke first: not HTTP, not TLS
			return
		}
	} else {
		first, err = br.Peek(1)
	}
	if err != nil {
		if isTimeout(err) {
			_ = conn.SetReadDeadline(time.Time{})
			f.serveOther(pc, "", nil)
			return
		}
		rec := f.l4Record()
		rec.Reason = audit.ReasonClientSilent
		if errors.Is(err, io.EOF) {
			// Opened and closed without a byte: a client's spare
			// keep-alive connection, not a failure.
			rec.Decision, rec.End = audit.DecisionClosed, audit.EndClientClosed
		} else {
			rec.Decision, rec.Error = audit.DecisionError, fmt.Sprintf("read first byte: %v", err)
		}
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
			rec.Reason = audit.ReasonBadHello
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
		f.serveOther(pc, "", nil)
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

// clientFirstPorts are the ports whose protocols (HTTP, TLS) have the
// client speak first: no need to race the upstream for the first byte.
func clientFirstPort(port uint16) bool { return port == 80 || port == 443 }

// serverMaySpeakFirst reports whether the flow's protocol may be one where
// the server speaks first (SSH, SMTP, MySQL banners): a transparent
// connection to a port other than HTTP's and HTTPS's.
func (f *flow) serverMaySpeakFirst() bool {
	return f.dst.Addr.IsValid() && !f.tunnel && !clientFirstPort(f.dst.Port)
}

// raceFirstByte waits for the client's first byte while it connects to the
// upstream and waits for the upstream's, so that a server-speaks-first
// protocol gets its banner at once instead of after PeekTimeout. The
// upstream is dialed only where the policy allows the flow as opaque
// (by address and known names), and no byte of the client's goes to it
// before the flow is decided. It returns the client's first bytes (as
// pc.Peek(1) would), or up, the upstream connection with its first bytes
// buffered, when the upstream spoke first.
func (f *flow) raceFirstByte(pc *peekedConn) (first []byte, up *peekedConn, err error) {
	t := f.newTarget(f.dst.Host, f.dst.Port, false)
	if t.err != nil || f.opaque(t).Action == policy.Reject {
		first, err = pc.Peek(1) // denied as opaque: only the client may say otherwise
		return first, nil, err
	}
	upCh := make(chan *peekedConn, 1)
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	var dialed net.Conn
	var mu sync.Mutex
	go func() {
		c, _, err := f.p.dialAny(ctx, t.conn.Addrs, t.port)
		if err != nil {
			upCh <- nil
			return
		}
		mu.Lock()
		if ctx.Err() != nil { // the client spoke while we dialed
			mu.Unlock()
			c.Close()
			upCh <- nil
			return
		}
		dialed = c
		mu.Unlock()
		upc := newPeekedConn(c, 64)
		if _, err := upc.Peek(1); err != nil {
			c.Close()
			upCh <- nil
			return
		}
		upCh <- upc
	}()
	clientCh := make(chan error, 1)
	go func() { _, err := pc.Peek(1); clientCh <- err }()
	// stopUpstream ends the upstream side and closes what it dialed.
	stopUpstream := func() {
		cancel()
		mu.Lock()
		if dialed != nil {
			_ = dialed.SetReadDeadline(time.Unix(1, 0))
		}
		mu.Unlock()
		if upc := <-upCh; upc != nil {
			upc.Close()
		}
	}
	select {
	case err := <-clientCh:
		stopUpstream()
		first, _ := pc.Peek(1)
		return first, nil, err
	case upc := <-upCh:
		if upc == nil {
			// Unreachable, or closed without a word: the client decides.
			err := <-clientCh
			first, _ := pc.Peek(1)
			return first, nil, err
		}
		// The upstream spoke first. Stop waiting for the client (a
		// deadline error is not sticky on a net.Conn) and relay.
		_ = pc.SetReadDeadline(time.Unix(1, 0))
		<-clientCh
		_ = pc.SetReadDeadline(time.Time{})
		return nil, upc, nil
	}
}
