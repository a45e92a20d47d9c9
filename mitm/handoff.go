package mitm

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// h1Server is the one net/http server of the proxy's HTTP/1.1 client
// connections (decrypted, plain and inside CONNECT): a flow hands its
// connection over and its goroutine returns, so an idle keep-alive
// connection costs net/http's own goroutine and buffers, not also a
// goroutine of Sluice's blocked until it closes. The flow's clean-up runs
// when the connection is closed (flow.finally, h1Conn.onClose).
//
// Serve runs on a goroutine only while connections arrive: its Accept
// gives up after h1AcceptIdle without one, and the next handoff starts it
// again, so an unused proxy keeps no goroutine.
type h1Server struct {
	srv         *http.Server
	idleTimeout time.Duration // of a parked connection (h1Conn.park)
	parked      *parkSet      // nil: parked connections wait on a goroutine each
	gone        *goneSet      // nil: no fast loop (h1fast.go)
	noFast      bool          // every connection to net/http (tests)
	fastServed  atomic.Int64  // requests the fast loop served (tests)

	mu      sync.Mutex
	queue   []net.Conn
	running bool
	ready   chan struct{} // a connection was queued
}

// h1AcceptIdle is how long Serve waits for a connection before it returns.
const h1AcceptIdle = time.Second

// errAcceptIdle ends a Serve that had no connection for h1AcceptIdle.
var errAcceptIdle = errors.New("no connection handed over")

func newH1Server(p *Proxy) *h1Server {
	s := &h1Server{ready: make(chan struct{}, 1), idleTimeout: p.cfg.IdleTimeout.D(), parked: newParkSet(), gone: newGoneSet()}
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(serveFlowRequest),
		ReadHeaderTimeout: p.cfg.HandshakeTimeout.D(),
		IdleTimeout:       p.cfg.IdleTimeout.D(),
		MaxHeaderBytes:    p.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(p.errLog.Handler(), slog.LevelDebug),
		ConnState: func(nc net.Conn, st http.ConnState) {
			nc.(*h1Conn).idle.Store(st == http.StateIdle)
		},
		ConnContext: func(_ context.Context, nc net.Conn) context.Context {
			f := nc.(*h1Conn).fl
			return context.WithValue(context.WithValue(f.ctx, http.ServerContextKey, s.srv), flowKey{}, f)
		},
	}
	return s
}

// serveFlowRequest hands a request to the flow of its connection.
func serveFlowRequest(w http.ResponseWriter, r *http.Request) {
	r.Context().Value(flowKey{}).(*flow).ServeHTTP(w, r)
}

// serveStd hands hc to net/http's server, which serves it until it is
// closed (or parks it while idle).
func (s *h1Server) serveStd(hc *h1Conn) {
	s.mu.Lock()
	s.queue = append(s.queue, hc)
	start := !s.running
	s.running = true
	s.mu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default:
	}
	if start {
		go func() { _ = s.srv.Serve(s) }()
	}
}

// Accept is the handed-over connections, in order.
func (s *h1Server) Accept() (net.Conn, error) {
	var timer *time.Timer
	expired := false
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			c := s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
			if len(s.queue) == 0 {
				s.queue = nil
			}
			s.mu.Unlock()
			if timer != nil {
				timer.Stop()
			}
			return c, nil
		}
		if expired {
			s.running = false // under mu: the next serve starts Serve again
			s.mu.Unlock()
			return nil, errAcceptIdle
		}
		s.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(h1AcceptIdle)
		}
		select {
		case <-s.ready:
		case <-timer.C:
			expired = true
		}
	}
}

// Close is a no-op: Serve closes its listener when it returns, and this
// one outlives every Serve.
func (s *h1Server) Close() error { return nil }

func (s *h1Server) Addr() net.Addr { return h1ServerAddr{} }

type h1ServerAddr struct{}

func (h1ServerAddr) Network() string { return "handoff" }
func (h1ServerAddr) String() string  { return "handoff" }
