package mitm

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

type closeWriter interface{ CloseWrite() error }

// closeWrite half-closes c when it can, and closes it otherwise.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// relay copies bytes both ways between client and upstream until both
// directions end, ctx is cancelled, or neither side sends anything for
// idle. It closes upstream; the caller closes client. in counts
// client->upstream bytes, out upstream->client.
func relay(ctx context.Context, client, upstream net.Conn, idle time.Duration) (in, out int64, err error) {
	defer upstream.Close()
	stop := context.AfterFunc(ctx, func() {
		client.Close()
		upstream.Close()
	})
	defer stop()
	var wg sync.WaitGroup
	var inErr, outErr error
	wg.Add(2)
	act := &activity{}
	act.touch()
	go func() {
		defer wg.Done()
		in, inErr = copyIdle(upstream, client, client, idle, act)
		_ = closeWrite(upstream)
	}()
	go func() {
		defer wg.Done()
		out, outErr = copyIdle(client, upstream, upstream, idle, act)
		_ = closeWrite(client)
	}()
	wg.Wait()
	return in, out, firstRealError(inErr, outErr)
}

// pipe is relay for a hijacked client whose reads go through r and an
// upgraded upstream body.
func pipe(ctx context.Context, r io.Reader, client net.Conn, up io.ReadWriteCloser) (in, out int64, err error) {
	stop := context.AfterFunc(ctx, func() {
		client.Close()
		up.Close()
	})
	defer stop()
	var wg sync.WaitGroup
	var inErr, outErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		in, inErr = io.Copy(up, r)
		if cw, ok := up.(closeWriter); ok {
			_ = cw.CloseWrite()
		} else {
			up.Close()
		}
	}()
	go func() {
		defer wg.Done()
		out, outErr = io.Copy(client, up)
		client.Close()
		up.Close()
	}()
	wg.Wait()
	return in, out, firstRealError(inErr, outErr)
}

// activity is the last time either direction moved a byte.
type activity struct {
	mu sync.Mutex
	t  time.Time
}

func (a *activity) touch() {
	a.mu.Lock()
	a.t = time.Now()
	a.mu.Unlock()
}

func (a *activity) since() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return time.Since(a.t)
}

// copyIdle copies src to dst; a read that waits longer than idle ends the
// copy only if the other direction was idle too.
func copyIdle(dst io.Writer, src io.Reader, srcConn net.Conn, idle time.Duration, act *activity) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		_ = srcConn.SetReadDeadline(time.Now().Add(idle))
		m, err := src.Read(buf)
		if m > 0 {
			act.touch()
			w, werr := dst.Write(buf[:m])
			n += int64(w)
			if werr != nil {
				return n, werr
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && act.since() < idle {
				continue
			}
			if err == io.EOF {
				return n, nil
			}
			return n, err
		}
	}
}

func firstRealError(errs ...error) error {
	for _, e := range errs {
		if e != nil && !errors.Is(e, net.ErrClosed) && !errors.Is(e, io.EOF) {
			return e
		}
	}
	return nil
}

// serveOther relays a flow that is neither TLS nor HTTP (or a pass-through
// TLS flow when mode is TLSPassthrough) and records it at L4.
func (f *flow) serveOther(c net.Conn, mode string, up *peekedConn) {
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
	var upstream net.Conn
	if up != nil {
		upstream = up // dialed while racing for the first byte
	} else {
		c, _, err := p.dialAny(f.ctx, t.conn.Addrs, t.port)
		if err != nil {
			rec.Decision, rec.Reason, rec.Error = audit.DecisionError, audit.ReasonUpstreamUnreachable, err.Error()
			rec.Duration = time.Since(f.start)
			p.emit(rec)
			return
		}
		upstream = c
	}
	if addr, err := netip.ParseAddrPort(upstream.RemoteAddr().String()); err == nil {
		rec.DstIP = addr.Addr().Unmap()
		rec.UpstreamAddr = netip.AddrPortFrom(rec.DstIP, addr.Port()).String()
	}
	in, out, err := relay(f.ctx, c, upstream, p.cfg.IdleTimeout.D())
	rec.BytesIn, rec.BytesOut = in, out
	if err != nil {
		rec.Error = err.Error()
	}
	rec.Duration = time.Since(f.start)
	p.emit(rec)
}

// opaque asks the policy again about t's connection, now known not to be
// HTTP: rules with methods or paths can't match it, and what is left
// decides (a connection that was waiting for per-request decisions must
// not be relayed unchecked).
func (f *flow) opaque(t *target) policy.ConnDecision {
	return f.p.decider().Connection(f.ctx, t.conn.OpaqueCopy())
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
			rec.Decision, rec.Reason, rec.Error = audit.DecisionError, audit.ReasonUpstreamUnreachable, err.Error()
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
	client := f.tap(pc, false)
	defer client.Close()
	in, out, err := relay(f.ctx, client, up, p.cfg.IdleTimeout.D())
	rec.BytesIn, rec.BytesOut = in, out
	if err != nil {
		rec.Error = err.Error()
	}
	rec.Duration = time.Since(f.start)
	p.emit(rec)
}
