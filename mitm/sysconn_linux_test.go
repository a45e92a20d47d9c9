package mitm

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"runtime"
	"strconv"
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

// readCalls is the read system calls of this thread so far (syscr in
// /proc/thread-self/io, its own reads of the file included): the test's
// goroutine is locked to its thread.
func readCalls(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/io")
	if err != nil {
		t.Skipf("no per-thread I/O accounting here: %v", err)
	}
	m := regexp.MustCompile(`(?m)^syscr: (\d+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no syscr in /proc/thread-self/io:\n%s", b)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// A held request goes out with the read of its answer, not before, and
// that read waits for the answer without first finding nothing: one
// read system call where a write and then a read make two (the first
// finds nothing yet, EAGAIN), for a peer that answers after a while.
func TestSysConnHeldWriteGoesOutWithTheRead(t *testing.T) {
	for _, hold := range []bool{false, true} {
		t.Run(map[bool]string{false: "written", true: "held"}[hold], func(t *testing.T) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			sc, s := sysPair(t)
			if hold {
				sc.holdWrites(false)
			}
			if n, err := sc.Write([]byte("ping")); n != 4 || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
			// What the peer has before the read of the answer.
			_ = s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			buf := make([]byte, 8)
			n, err := s.Read(buf)
			if hold {
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("the peer read %q, %v before the answer's read; want nothing yet", buf[:n], err)
				}
			} else if string(buf[:n]) != "ping" {
				t.Fatalf("the peer read %q, %v; want ping at once", buf[:n], err)
			}
			_ = s.SetReadDeadline(time.Time{})
			done := make(chan error, 1)
			go func() {
				if hold {
					if _, err := io.ReadFull(s, buf[:4]); err != nil || string(buf[:4]) != "ping" {
						done <- fmt.Errorf("peer read %q, %v", buf[:4], err)
						return
					}
				}
				time.Sleep(20 * time.Millisecond) // the answer comes later than the read
				_, err := s.Write([]byte("pong"))
				done <- err
			}()
			_ = sc.SetReadDeadline(time.Now().Add(5 * time.Second)) // a lost wake-up fails, not hangs
			own := -readCalls(t) + readCalls(t)                     // readCalls' own reads
			before := readCalls(t)
			ans := make([]byte, 8)
			n, err = sc.Read(ans)
			calls := readCalls(t) - before - own
			if err != nil || string(ans[:n]) != "pong" {
				t.Fatalf("Read = %q, %v; want pong", ans[:n], err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			want := 2
			if hold {
				want = 1
			}
			if calls != want {
				t.Errorf("the answer took %d read calls, want %d", calls, want)
			}
		})
	}
}

// Held writes past maxHeld go out at once, what was held first.
func TestSysConnHeldWritePastTheLimitGoesOut(t *testing.T) {
	sc, s := sysPair(t)
	sc.holdWrites(false)
	sc.Write([]byte("head"))
	big := bytes.Repeat([]byte{'b'}, maxHeld)
	if n, err := sc.Write(big); n != len(big) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 4+len(big))
	if _, err := io.ReadFull(s, got); err != nil {
		t.Fatalf("the peer got %v before any read of the answer", err)
	}
	if string(got[:4]) != "head" || !bytes.Equal(got[4:], big) {
		t.Fatal("the peer got the bytes out of order")
	}
}

// A held request the socket can't take at once (its buffers full of
// what went before, a peer that reads slowly) still goes out whole,
// after what went before, and its answer is read.
func TestSysConnHeldWriteCutShortIsFinished(t *testing.T) {
	sc, s := sysPair(t)
	_ = sc.SetWriteBuffer(4096) // fixed: the kernel does not grow it
	// Fill the socket's buffers and the peer's: the write stops at its
	// deadline with the rest not taken.
	_ = sc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	before := make([]byte, 64<<20)
	n, err := sc.Write(before)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("filling the buffers: %d, %v; want the deadline", n, err)
	}
	before = before[:n]
	_ = sc.SetWriteDeadline(time.Time{})
	sc.holdWrites(false)
	req := bytes.Repeat([]byte{'r'}, maxHeld)
	sc.Write(req)
	done := make(chan error, 1)
	go func() {
		time.Sleep(50 * time.Millisecond) // the held send finds no room
		got := make([]byte, len(before)+len(req))
		if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got[len(before):], req) {
			done <- fmt.Errorf("peer read %d bytes, %v", len(got), err)
			return
		}
		_, err := s.Write([]byte("done"))
		done <- err
	}()
	_ = sc.SetDeadline(time.Now().Add(5 * time.Second))
	ans := make([]byte, 8)
	n, err = io.ReadAtLeast(sc, ans, 4)
	if err != nil || string(ans[:n]) != "done" {
		t.Fatalf("Read = %q, %v; want done", ans[:n], err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A held request that can't be sent fails the read of its answer with
// the send's error, named a write's, as Write would have failed: here
// the peer reset the connection; and a read deadline already past sends
// nothing.
func TestSysConnHeldWriteFailures(t *testing.T) {
	t.Run("peer reset", func(t *testing.T) {
		sc, s := sysPair(t)
		_ = s.SetLinger(0)
		s.Close()
		time.Sleep(20 * time.Millisecond)
		var err error
		for range 3 { // the first send may still be taken
			sc.holdWrites(false)
			sc.Write([]byte("x"))
			if _, err = sc.Read(make([]byte, 8)); err != nil {
				break
			}
		}
		if err == io.EOF { //nolint:errorlint // io.EOF unwrapped, as net's
			return // the reset came after the send: the read saw the end
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || (oe.Op != "write" && oe.Op != "read") {
			t.Fatalf("Read = %v; want a write's or read's *net.OpError, or io.EOF", err)
		}
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("Read = %v; want a reset or a broken pipe", err)
		}
	})
	t.Run("deadline past", func(t *testing.T) {
		sc, s := sysPair(t)
		sc.holdWrites(false)
		sc.Write([]byte("late"))
		_ = sc.SetReadDeadline(time.Now().Add(-time.Second))
		if _, err := sc.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read = %v; want the deadline's error", err)
		}
		_ = s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if n, err := s.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the peer read %d bytes, %v; want nothing sent", n, err)
		}
	})
}

// The upstream connections the proxy dials (newUpstreamTLS over
// newSysConn, or the socket alone) hold their requests; a connection
// with another layer between TLS and the socket does not, as a read
// might not reach the socket to send them.
func TestHeldSocketOfTheProxysUpstreamConns(t *testing.T) {
	sc, _ := sysPair(t)
	if heldSocket(newUpstreamTLS(sc, &tls.Config{})) != sc {
		t.Error("a TLS upstream connection's requests are not held")
	}
	if heldSocket(sc) != sc {
		t.Error("a plain upstream connection's requests are not held")
	}
	if got := heldSocket(tls.Client(&bufferedConn{Conn: sc}, &tls.Config{})); got != nil {
		t.Error("a TLS connection over another wrapper holds its requests")
	}
}

// Bytes copied in with ReadFrom (as bufio.Writer hands a large body to
// its writer's ReadFrom) go out after what was held, not before it.
func TestSysConnHeldWriteThenReadFromKeepsOrder(t *testing.T) {
	sc, s := sysPair(t)
	sc.holdWrites(false)
	bw := bufio.NewWriterSize(sc, 4096)
	bw.WriteString("POST / HTTP/1.1\r\nContent-Length: 10000\r\n\r\n")
	body := bytes.Repeat([]byte{'b'}, 10000)
	if _, err := io.CopyN(bw, bytes.NewReader(body), int64(len(body))); err != nil { // as writeH1Request copies a body
		t.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	go sc.Read(make([]byte, 8)) // sends what is still held, if anything
	want := append([]byte("POST / HTTP/1.1\r\nContent-Length: 10000\r\n\r\n"), body...)
	got := make([]byte, len(want))
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(s, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the peer got the request out of order: starts %q", got[:40])
	}
}

// A held request checked for a quiet peer (quiet) is not sent when the
// peer has sent something or closed before it: the read fails with
// errPeerNotQuiet and the peer gets nothing. A quiet peer gets it.
func TestSysConnHeldWriteQuietCheck(t *testing.T) {
	for _, c := range []struct {
		name  string
		peer  func(s *net.TCPConn) // what the peer does first
		quiet bool
	}{
		{"silent", func(*net.TCPConn) {}, true},
		{"a byte", func(s *net.TCPConn) { s.Write([]byte("x")) }, false},
		{"close", func(s *net.TCPConn) { s.CloseWrite() }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			sc, s := sysPair(t)
			c.peer(s)
			time.Sleep(20 * time.Millisecond)
			sc.holdWrites(true)
			sc.Write([]byte("ping"))
			if c.quiet {
				go func() {
					buf := make([]byte, 4)
					io.ReadFull(s, buf)
					s.Write(buf)
				}()
			}
			_ = sc.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 8)
			n, err := sc.Read(buf)
			if c.quiet {
				if err != nil || string(buf[:n]) != "ping" {
					t.Fatalf("Read = %q, %v; want the echo", buf[:n], err)
				}
				return
			}
			if !errors.Is(err, errPeerNotQuiet) {
				t.Fatalf("Read = %q, %v; want errPeerNotQuiet", buf[:n], err)
			}
			_ = s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if n, err := s.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the peer read %q, %v; want nothing sent", buf[:n], err)
			}
		})
	}
}

// sysPair is a loopback connection's client end as a sysConn and its
// server end, closed with the test.
func sysPair(t *testing.T) (*sysConn, *net.TCPConn) {
	c, s := tcpConns(t)
	return newSysConn(c).(*sysConn), s
}
