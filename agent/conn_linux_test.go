package agent

import (
	"net"
	"testing"
	"time"
)

// peerReset tells a reset connection (whose origin will never come) from
// a live one and from one the peer only half-closed.
func TestPeerReset(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pair := func() (client *net.TCPConn, server net.Conn) {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		return c.(*net.TCPConn), s
	}
	eventually := func(s net.Conn, want bool) bool {
		for range 100 {
			if peerReset(s) == want {
				return true
			}
			time.Sleep(5 * time.Millisecond)
		}
		return false
	}

	c, s := pair()
	if peerReset(s) {
		t.Error("live connection: reset")
	}
	_ = c.SetLinger(0)
	c.Close() // RST
	if !eventually(s, true) {
		t.Error("connection the peer reset: not reset")
	}

	c, s = pair()
	_ = c.CloseWrite() // FIN only
	time.Sleep(50 * time.Millisecond)
	if peerReset(s) {
		t.Error("connection the peer half-closed: reset")
	}
}
