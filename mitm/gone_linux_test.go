package mitm

import (
	"testing"
)

// A close the goneSet reports for a connection it no longer watches
// (the event raced with goneRemove) does not carry over to the
// connection's next watch: its requests start no read of their own.
func TestGoneWatchStaleHup(t *testing.T) {
	_, server := tcpPair(t)
	c := &h1Conn{Conn: server}
	s := newGoneSet()
	if !s.add(c) {
		t.Skip("no epoll set")
	}
	tok := c.gw.token
	c.goneRemove()
	c.gw.hupped(c, tok) // the event of the old watch, delivered late
	if !s.add(c) {
		t.Fatal("add again")
	}
	c.gw.begin(c, true)
	c.gw.mu.Lock()
	bg := c.gw.bg
	c.gw.mu.Unlock()
	if bg != nil {
		t.Error("a request started a read of the connection for a close that was not reported")
		c.gw.end(c)
	}
	c.goneRemove()
}
