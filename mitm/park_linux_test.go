package mitm

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestTLSInputFieldsFound(t *testing.T) {
	if !tlsInput.ok {
		t.Fatalf("crypto/tls.Conn of %s has no rawInput, input and hand of the types tlsidle.go expects: parked connections keep their TLS input buffers; adapt findTLSInput", runtime.Version())
	}
}

// A parked connection's crypto/tls input buffers are released (16 KiB
// after a large request body), and its next request is read into new
// ones.
func TestParkedConnectionReleasesTLSInput(t *testing.T) {
	h, up := parkHarness(t)
	c := dialParked(t, h, context.Background(), up, false)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	body := strings.Repeat("x", 40<<10)
	fmt.Fprintf(c, "POST /big HTTP/1.1\r\nHost: api.test\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	c.answer(t, "POST", "/big")
	held := func() (int, bool) {
		s := h.p.h1.parked
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, pc := range s.conns {
			_, tc := socketOf(pc.(*h1Conn).Conn)
			raw, input, hand := tlsInputOf(tc)
			return raw.Cap() + int(input.Size()) + hand.Cap(), true
		}
		return 0, false
	}
	var n int
	var parked bool
	for deadline := time.Now().Add(5 * time.Second); !parked && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		n, parked = held()
	}
	if !parked {
		t.Fatal("the connection was not parked within 5s")
	}
	if n != 0 {
		t.Fatalf("the parked connection's TLS input buffers hold %d bytes, want 0", n)
	}
	c.get(t, "/after")
}

// Parked connections wait without a goroutine each: parking N of them,
// transparent or inside CONNECT, leaves the goroutine count where it was
// before they were opened, and each of them is served again.
func TestParkedConnectionsHoldNoGoroutine(t *testing.T) {
	for _, explicit := range []bool{false, true} {
		t.Run(map[bool]string{false: "transparent", true: "explicit"}[explicit], func(t *testing.T) {
			h, up := parkHarness(t)
			dialParked(t, h, context.Background(), up, explicit).Close() // warm up the upstream pool
			time.Sleep(h1ParkAfter + 300*time.Millisecond)
			g0 := runtime.NumGoroutine()
			const n = 40
			conns := make([]*parkedClient, n)
			for i := range conns {
				conns[i] = dialParked(t, h, context.Background(), up, explicit)
			}
			var g1 int
			for deadline := time.Now().Add(5 * time.Second); ; {
				time.Sleep(h1ParkAfter / 4)
				if g1 = runtime.NumGoroutine(); g1-g0 <= 4 || time.Now().After(deadline) {
					break
				}
			}
			if g1-g0 > 4 {
				buf := make([]byte, 1<<20)
				t.Fatalf("%d parked connections: goroutines %d -> %d, want about the same\n%s", n, g0, g1, buf[:runtime.Stack(buf, true)])
			}
			for i, c := range conns {
				c.get(t, fmt.Sprintf("/again/%d", i))
			}
		})
	}
}

// The set closes each parked connection at its own idle deadline, in
// deadline order whatever the order they were parked in.
func TestParkSetClosesAtEachDeadline(t *testing.T) {
	s := newParkSet()
	ctx := context.Background()
	start := time.Now()
	after := []time.Duration{500, 100, 400, 200, 300} // ms, parked in this order
	closed := make(chan int, len(after))
	for i, ms := range after {
		_, server := tcpPair(t)
		c := &h1Conn{Conn: server, fl: &flow{ctx: ctx}, fr: newFramer()}
		c.onClose = func() { closed <- i }
		c.parking.Store(true)
		sock, _ := socketOf(server)
		if !s.add(c, sock, start.Add(ms*time.Millisecond)) {
			t.Fatal("add: socket not watched")
		}
	}
	var order []int
	for range after {
		select {
		case i := <-closed:
			order = append(order, i)
			if d, want := time.Since(start), after[i]*time.Millisecond; d < want-20*time.Millisecond || d > want+2*time.Second {
				t.Errorf("connection %d closed after %v, deadline %v", i, d, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("closed %v, then nothing for 10s", order)
		}
	}
	if want := []int{1, 3, 4, 2, 0}; !slices.Equal(order, want) {
		t.Fatalf("closed in the order %v, want %v (by deadline)", order, want)
	}
}

// As the attacker: a parked connection whose close waits (a TLS alert or
// an HTTP/2 GOAWAY into the full socket of a client that stopped
// reading) must not hold up the set, which wakes and closes every other
// parked connection of the proxy on one goroutine. Here one close takes
// 3s; the next byte of another parked connection meanwhile still wakes
// it at once.
func TestParkSetSlowCloseHoldsUpNoOther(t *testing.T) {
	s := newParkSet()
	ctx := context.Background()
	slow := &fakeParked{ctx: ctx, closing: make(chan struct{}), resumed: make(chan struct{}), block: 3 * time.Second}
	other := &fakeParked{ctx: ctx, closing: make(chan struct{}), resumed: make(chan struct{})}
	_, slowSock := tcpPair(t)
	otherClient, otherSock := tcpPair(t)
	for _, p := range []struct {
		c        *fakeParked
		sock     net.Conn
		deadline time.Duration
	}{{slow, slowSock, 100 * time.Millisecond}, {other, otherSock, time.Minute}} {
		sock, _ := socketOf(p.sock)
		if !s.add(p.c, sock, time.Now().Add(p.deadline)) {
			t.Fatal("add: socket not watched")
		}
	}
	select {
	case <-slow.closing:
	case <-time.After(5 * time.Second):
		t.Fatal("the expired connection was not closed within 5s")
	}
	start := time.Now()
	otherClient.Write([]byte("G"))
	select {
	case <-other.resumed:
	case <-time.After(time.Second):
		t.Fatalf("a parked connection's byte sent while another's close waits: not woken within 1s")
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("woken after %v, while another parked connection's close waited", d)
	}
}

// fakeParked is a parked connection that reports its wake and close; its
// close takes block.
type fakeParked struct {
	pk      parkLinks
	ctx     context.Context
	closing chan struct{}
	resumed chan struct{}
	block   time.Duration
}

func (f *fakeParked) links() *parkLinks        { return &f.pk }
func (f *fakeParked) flowCtx() context.Context { return f.ctx }
func (f *fakeParked) resume()                  { close(f.resumed) }
func (f *fakeParked) closeParked() {
	close(f.closing)
	time.Sleep(f.block)
}
