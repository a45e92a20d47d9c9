package mitm

import (
	"crypto/tls"
	"net"
)

// recordConn is the connection under an upstream tls.Conn: it passes the
// bytes through and follows where the TLS records they carry end, so that
// a pooled connection whose crypto/tls holds the start of a record nobody
// asked for (read off the socket with the last record of a response, its
// rest still to come) is not given another request: that record would be
// read as the next response (midRecord, h1UpConn.usable). Reads are
// crypto/tls's, one at a time.
//
// It also answers the check for bytes crypto/tls holds (probe): a read
// through the tls.Conn that comes down to the socket has found nothing
// held, and is told so at once, with no system call, no read deadline
// (which takes the poller's lock and moves a timer, twice: set and
// replaced) and no allocation of its own (crypto/tls's read still makes
// its atLeastReader).
type recordConn struct {
	net.Conn
	hdr   int  // bytes of the current record's 5-byte header seen; 0 between records
	size  int  // the record's length, from its header
	left  int  // bytes of the record's body still to come
	probe bool // the next Read returns errNothingHeld, reading nothing
}

// newUpstreamTLS is tls.Client over raw, through a recordConn.
func newUpstreamTLS(raw net.Conn, cfg *tls.Config) *tls.Conn {
	return tls.Client(&recordConn{Conn: raw}, cfg)
}

func (c *recordConn) Read(b []byte) (int, error) {
	if c.probe {
		c.probe = false
		return 0, errNothingHeld
	}
	n, err := c.Conn.Read(b)
	c.follow(b[:n])
	return n, err
}

// follow moves past p: record bodies are skipped whole, headers read a
// byte at a time (type, version, length).
func (c *recordConn) follow(p []byte) {
	for len(p) > 0 {
		if c.left > 0 {
			k := min(c.left, len(p))
			c.left -= k
			p = p[k:]
			continue
		}
		switch c.hdr {
		case 3:
			c.size = int(p[0]) << 8
		case 4:
			c.size |= int(p[0])
		}
		p = p[1:]
		if c.hdr++; c.hdr == 5 {
			c.hdr, c.left = 0, c.size
		}
	}
}

// errNothingHeld is what a read with probe set returns: a temporary
// net.Error, which crypto/tls does not keep as the connection's error
// (readRecordOrCCS keeps only those that are not) and bufio hands back
// once, so the connection reads on after it. A timeout too, as the
// expired deadline's error it stands in for was: every layer between
// treats it as it treated that one. (TestH1PoolProbeFindsHeldBytes and
// TestH1PoolDeadlineCalls reuse a connection after it: a crypto/tls that
// kept it would fail them.) Only a renegotiation's handshake would keep
// it, and Sluice's upstream connections refuse renegotiation: a
// HelloRequest ends the connection with an alert, and it is not reused.
var errNothingHeld net.Error = nothingHeld{}

type nothingHeld struct{}

func (nothingHeld) Error() string   { return "probe: nothing held in crypto/tls" }
func (nothingHeld) Timeout() bool   { return true }
func (nothingHeld) Temporary() bool { return true }

// midRecord reports whether the bytes read so far end inside a record.
func (c *recordConn) midRecord() bool { return c.hdr > 0 || c.left > 0 }

// recordsOf is the recordConn under c, when c is a tls.Conn over one.
func recordsOf(c net.Conn) *recordConn {
	if tc, ok := c.(*tls.Conn); ok {
		rc, _ := tc.NetConn().(*recordConn)
		return rc
	}
	return nil
}
