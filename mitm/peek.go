package mitm

import (
	"bufio"
	"net"
)

// peekedConn is a client connection whose first bytes were read to look
// at them; Read returns those bytes first, then reads the connection. The
// look-ahead buffer grows only as far as a peek needs (a ClientHello is
// usually under 2 KiB) and is dropped once replayed.
type peekedConn struct {
	net.Conn
	buf []byte // read but not yet returned by Read
	max int
}

func newPeekedConn(c net.Conn, max int) *peekedConn { return &peekedConn{Conn: c, max: max} }

// Peek returns the first n bytes without consuming them, reading more
// from the connection as needed; bufio.ErrBufferFull past max bytes.
func (c *peekedConn) Peek(n int) ([]byte, error) {
	if n > c.max {
		return c.buf, bufio.ErrBufferFull
	}
	for len(c.buf) < n {
		if cap(c.buf) < n {
			nc := min(max(n, 2*cap(c.buf), 1024), c.max)
			nb := make([]byte, len(c.buf), nc)
			copy(nb, c.buf)
			c.buf = nb
		}
		m, err := c.Conn.Read(c.buf[len(c.buf):cap(c.buf)])
		c.buf = c.buf[:len(c.buf)+m]
		if err != nil && len(c.buf) < n {
			return c.buf, err
		}
	}
	return c.buf[:n], nil
}

// discard drops the first n peeked bytes (n <= Buffered()).
func (c *peekedConn) discard(n int) {
	c.buf = c.buf[min(n, len(c.buf)):]
	if len(c.buf) == 0 {
		c.buf = nil
	}
}

// Buffered is how many peeked bytes Read has yet to return.
func (c *peekedConn) Buffered() int { return len(c.buf) }

func (c *peekedConn) Read(b []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(b, c.buf)
		c.buf = c.buf[n:]
		if len(c.buf) == 0 {
			c.buf = nil
		}
		return n, nil
	}
	return c.Conn.Read(b)
}

// CloseWrite half-closes the underlying connection when it can.
func (c *peekedConn) CloseWrite() error { return closeWrite(c.Conn) }
