package mitm

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/nettest"
)

// tcpConns is tcpPair's connections as what they are.
func tcpConns(t testing.TB) (c, s *net.TCPConn) {
	a, b := tcpPair(t)
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// A sysConn is a net.Conn by the book: golang.org/x/net/nettest's
// conformance suite (data both ways, deadlines in the past and future,
// a Read and a Write at once, Close under way) passes over one pair of
// them.
func TestSysConnIsANetConn(t *testing.T) {
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		c, s := tcpConns(t)
		c1, c2 = newSysConn(c), newSysConn(s)
		if _, ok := c1.(*sysConn); !ok {
			t.Fatalf("newSysConn(%T) = %T, want *sysConn", c, c1)
		}
		return c1, c2, func() { c1.Close(); c2.Close() }, nil
	})
}

// A sysConn's errors read as net.TCPConn's own, text included: they end
// up in audit records and logs, and the layers above (crypto/tls,
// net/http, the pools) tell a timeout, a closed connection and the end
// of the stream apart by them.
func TestSysConnErrorsAreTCPConns(t *testing.T) {
	type outcome struct {
		text     string
		eof      bool
		timeout  bool
		deadline bool
		closed   bool
		errno    syscall.Errno
	}
	of := func(err error) outcome {
		o := outcome{text: err.Error(), eof: err == io.EOF, deadline: errors.Is(err, os.ErrDeadlineExceeded), closed: errors.Is(err, net.ErrClosed)} //nolint:errorlint // io.EOF unwrapped, as net's
		var ne net.Error
		o.timeout = errors.As(err, &ne) && ne.Timeout()
		errors.As(err, &o.errno)
		return o
	}
	cases := []struct {
		name string
		// do makes the error on c, whose peer is s.
		do func(t *testing.T, c net.Conn, s *net.TCPConn) error
	}{
		{"read at the end of the stream", func(t *testing.T, c net.Conn, s *net.TCPConn) error {
			s.Close()
			_, err := c.Read(make([]byte, 8))
			return err
		}},
		{"read past its deadline", func(t *testing.T, c net.Conn, s *net.TCPConn) error {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			_, err := c.Read(make([]byte, 8))
			return err
		}},
		{"read after close", func(t *testing.T, c net.Conn, s *net.TCPConn) error {
			c.Close()
			_, err := c.Read(make([]byte, 8))
			return err
		}},
		{"read after the peer's reset", func(t *testing.T, c net.Conn, s *net.TCPConn) error {
			_ = s.SetLinger(0)
			s.Close()
			time.Sleep(20 * time.Millisecond)
			_, err := c.Read(make([]byte, 8))
			return err
		}},
		{"write past its deadline", func(t *testing.T, c net.Conn, s *net.TCPConn) error {
			_ = c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			big := make([]byte, 64<<20) // more than both socket buffers: s reads nothing
			_, err := c.Write(big)
			return err
		}},
		{"write after the peer's reset", func(t *testing.T, c net.Conn, s *net.TCPConn) error {
			_ = s.SetLinger(0)
			s.Close()
			time.Sleep(20 * time.Millisecond)
			var err error
			for range 3 { // the first write may still be taken
				if _, err = c.Write([]byte("x")); err != nil {
					break
				}
			}
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got [2]outcome
			for i, wrap := range []bool{false, true} {
				c, s := tcpConns(t)
				var conn net.Conn = c
				if wrap {
					conn = newSysConn(c)
				}
				err := tc.do(t, conn, s)
				c.Close()
				s.Close()
				if err == nil {
					t.Fatalf("wrapped %v: no error", wrap)
				}
				got[i] = of(err)
			}
			// The text names the ports, which differ: compare all but them.
			tcp, sys := got[0], got[1]
			tcp.text, sys.text = addrs.ReplaceAllString(tcp.text, "ADDR"), addrs.ReplaceAllString(sys.text, "ADDR")
			if tcp != sys {
				t.Errorf("sysConn's error\n %+v\nnet.TCPConn's\n %+v", sys, tcp)
			}
		})
	}
}

// addrs is an address and port in an error's text: the ports differ
// between the pairs compared.
var addrs = regexp.MustCompile(`127\.0\.0\.1:[0-9]+`)

// A write larger than the socket's buffers completes whole while the
// peer reads slowly: the writer waits for room in the poller and goes on
// where it stopped, and the bytes arrive in order.
func TestSysConnLargeWriteWaitsForRoom(t *testing.T) {
	c, s := tcpConns(t)
	defer c.Close()
	defer s.Close()
	w := newSysConn(c)
	want := make([]byte, 32<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	var wg sync.WaitGroup
	var n int
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		n, werr = w.Write(want)
		w.(*sysConn).CloseWrite()
	}()
	r := newSysConn(s)
	var got bytes.Buffer
	buf := make([]byte, 1000) // small reads: the writer fills the buffers and waits
	for {
		k, err := r.Read(buf)
		got.Write(buf[:k])
		if err == io.EOF { //nolint:errorlint // io.EOF unwrapped, as net's
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if werr != nil || n != len(want) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, werr, len(want))
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("read %d bytes, not the %d written in order", got.Len(), len(want))
	}
}

// One request and its answer over loopback, as the proxy's sockets do
// them, with net.TCPConn's reads and writes and with sysConn's.
func BenchmarkSysConnPingPong(b *testing.B) {
	for _, wrap := range []bool{false, true} {
		name := "net.TCPConn"
		if wrap {
			name = "sysConn"
		}
		b.Run(name, func(b *testing.B) {
			c, s := tcpConns(b)
			defer c.Close()
			defer s.Close()
			var cc, sc net.Conn = c, s
			if wrap {
				cc, sc = newSysConn(c), newSysConn(s)
			}
			go func() {
				buf := make([]byte, 512)
				for {
					n, err := sc.Read(buf)
					if err != nil {
						return
					}
					if _, err := sc.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
			msg := make([]byte, 512)
			buf := make([]byte, 512)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := cc.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(cc, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
