package mitm

import (
	"context"
	"crypto/tls"
	"net"
	"syscall"
	"time"
)

// Parking. An idle keep-alive HTTP/1.1 connection that net/http let go of
// (h1Conn.idleRead), or an HTTP/2 one with no stream open (h2SrvConn.park,
// h2park.go), waits for its next byte in the proxy's parkSet: no
// goroutine, stack or buffer of its own, only its socket in an epoll set
// (park_linux.go). When the socket turns readable (a request, or the
// client closing) a goroutine reads the first byte, as long as the idle
// timeout allows, and hands the connection back to the server (resume);
// at the idle deadline or the end of its flow's context it is closed
// (closeParked), and the flow finishes as it would under net/http. Where
// the socket can't be watched (another OS, a wrapper that is not Sluice's
// own such as a capture, bytes still buffered above the socket) the
// connection waits on a goroutine instead (resume at once).

// parkedConn is a connection a parkSet holds.
type parkedConn interface {
	links() *parkLinks
	// flowCtx ends when the connection's flow ends: then it is closed
	// (closeParked).
	flowCtx() context.Context
	// resume serves the connection again once its socket turned
	// readable; on a goroutine of its own.
	resume()
	// closeParked closes it: its idle deadline passed or its flow ended.
	closeParked()
}

func (c *h1Conn) links() *parkLinks        { return &c.pk }
func (c *h1Conn) flowCtx() context.Context { return c.fl.ctx }

// park is Close of a connection net/http let go of while idle.
func (c *h1Conn) park() {
	c.mu.Lock()
	c.fr.release()
	c.mu.Unlock()
	sock, tc := socketOf(c.Conn)
	if tc != nil {
		releaseTLSInput(tc) // on net/http's goroutine, the last to read
	}
	if s := c.srv.parked; s != nil && sock != nil && s.add(c, sock, c.idleSince.Add(c.srv.idleTimeout)) {
		return
	}
	go c.resume()
}

// resume waits for the parked connection's next byte until its idle
// deadline, then hands it to the server again, or closes it.
func (c *h1Conn) resume() {
	_ = c.Conn.SetReadDeadline(c.idleSince.Add(c.srv.idleTimeout))
	var b [1]byte
	n, _ := c.Conn.Read(b[:])
	c.parking.Store(false)
	if n == 0 { // idle timeout, the client closed, or the flow was cancelled
		c.Close()
		return
	}
	_ = c.Conn.SetReadDeadline(time.Time{})
	c.next = []byte{b[0]}
	c.idle.Store(false)
	c.srv.serve(c)
}

// closeParked closes a parked connection: idle timeout or the end of its
// flow.
func (c *h1Conn) closeParked() {
	c.parking.Store(false)
	c.Close()
}

// socketOf follows c's wrappers down to its TCP socket, or returns nil if
// one of them is not Sluice's own or holds bytes read from the socket and
// not yet returned: those would wait unnoticed while the socket is quiet.
// tc is the TLS layer on the way, if any.
// crypto/tls holds none once a read through it has timed out with nothing
// (idleRead): a complete record would have been returned, and a partial
// one needs more bytes from the socket.
func socketOf(c net.Conn) (sock syscall.RawConn, tc *tls.Conn) {
	for {
		switch w := c.(type) {
		case *peekedConn:
			if w.Buffered() > 0 {
				return nil, tc
			}
		case *bufferedConn:
			if w.buffered() > 0 {
				return nil, tc
			}
		case *h1Conn: // under a CONNECT tunnel not from ServeExplicit (its tunnels are detached: explicitListener.detach)
			if len(w.next) > 0 {
				return nil, tc
			}
			w.mu.Lock()
			w.fr.release() // hijacked: its framer has stopped
			w.mu.Unlock()
		case *tls.Conn:
			tc = w
		case *net.TCPConn:
			return tcpSocket(w), tc
		}
		if c = innerConn(c); c == nil {
			return nil, tc
		}
	}
}

// rawSocketOf follows c's wrappers (Sluice's own) down to its TCP socket;
// nil when one of them is not Sluice's own.
func rawSocketOf(c net.Conn) syscall.RawConn {
	for {
		if w, ok := c.(*net.TCPConn); ok {
			return tcpSocket(w)
		}
		if c = innerConn(c); c == nil {
			return nil
		}
	}
}

// innerConn is the connection c wraps, when c is one of Sluice's own
// wrappers or a tls.Conn; else nil.
func innerConn(c net.Conn) net.Conn {
	switch w := c.(type) {
	case *peekedConn:
		return w.Conn
	case coalescingTLSConn:
		return w.tc
	case *coalescingConn:
		return w.Conn
	case *bufferedConn:
		return w.Conn
	case *h1Conn:
		return w.Conn
	case *alertWatch:
		return w.Conn
	case *recordConn:
		return w.Conn
	case *sysConn:
		return w.TCPConn
	case *tls.Conn:
		return w.NetConn()
	}
	return nil
}

func tcpSocket(c *net.TCPConn) syscall.RawConn {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}
