package mitm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/sluicehq/sluice/audit"
)

// Parking an HTTP/2 connection. A connection with no stream open for
// h1ParkAfter leaves its read loop: its socket waits in the proxy's
// parkSet (park.go) with no goroutine, and its read buffer, its Framer's
// buffers and crypto/tls's input buffers are let go of. What it keeps is
// its state: the HPACK tables both ways, the windows, the last stream
// ID and the client's SETTINGS. When the socket turns readable, a
// goroutine takes up the read loop again (resume); at the idle deadline,
// or when the flow ends, it says GOAWAY and closes (closeParked), as an
// idle connection that is not parked does.
//
// The read loop is taken out of its wait only where no frame has begun:
// it waits for the next frame's first byte (awaitFrame) in a state the
// idle timer can see (rstate), and the timer ends that wait with a past
// read deadline only while it is in it (h2Waiting to h2Kicked, under
// c.mu). A frame that began meanwhile is read on with the deadline
// cleared; a wait the timer ended with nothing read parks.

// The read loop's states (h2SrvConn.rstate).
const (
	h2Busy    = iota // reading or handling a frame
	h2Waiting        // waiting for the next frame's first byte, nothing buffered
	h2Kicked         // the idle timer ended that wait
)

// errH2Park ends the read loop of a connection that parks.
var errH2Park = errors.New("HTTP/2 connection parks")

// hpackUnpin is an HPACK block of one indexed field of the static table
// (:method GET).
var hpackUnpin = [1]byte{0x82}

func (c *h2SrvConn) links() *parkLinks        { return &c.pk }
func (c *h2SrvConn) flowCtx() context.Context { return c.ctx }

// canParkLocked reports whether the idle timer may park c now: parking
// is on for it, no stream or handler is left, and nothing is still
// being written (a client that stops reading leaves a write blocked:
// that connection is not parked, and the idle timeout's close ends the
// write within closeLinger); c.mu held.
func (c *h2SrvConn) canParkLocked() bool {
	if c.noPark || len(c.streams) > 0 || c.running > 0 || len(c.queue) > 0 || c.goAway || c.closed {
		return false
	}
	cc, ok := c.conn.(interface{ quiet() bool })
	return !ok || cc.quiet()
}

// awaitFrame waits for the next frame's first byte; errH2Park when the
// idle timer ended the wait and nothing came.
func (c *h2SrvConn) awaitFrame() error {
	if c.noPark {
		return nil
	}
	c.rstate.Store(h2Waiting)
	_, err := c.br.Peek(1)
	if c.rstate.Swap(h2Busy) != h2Kicked {
		return err // nil, or what ReadFrame would meet
	}
	// The timer set the past deadline under c.mu: it is set by now.
	c.mu.Lock()
	park := isTimeout(err) && c.br.Buffered() == 0 && c.canParkLocked()
	if !park {
		c.armIdleLocked()
	}
	c.mu.Unlock()
	if park {
		return errH2Park
	}
	_ = c.conn.SetReadDeadline(time.Time{})
	return nil
}

// kickLocked ends the read loop's wait for a frame so that it parks;
// false when it is not waiting (a frame has begun, or is being
// handled). c.mu held.
func (c *h2SrvConn) kickLocked() bool {
	if !c.rstate.CompareAndSwap(h2Waiting, h2Kicked) {
		return false
	}
	_ = c.conn.SetReadDeadline(aLongTimeAgo)
	return true
}

// park leaves c in the parkSet with its buffers dropped; false when it
// can't (its socket can't be watched, or the set failed): then it
// stays the read loop's, and is not parked again. The flow's goroutine
// returns once its connection is parked: the flow's clean-up runs when
// the connection ends (end, flow.finish).
func (c *h2SrvConn) park() bool {
	sock, tc := socketOf(c.conn)
	if sock != nil {
		c.drop()
		if tc != nil {
			releaseTLSInput(tc) // the read loop read last
		}
		c.mu.Lock()
		c.parked = true
		deadline := c.idleSince.Add(c.srv.idleTimeout)
		c.mu.Unlock()
		// The flow's clean-up waits for the connection's end (end), no
		// longer for this goroutine's return.
		c.fl.handOff()
		if c.srv.parked.add(c, sock, deadline) {
			return true
		}
		c.mu.Lock()
		c.parked = false
		c.mu.Unlock()
		c.take()
	}
	c.mu.Lock()
	c.noPark = true
	c.releaseSpareLocked() // an idle connection that stays keeps none
	c.armIdleLocked()
	c.mu.Unlock()
	return false
}

// drop lets go of the read loop's buffers: the read buffer to its pool,
// the Framer's (its largest frame read and written), and the HPACK
// encoder's output and dynamic table with a new Framer and encoder
// (resetEncoder). Nothing reads or writes meanwhile: no stream is open
// and the read loop is the caller.
func (c *h2SrvConn) drop() {
	c.lockW()
	c.fr = c.newFramer(nil) // not read until take
	c.hbuf = bytes.Buffer{}
	c.resetEncoder()
	c.unlockW()
	// The HPACK decoder keeps a slice of the last block it decoded, in
	// the old Framer's read buffer (as large as the largest frame read,
	// up to 1 MiB): a block of its own takes its place, one field of the
	// static table, which leaves the dynamic table as it was.
	c.hdec.SetEmitFunc(func(hpack.HeaderField) {})
	_, _ = c.hdec.Write(hpackUnpin[:])
	_ = c.hdec.Close()
	c.br.Reset(nil)
	fastReaders.Put(c.br)
	c.br = nil
	c.mu.Lock()
	c.streams, c.queue = nil, nil // maps keep their size
	c.releaseSpareLocked()
	c.mu.Unlock()
}

// take readies the read loop's buffers again.
func (c *h2SrvConn) take() {
	c.br = fastReaders.Get().(*bufio.Reader)
	c.br.Reset(c.conn)
	c.lockW()
	c.fr = c.newFramer(c.br)
	c.unlockW()
	c.mu.Lock()
	c.streams = map[uint32]*h2SrvStream{}
	c.mu.Unlock()
}

// resume takes up the read loop of a parked connection whose socket
// turned readable (a frame, or the client closing).
func (c *h2SrvConn) resume() {
	defer c.recoverLoop()
	c.take()
	_ = c.conn.SetReadDeadline(time.Time{})
	c.mu.Lock()
	c.parked = false
	c.armIdleLocked()
	c.mu.Unlock()
	c.run()
}

// closeParked says GOAWAY to a parked connection and closes it: its
// idle deadline passed, or its flow ended.
func (c *h2SrvConn) closeParked() {
	c.mu.Lock()
	c.parked = false
	c.mu.Unlock()
	c.goAwayNow(http2.ErrCodeNo)
	c.end(nil)
}

// recoverLoop keeps a panic in a resumed read loop (on a goroutine of
// the parkSet's, not the flow's, whose recovery it would have had) from
// ending the process: it is logged and the connection ends.
func (c *h2SrvConn) recoverLoop() {
	if v := recover(); v != nil {
		if c.srv.log != nil {
			c.srv.log.Error("panic serving HTTP/2 connection", audit.KeyClient, c.remote, audit.KeyPanic, fmt.Sprint(v), audit.KeyStack, string(debug.Stack()))
		}
		c.end(nil)
	}
}
