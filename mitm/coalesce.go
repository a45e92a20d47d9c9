package mitm

import (
	"crypto/tls"
	"net"
	"runtime"
	"sync"
	"time"
)

// coalesceLimit bounds what a coalescing conn holds unwritten: a Write
// that would go past it waits for the conn's writer (backpressure).
const coalesceLimit = 64 << 10

// closeLinger bounds how long a closed coalescing conn keeps writing what
// it held before it closes the conn under it.
const closeLinger = 5 * time.Second

// coalesceBufs holds the buffers of coalescing conns that have nothing
// to write, so an idle conn pins none.
var coalesceBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// getCoalesceBuf is an empty buffer from the pool and the box it came
// in, which putCoalesceBuf puts it back in: a box made anew per put was
// an allocation each time a conn's writer went idle.
func getCoalesceBuf() ([]byte, *[]byte) {
	box := coalesceBufs.Get().(*[]byte)
	return (*box)[:0], box
}

func putCoalesceBuf(b []byte, box *[]byte) {
	if b != nil && cap(b) <= coalesceLimit { // one big write does not stay pooled
		*box = b
		coalesceBufs.Put(box)
	}
}

// coalescingConn combines small writes into fewer syscalls: Write copies
// into a buffer and returns, and one goroutine (started when there is
// something to write, gone when there is not) writes what accumulated
// meanwhile in one call. Sluice's HTTP/2 ends (h2wire.go) write each
// frame as it comes, in their write turn; with this conn under them,
// the frames of the requests or responses that come during one syscall
// go out in the next. A write error is sticky: every later Write returns it. Close
// lets the held bytes go out (bounded by closeLinger) and then closes.
//
// A write deadline is held, not set on the conn under at once: a Write
// that only copies cannot pass it, so it reaches the conn under (and
// fails the writer's system call when it passes) only while a Write
// waits for room. The HTTP/2 ends push one out at most once per
// deadlineSlack (h2Wire.armW); set on the conn under, each would be a
// runtime timer update, for a Write that returns at once.
type coalescingConn struct {
	net.Conn

	mu    sync.Mutex
	cond  sync.Cond // writer done with a batch, or stopped
	buf   []byte    // waiting for the writer; nil while idle
	spare []byte    // the writer's batch; nil while idle
	// bufBox and spareBox are the pool's boxes of buf and spare.
	bufBox, spareBox *[]byte
	writing          bool // a writer goroutine runs
	closed           bool
	err              error // sticky write error
	// wdl is the write deadline last set; wdlUnder reports that the
	// conn under has it too (a Write waited for room while it was held,
	// or it replaced one the conn under had), waiting the number of
	// Writes waiting for room.
	wdl      time.Time
	wdlUnder bool
	waiting  int
}

// coalescingTLSConn keeps the TLS state visible to the HTTP/2 upstream
// client (it fills Response.TLS from it).
type coalescingTLSConn struct {
	*coalescingConn
	tc *tls.Conn
}

func (c coalescingTLSConn) ConnectionState() tls.ConnectionState { return c.tc.ConnectionState() }

// coalesce wraps c; a *tls.Conn keeps its ConnectionState.
func coalesce(c net.Conn) net.Conn {
	cc := &coalescingConn{Conn: c}
	cc.cond.L = &cc.mu
	if tc, ok := c.(*tls.Conn); ok {
		return coalescingTLSConn{cc, tc}
	}
	return cc
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && !c.closed && len(c.buf) > 0 && len(c.buf)+len(p) > coalesceLimit {
		if !c.wdlUnder && !c.wdl.IsZero() {
			// The wait ends at the deadline: the writer's system call
			// fails then, and its error wakes this Write.
			c.wdlUnder = true
			_ = c.Conn.SetWriteDeadline(c.wdl)
		}
		c.waiting++
		c.cond.Wait()
		c.waiting--
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.closed {
		return 0, net.ErrClosed
	}
	if c.buf == nil {
		c.buf, c.bufBox = getCoalesceBuf()
	}
	c.buf = append(c.buf, p...)
	if !c.writing {
		c.writing = true
		go c.writer()
	}
	return len(p), nil
}

// writer writes batches until nothing is left, then exits.
func (c *coalescingConn) writer() {
	// Let the goroutines about to write run first: their bytes join
	// this first batch.
	runtime.Gosched()
	c.mu.Lock()
	yielded := false
	for c.err == nil {
		if len(c.buf) == 0 {
			if yielded {
				break
			}
			// Let the goroutines about to write run before going
			// idle: their bytes join the next batch instead of
			// starting a writer of their own.
			yielded = true
			c.mu.Unlock()
			runtime.Gosched()
			c.mu.Lock()
			continue
		}
		yielded = false
		if c.spare == nil {
			c.spare, c.spareBox = getCoalesceBuf()
		}
		c.buf, c.spare = c.spare[:0], c.buf
		c.bufBox, c.spareBox = c.spareBox, c.bufBox
		batch := c.spare
		c.cond.Broadcast() // the buffer is free again
		c.mu.Unlock()
		_, err := c.Conn.Write(batch)
		c.mu.Lock()
		if err != nil {
			c.err = err
		}
	}
	c.writing = false
	// Nothing left to write: the buffers go back to the pool (the
	// writer owns them now; a Write takes a fresh one).
	putCoalesceBuf(c.buf, c.bufBox)
	putCoalesceBuf(c.spare, c.spareBox)
	c.buf, c.spare, c.bufBox, c.spareBox = nil, nil, nil, nil
	closeNow := c.closed
	c.cond.Broadcast()
	c.mu.Unlock()
	if closeNow {
		c.Conn.Close()
	}
}

// SetWriteDeadline holds t for the Writes that wait for room, and sets
// it on the conn under at once when one waits now or an earlier one is
// set there (which t replaces). After Close it does nothing: the
// writer's last system calls are bounded by closeLinger, which x/net's
// clear after a Write that Close ended would otherwise take away
// (TestH2CoalescingCloseKeepsLinger).
func (c *coalescingConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return net.ErrClosed
	}
	c.wdl = t
	if !c.wdlUnder && c.waiting == 0 {
		return nil
	}
	c.wdlUnder = !t.IsZero()
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline sets the read deadline on the conn under and holds the
// write deadline as SetWriteDeadline does.
func (c *coalescingConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// quiet reports whether the conn holds nothing unwritten, no write is
// under way, and it is neither closed nor failed.
func (c *coalescingConn) quiet() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.writing && len(c.buf) == 0 && !c.closed && c.err == nil
}

// flushed waits until the conn's writer has written what it held, or
// failed: after Close, within closeLinger.
func (c *coalescingConn) flushed() {
	c.mu.Lock()
	for c.writing {
		c.cond.Wait()
	}
	c.mu.Unlock()
}

// Close closes at once when nothing is held, else leaves the close to
// the writer once the held bytes are out (or closeLinger passed).
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return net.ErrClosed
	}
	c.closed = true
	writing := c.writing
	c.cond.Broadcast()
	c.mu.Unlock()
	if writing {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(closeLinger))
		return nil
	}
	return c.Conn.Close()
}
