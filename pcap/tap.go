package pcap

import (
	"crypto/tls"
	"io"
	"net"
)

// Tap mirrors the plaintext of a client-side stream into the flow: what is
// read from fromClient is recorded as client-to-server, what is written to
// toClient as server-to-client. Conn does the same for a whole connection,
// which is how the proxy uses it on the decrypted client connection:
//
//	f := capture.NewFlow(pcap.FlowMeta{Client: peer, Server: dst, Workload: id.Name(), Host: host})
//	conn = f.Conn(conn) // conn.Close also closes f
//
// On a nil *Flow (capture off), Tap and Conn return their arguments
// unchanged.
func (f *Flow) Tap(fromClient io.Reader, toClient io.Writer) (io.Reader, io.Writer) {
	if f == nil {
		return fromClient, toClient
	}
	return &tapReader{r: fromClient, f: f}, &tapWriter{w: toClient, f: f}
}

// Conn wraps the client side connection c (already decrypted). The result
// forwards every other method to c, and Close also closes the flow. When
// c has ConnectionState (a *tls.Conn), so has the result, so servers still
// see the TLS state; CloseWrite half-closes c when c can, else closes it.
func (f *Flow) Conn(c net.Conn) net.Conn {
	if f == nil {
		return c
	}
	tc := &tapConn{Conn: c, f: f}
	if cs, ok := c.(connectionStater); ok {
		return &tapTLSConn{tapConn: tc, cs: cs}
	}
	return tc
}

type connectionStater interface {
	ConnectionState() tls.ConnectionState
}

type tapTLSConn struct {
	*tapConn
	cs connectionStater
}

func (t *tapTLSConn) ConnectionState() tls.ConnectionState { return t.cs.ConnectionState() }

type tapReader struct {
	r io.Reader
	f *Flow
}

func (t *tapReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.f.ClientToServer(p[:n])
	return n, err
}

type tapWriter struct {
	w io.Writer
	f *Flow
}

func (t *tapWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	t.f.ServerToClient(p[:n])
	return n, err
}

type tapConn struct {
	net.Conn
	f *Flow
}

func (t *tapConn) Read(p []byte) (int, error) {
	n, err := t.Conn.Read(p)
	t.f.ClientToServer(p[:n])
	return n, err
}

func (t *tapConn) Write(p []byte) (int, error) {
	n, err := t.Conn.Write(p)
	t.f.ServerToClient(p[:n])
	return n, err
}

func (t *tapConn) CloseWrite() error {
	if cw, ok := t.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return t.Conn.Close()
}

// NetConn is the connection the tap reads and writes, for a closer that
// must reach under it (a TLS session's socket after a write timed out).
func (t *tapConn) NetConn() net.Conn { return t.Conn }

func (t *tapConn) Close() error {
	t.f.Close()
	return t.Conn.Close()
}
