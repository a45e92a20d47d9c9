package mitm

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// h2DeadlineConn records the write deadlines set on it.
type h2DeadlineConn struct {
	net.Conn
	mu  sync.Mutex
	set []time.Time
}

func (c *h2DeadlineConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.set = append(c.set, t)
	c.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

func (c *h2DeadlineConn) deadlines() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Time(nil), c.set...)
}

// TestH2CoalescingDeadlineHeldWhileWritesCopy: a write deadline set and
// cleared around Writes that only copy (x/net's WriteByteTimeout around
// each flush) never reaches the conn under, and the bytes arrive.
func TestH2CoalescingDeadlineHeldWhileWritesCopy(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	under := &h2DeadlineConn{Conn: a}
	c := coalesce(under)
	done := make(chan []byte)
	go func() {
		got, _ := io.ReadAll(b)
		done <- got
	}()
	for i := range 100 {
		_ = c.SetWriteDeadline(time.Now().Add(time.Minute))
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		_ = c.SetWriteDeadline(time.Time{})
	}
	c.Close()
	got := <-done
	if len(got) != 100 {
		t.Fatalf("read %d bytes, want 100", len(got))
	}
	for i, v := range got {
		if v != byte(i) {
			t.Fatalf("byte %d is %d", i, v)
		}
	}
	for _, d := range under.deadlines() {
		// Close's linger is the only deadline the conn under may see.
		if d.IsZero() || time.Until(d) < closeLinger-time.Second {
			t.Errorf("deadline %v reached the conn under", d)
		}
	}
}

// TestH2CoalescingDeadlineEndsAWaitingWrite: a Write waiting for room
// behind a peer that reads nothing fails once the deadline passes, with
// the deadline's error, and later Writes fail too.
func TestH2CoalescingDeadlineEndsAWaitingWrite(t *testing.T) {
	a, b := net.Pipe() // nobody reads b: the writer's system call blocks
	defer b.Close()
	c := coalesce(a)
	defer c.Close()
	chunk := make([]byte, coalesceLimit)
	const wait = 200 * time.Millisecond
	_ = c.SetWriteDeadline(time.Now().Add(wait))
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := c.Write(chunk); err != nil {
				errc <- err
				return
			}
		}
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("write error %v, want the deadline's", err)
		}
		if took := time.Since(start); took < wait-50*time.Millisecond {
			t.Errorf("failed after %s, before the deadline (%s)", took, wait)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a Write waiting for room outlived its deadline")
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("a Write after the deadline error succeeded")
	}
}

// TestH2CoalescingDeadlineClearedAfterWait: a deadline that reached the
// conn under (a Write waited) is cleared there when the user clears it,
// so the writer's later system calls are not cut by it.
func TestH2CoalescingDeadlineClearedAfterWait(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	under := &h2DeadlineConn{Conn: a}
	c := coalesce(under)
	chunk := make([]byte, coalesceLimit)
	_ = c.SetWriteDeadline(time.Now().Add(time.Minute))
	wrote := make(chan error, 1)
	go func() {
		var err error
		for range 3 { // the third waits for room
			if _, err = c.Write(chunk); err != nil {
				break
			}
		}
		wrote <- err
	}()
	// Until the Write waits, the deadline is held.
	for len(under.deadlines()) == 0 {
		time.Sleep(time.Millisecond)
	}
	go io.Copy(io.Discard, b)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	_ = c.SetWriteDeadline(time.Time{})
	ds := under.deadlines()
	if len(ds) != 2 || ds[0].IsZero() || !ds[1].IsZero() {
		t.Errorf("deadlines on the conn under %v, want the held one, then cleared", ds)
	}
	c.Close()
}

// h2FillUntilWait writes chunks into c from a goroutine until one waits
// for room; the channel gets that Write's error.
func h2FillUntilWait(t *testing.T, c net.Conn) (<-chan error, *coalescingConn) {
	t.Helper()
	cc := c.(*coalescingConn)
	errc := make(chan error, 1)
	chunk := make([]byte, coalesceLimit)
	go func() {
		for {
			if _, err := c.Write(chunk); err != nil {
				errc <- err
				return
			}
		}
	}()
	for end := time.Now().Add(5 * time.Second); ; {
		cc.mu.Lock()
		w := cc.waiting
		cc.mu.Unlock()
		if w > 0 {
			return errc, cc
		}
		if time.Now().After(end) {
			t.Fatal("no Write waited for room")
		}
		time.Sleep(time.Millisecond)
	}
}

// A deadline set while a Write already waits for room ends that Write:
// it reaches the conn under at once.
func TestH2CoalescingDeadlineSetWhileWaiting(t *testing.T) {
	a, b := net.Pipe() // nobody reads b
	defer b.Close()
	c := coalesce(a)
	defer c.Close()
	errc, _ := h2FillUntilWait(t, c)
	_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("write error %v, want the deadline's", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("a deadline set while a Write waited did not end it")
	}
}

// Close while a Write waits: x/net clears its write deadline after each
// Write, that one too, and the clear must not reach the conn under,
// where it would take away closeLinger's bound and leave the writer's
// system call blocked for good.
func TestH2CoalescingCloseKeepsLinger(t *testing.T) {
	a, b := net.Pipe() // nobody reads b
	defer b.Close()
	c := coalesce(a)
	_ = c.SetWriteDeadline(time.Now().Add(time.Minute)) // x/net's WriteByteTimeout
	errc, cc := h2FillUntilWait(t, c)
	c.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Errorf("the waiting Write: %v, want net.ErrClosed", err)
	}
	_ = c.SetWriteDeadline(time.Time{}) // x/net's clear after its Write
	for end := time.Now().Add(closeLinger + 2*time.Second); ; {
		cc.mu.Lock()
		w := cc.writing
		cc.mu.Unlock()
		if !w {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the writer outlived closeLinger (%s) after Close", closeLinger)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
