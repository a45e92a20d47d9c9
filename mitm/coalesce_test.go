package mitm

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// countingConn records each Write the coalescing conn makes under it; a
// Write blocks while gate is held.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
	gate   sync.Mutex
	err    error
	closed chan struct{}
}

func newCountingConn() *countingConn {
	c1, _ := net.Pipe()
	return &countingConn{Conn: c1, closed: make(chan struct{})}
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.gate.Lock()
	defer c.gate.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func (c *countingConn) Close() error { close(c.closed); return nil }

func (c *countingConn) SetWriteDeadline(time.Time) error { return nil }

func (c *countingConn) got() (n int, all []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.writes {
		all = append(all, w...)
	}
	return len(c.writes), all
}

func TestCoalescingConnCombinesWritesDuringASyscall(t *testing.T) {
	under := newCountingConn()
	c := coalesce(under)
	under.gate.Lock() // the first batch's syscall blocks
	if _, err := c.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"b", "c", "d"} {
		if _, err := c.Write([]byte(s)); err != nil { // returns at once
			t.Fatal(err)
		}
	}
	under.gate.Unlock()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-under.closed
	n, all := under.got()
	if string(all) != "abcd" {
		t.Fatalf("bytes under the conn = %q, want abcd in order", all)
	}
	if n > 2 {
		t.Fatalf("%d writes under the conn, want at most 2 (a, then bcd)", n)
	}
}

func TestCoalescingConnWriteErrorIsSticky(t *testing.T) {
	under := newCountingConn()
	boom := errors.New("connection reset")
	under.err = boom
	c := coalesce(under)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("first write: %v (the error shows on a later one)", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := c.Write([]byte("y"))
		if errors.Is(err, boom) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("write error never surfaced (last: %v)", err)
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := c.Write([]byte("z")); !errors.Is(err, boom) {
		t.Fatalf("write after the error = %v, want it again", err)
	}
}

func TestCoalescingConnBackpressure(t *testing.T) {
	under := newCountingConn()
	c := coalesce(under)
	under.gate.Lock()
	big := make([]byte, coalesceLimit)
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	// The writer may be in its syscall with the first batch; the next
	// full buffer fills, and a Write past it must wait.
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		c.Write([]byte("late"))
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("a write past the limit returned while the writer was stuck")
	case <-time.After(50 * time.Millisecond):
	}
	under.gate.Unlock()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the blocked write never resumed")
	}
	c.Close()
	<-under.closed
	_, all := under.got()
	if len(all) != 2*coalesceLimit+4 || string(all[len(all)-4:]) != "late" {
		t.Fatalf("got %d bytes ending %q, want %d ending late", len(all), all[len(all)-4:], 2*coalesceLimit+4)
	}
}

func TestCoalescingConnWriteAfterClose(t *testing.T) {
	c := coalesce(newCountingConn())
	c.Close()
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close = %v, want net.ErrClosed", err)
	}
}

// Over a real pipe, many concurrent writers' bytes all arrive, each
// write's bytes contiguous.
func TestCoalescingConnConcurrentWritersOverPipe(t *testing.T) {
	a, b := net.Pipe()
	c := coalesce(a)
	const writers, each = 8, 200
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := bytes.Repeat([]byte{byte('a' + w)}, 10)
			for range each {
				if _, err := c.Write(msg); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	got := make(chan []byte)
	go func() {
		all, _ := io.ReadAll(b)
		got <- all
	}()
	wg.Wait()
	c.Close()
	all := <-got
	if len(all) != writers*each*10 {
		t.Fatalf("read %d bytes, want %d", len(all), writers*each*10)
	}
	for i := 0; i < len(all); i += 10 {
		if !bytes.Equal(all[i:i+10], bytes.Repeat(all[i:i+1], 10)) {
			t.Fatalf("write at %d interleaved: %q", i, all[i:i+10])
		}
	}
}

// An idle coalescing conn holds no buffer (idle connections are many).
func TestCoalescingConnIdleHoldsNoBuffer(t *testing.T) {
	under := newCountingConn()
	c := coalesce(under).(*coalescingConn)
	if _, err := c.Write(bytes.Repeat([]byte("x"), 1000)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		idle, buf, spare := !c.writing, c.buf, c.spare
		c.mu.Unlock()
		if idle {
			if buf != nil || spare != nil {
				t.Fatalf("idle conn holds buffers of cap %d and %d", cap(buf), cap(spare))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writer never went idle")
		}
		time.Sleep(time.Millisecond)
	}
	if n, all := under.got(); n != 1 || len(all) != 1000 {
		t.Fatalf("%d writes of %d bytes under the conn, want 1 of 1000", n, len(all))
	}
}

// A buffer goes back to the pool in the box it came in: a writer going
// idle (twice per burst of an HTTP/2 connection's frames) allocates
// nothing for it.
func TestCoalesceBufRecycleAllocs(t *testing.T) {
	b, box := getCoalesceBuf()
	putCoalesceBuf(append(b, 'x'), box)
	if n := testing.AllocsPerRun(100, func() {
		b, box := getCoalesceBuf()
		putCoalesceBuf(append(b, 'x'), box)
	}); n != 0 {
		t.Errorf("a buffer from the pool and back: %v allocations, want 0", n)
	}
}

// A coalescing conn is quiet only when it holds nothing unwritten and no
// write is under way: a peer that stops reading leaves it not quiet (an
// HTTP/2 connection is not parked then, h2SrvConn.canParkLocked), and it
// turns quiet once the peer has read everything.
func TestCoalescingQuietWhileWriteBlocked(t *testing.T) {
	client, server := tcpPair(t)
	cc := coalesce(server).(*coalescingConn)
	if !cc.quiet() {
		t.Fatal("a new conn is not quiet")
	}
	const total = 32 << 20
	done := make(chan struct{})
	go func() {
		defer close(done)
		chunk := make([]byte, 16<<10)
		for n := 0; n < total; n += len(chunk) {
			if _, err := cc.Write(chunk); err != nil {
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // the peer reads nothing: the writer blocks
	if cc.quiet() {
		t.Fatal("quiet while the peer reads nothing and 32 MiB wait")
	}
	n, _ := io.CopyN(io.Discard, client, total)
	<-done
	for deadline := time.Now().Add(5 * time.Second); !cc.quiet(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not quiet 5s after the peer read %d bytes", n)
		}
	}
}
