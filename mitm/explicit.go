package mitm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

// ServeExplicit runs the explicit HTTP proxy on ln (the HTTP_PROXY /
// HTTPS_PROXY setup): CONNECT host:port tunnels go through the same
// peek, policy and TLS path as transparent connections, and absolute-form
// http:// requests are forwarded. The workload is the client address, or
// the user its Proxy-Authorization names when proxy.clients.usersFile is
// set (see clientStage, which also refuses addresses outside
// proxy.clients.allowCIDRs).
// Origin-form GET /healthz and /readyz are the proxy's own probes (see
// serveHealth), answered without policy or record.
// It returns nil when ctx is cancelled, after closing ln and every
// connection it serves.
func (p *Proxy) ServeExplicit(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	el := &explicitListener{Listener: ln, p: p, ctx: ctx, wg: &wg,
		conns: make(chan net.Conn), errc: make(chan error, 1), served: make(chan struct{}), loopDone: make(chan struct{})}
	go el.acceptLoop()
	srv := &http.Server{
		Handler:           http.HandlerFunc(p.serveExplicitRequest),
		ReadHeaderTimeout: p.cfg.HandshakeTimeout.D(),
		IdleTimeout:       p.cfg.IdleTimeout.D(),
		MaxHeaderBytes:    p.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(p.errLog.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext: func(c context.Context, nc net.Conn) context.Context {
			if hc, ok := nc.(*h1Conn); ok {
				return context.WithValue(c, flowKey{}, hc.fl)
			}
			return c
		},
	}
	stop := context.AfterFunc(ctx, func() { _ = srv.Close() })
	defer stop()
	err := srv.Serve(el)
	_ = srv.Close()
	// Serve may return before it took the listener (a Close that came
	// first): the accept loop ends when it is closed here.
	_ = ln.Close()
	<-el.loopDone
	close(el.served)
	wg.Wait()
	if ctx.Err() != nil || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("explicit proxy on %s: %w", ln.Addr(), err)
}

type flowKey struct{}

// explicitListener accepts the explicit proxy's connections (its accept
// loop, explicit_first.go), wraps each for framing checks with a flow
// named by the client address, serves a first request that is a plain
// CONNECT itself and hands the others to net/http's server, whose
// listener it is.
type explicitListener struct {
	net.Listener
	p   *Proxy
	ctx context.Context
	wg  *sync.WaitGroup
	// conns are net/http's to serve (Accept); errc is the accept loop's
	// end, loopDone closed after it; served is closed when net/http's
	// server has returned.
	conns    chan net.Conn
	errc     chan error
	loopDone chan struct{}
	served   chan struct{}
}

// admit gives c its slot and flow; nil when the client has too many
// connections open (it got 503 and was closed).
func (l *explicitListener) admit(c net.Conn) *h1Conn {
	id := workload.Identity{}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		id.Client = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if ok, why := l.p.slots.acquire(slotKey(&id)); !ok {
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"+
			string(errorBody(http.StatusServiceUnavailable, "", audit.ReasonTooManyConns)))
		l.p.refuse(c, Destination{}, id, why)
		return nil
	}
	return l.wrap(c, id)
}

func (l *explicitListener) wrap(c net.Conn, id workload.Identity) *h1Conn {
	f := &flow{p: l.p, ctx: l.ctx, id: id, start: time.Now(), listener: l, tlsMode: audit.TLSNone, slot: slotKey(&id)}
	hc := newH1Conn(c, f)
	f.h1 = hc
	l.wg.Add(1)
	l.p.obs.ConnOpened()
	hc.onClose = func() {
		f.releaseTargets()
		l.closed(f.slotKey()) // the user's, once the client authenticated
	}
	return hc
}

// closed is the end of an explicit connection that held slot.
func (l *explicitListener) closed(slot string) {
	l.p.slots.release(slot)
	l.p.obs.ConnClosed()
	l.wg.Done()
}

// detach takes hc, the listener's connection that net/http hijacked for
// a CONNECT tunnel, out of the tunnel's way: the tunnel is served on the
// connection under hc, and the func returned, to run once the tunnel has
// closed that, is the rest of hc's clean-up (onClose will not run). An
// idle tunnel then keeps neither hc with its framer nor the flow of its
// CONNECT (TestIdleExplicitTunnelKeepsNoListenerConn says what that
// cost), and its reads and writes skip a framer that has nothing to
// track. The flow serves no request after its CONNECT, so the targets
// of its earlier absolute-form requests go now, not when the tunnel
// ends; the slot is held for the tunnel's life.
func (l *explicitListener) detach(hc *h1Conn) (net.Conn, func()) {
	hc.closeOnce.Do(hc.unhook)
	hc.fl.releaseTargets()
	slot := hc.fl.slotKey()
	return hc.Conn, func() { l.closed(slot) }
}

func (p *Proxy) serveExplicitRequest(w http.ResponseWriter, r *http.Request) {
	f, _ := r.Context().Value(flowKey{}).(*flow)
	if serveHealth(w, r) {
		// Each request takes its head from the connection's framing
		// tracker (the framing stage); a probe, answered before the
		// chain, takes its own, or the next request would be judged
		// (Content-Length with Transfer-Encoding, its size) and
		// recorded by it.
		if f != nil && f.h1 != nil {
			f.h1.nextHead()
		}
		return
	}
	if f == nil {
		http.Error(w, "no flow", http.StatusInternalServerError)
		return
	}
	f.ServeHTTP(w, r)
}

// serveHealth answers the probes of an explicit proxy's own listener:
// an origin-form GET or HEAD of /healthz (the process serves) or /readyz
// (it accepts requests: 503 once it is shutting down). A proxy request
// names its target in absolute form or with CONNECT, so these can't be
// mistaken for one. It reports whether it answered.
func serveHealth(w http.ResponseWriter, r *http.Request) bool {
	if r.URL.IsAbs() || r.Method == http.MethodConnect || (r.URL.Path != "/healthz" && r.URL.Path != "/readyz") {
		return false
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	switch {
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		h.Set("Allow", "GET, HEAD")
		w.WriteHeader(http.StatusMethodNotAllowed)
	case r.URL.Path == "/readyz" && r.Context().Err() != nil:
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "not ready: shutting down\n")
	case r.URL.Path == "/readyz":
		_, _ = io.WriteString(w, "ready\n")
	default:
		_, _ = io.WriteString(w, "ok\n")
	}
	return true
}

// connectStage serves an explicit proxy's CONNECT: the tunnel is served
// like a transparent connection to host:port, through the whole chain
// again for every request inside it.
type connectStage struct{}

func (connectStage) Name() string { return "connect" }

func (connectStage) Request(x *Exchange) *Answer {
	f, r := x.f, x.Req
	if !f.explicit() || r.Method != http.MethodConnect {
		return nil
	}
	host, portStr, err := net.SplitHostPort(r.Host)
	port, perr := strconv.ParseUint(portStr, 10, 16)
	if err != nil || perr != nil || host == "" || port == 0 {
		return fail(http.StatusBadRequest, audit.ReasonMalformed, fmt.Sprintf("CONNECT target %q: want host:port", r.Host))
	}
	f.p.serveConnect(x.w, f, Destination{Host: host, Port: uint16(port)})
	return answered
}

var _ Stage = connectStage{}

// serveConnect answers a CONNECT and serves the tunnel like a transparent
// connection to dst.
func (p *Proxy) serveConnect(w http.ResponseWriter, f *flow, dst Destination) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.log.Error("hijack CONNECT", audit.KeyError, err.Error())
		return
	}
	_ = conn.SetDeadline(time.Time{})
	if _, err = brw.WriteString("HTTP/1.1 200 Connection established\r\n\r\n"); err == nil {
		err = brw.Flush()
	}
	if err != nil {
		conn.Close()
		return
	}
	// Under ServeExplicit the hijacked conn is always the flow's h1Conn;
	// a flow of another listener (none today) keeps its conn and its
	// clean-up as they are.
	var done func()
	if hc, ok := conn.(*h1Conn); ok && hc == f.h1 && f.listener != nil {
		conn, done = f.listener.detach(hc)
	}
	c := newBufferedConn(conn, brw.Reader)
	if a, err := netip.ParseAddr(dst.Host); err == nil {
		dst.Host = a.Unmap().String()
	}
	p.serve(f.ctx, c, dst, f.id, true, done)
}

// bufferedConn lets a hijacked connection keep the bytes its bufio.Reader
// already read.
type bufferedConn struct {
	net.Conn
	br *bufio.Reader
	n  int // bytes of br still to return
}

func (c *bufferedConn) Read(b []byte) (int, error) {
	if c.n == 0 {
		return c.Conn.Read(b)
	}
	n, err := c.br.Read(b[:min(len(b), c.n)])
	c.n -= n
	if c.n == 0 {
		c.br = nil
	}
	return n, err
}

// buffered is how many bytes read before the hijack Read has yet to
// return.
func (c *bufferedConn) buffered() int { return c.n }

// CloseWrite half-closes the underlying connection when it can.
func (c *bufferedConn) CloseWrite() error { return closeWrite(c.Conn) }

func newBufferedConn(c net.Conn, br *bufio.Reader) net.Conn {
	if br == nil || br.Buffered() == 0 {
		return c
	}
	return &bufferedConn{Conn: c, br: br, n: br.Buffered()}
}
