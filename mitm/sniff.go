package mitm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"strings"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

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
