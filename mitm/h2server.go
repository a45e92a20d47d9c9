package mitm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/audit"
	"golang.org/x/net/http2"
)

// h2Server serves a workload's HTTP/2. x/net's server hands every frame
// from a reader goroutine to a serve loop, and every write of a handler
// to that loop and back, over channels: under h2load its loop and
// selects were a third of the proxy's CPU. Here the connection's
// goroutine reads the frames and answers the control frames itself, and
// a handler writes its response's frames in the write turn on its own
// goroutine (h2Wire), over a coalescing conn that joins the frames of
// the responses ready meanwhile into one write.
//
// What it does against a hostile client, as x/net's does: frames over
// 1 MiB, header lists over maxHeaderList (a head within twice that gets
// 431; CONTINUATION floods end the connection: x/net's Framer) and heads
// that are malformed (RFC 9113 8.1.1: pseudo-fields, connection-specific
// fields, te other than trailers, a body against its content-length) are
// refused; streams past maxStreams are refused; handlers run at most
// maxStreams at a time, the streams a client resets at once (rapid
// reset) wait in a queue of 4×maxStreams, and a client that fills it
// gets GOAWAY ENHANCE_YOUR_CALM. What a client may send unread is bounded
// by its windows (1 MiB a connection); a connection whose writes stall
// for idleTimeout is closed, one with no stream open for idleTimeout
// gets GOAWAY and is closed. Control frames the client floods are
// answered in the order they come: when it stops reading, the answers
// fill the conn's buffer and the reads stop with them.
type h2Server struct {
	idleTimeout   time.Duration
	maxStreams    uint32
	maxHeaderList uint32
	// drain bounds how long open streams run once the proxy stops (0:
	// h2DrainWait).
	drain time.Duration
	log   *slog.Logger // nil: none
	// parked holds connections with no stream open (h2park.go); nil:
	// none is parked.
	parked *parkSet
}

const (
	// h2SrvStreamWindow and h2SrvConnWindow bound what a client may send
	// before its handlers read it (x/net's server's defaults).
	h2SrvStreamWindow = 1 << 20
	h2SrvConnWindow   = 1 << 20
	// h2SrvReadFrame is the largest frame a client may send (x/net's).
	h2SrvReadFrame = 1 << 20
	// h2PrefaceWait bounds the wait for the client's preface and SETTINGS.
	h2PrefaceWait = 10 * time.Second
	// h2DrainWait bounds how long streams may run once the proxy stops.
	h2DrainWait = 5 * time.Second
	// h2HeaderListSlack is what x/net's server allows a header list
	// past its MaxHeaderBytes (ten fields' overhead).
	h2HeaderListSlack = 10 * 32
	// h2QueuedPerStream: the handlers that may wait to start, per stream
	// the client may open.
	h2QueuedPerStream = 4
)

var (
	errH2ClientReset = errors.New("client reset the HTTP/2 stream")
	errH2ConnClosed  = errors.New("client HTTP/2 connection closed")
	errH2StreamDone  = errors.New("HTTP/2 stream closed")
)

// h2SrvConn is one client connection. mu guards the streams, the
// windows and the handler counts; it is taken inside the write turn,
// never the other way round.
type h2SrvConn struct {
	h2Wire
	srv     *h2Server
	handler http.Handler
	baseCtx context.Context // the requests' (not cancelled by the connection's end: each stream's is)
	remote  string
	tls     *tls.ConnectionState
	// date is the Date field for the second dateSec; in the write turn.
	date    string
	dateSec int64

	mu         sync.Mutex
	cond       sync.Cond // a send window grew, a stream or the connection ended
	streams    map[uint32]*h2SrvStream
	lastID     uint32 // the highest stream ID the client used
	running    int    // handlers running
	queue      []*h2SrvStream
	sendWindow int64
	initWindow int64 // a new stream's send window (the client's INITIAL_WINDOW_SIZE)
	maxFrame   int   // the largest DATA the client takes
	recvWindow int64 // what the client may still send on the connection
	unacked    int64 // read (or dropped), not yet given back to the client
	goAway     bool  // no new stream: GOAWAY sent, or the client's came
	sentGoAway bool  // ours went out: a drained connection may close
	draining   bool  // the proxy stops: the open streams' time is bounded
	closed     bool
	// idle fires h1ParkAfter after the last stream ended (the
	// connection parks) or, where it can't park, idleTimeout after
	// (GOAWAY): onIdle.
	idle      *time.Timer
	idleSince time.Time // when the last stream ended

	// Parking (h2park.go). ctx is the flow's: its end shuts c down.
	ctx    context.Context
	fl     *flow // nil: never parked (the server's tests)
	pk     parkLinks
	parked bool         // in the parkSet; under mu
	noPark bool         // not parked (its socket can't be watched); set by the read loop under mu
	rstate atomic.Int32 // the read loop's: h2Busy, h2Waiting, h2Kicked

	// spare is the handler goroutines that finished their streams and
	// wait for the next one (runHandlers), under mu: a stream handed to
	// one starts no goroutine, nor grows a new stack (growStack) unless
	// the collector shrank the spare's meanwhile. At most as many as
	// streams ran at once; let go when the connection parks or ends
	// (releaseSpareLocked).
	spare []chan *h2SrvStream
}

// serveConn serves HTTP/2 on nc until the connection ends, calling h for
// each request on a goroutine of its own; it closes nc before it
// returns, unless the connection parked (fl not nil: h2park.go), and
// then fl finishes when it ends. ctx is the base of the requests'
// contexts; when it ends, the client gets GOAWAY, open streams may
// finish (bounded by h2DrainWait) and the connection closes.
func (s *h2Server) serveConn(ctx context.Context, nc net.Conn, h http.Handler, fl *flow) {
	c := &h2SrvConn{
		srv: s, handler: h, baseCtx: context.WithoutCancel(ctx),
		remote:     nc.RemoteAddr().String(),
		streams:    map[uint32]*h2SrvStream{},
		sendWindow: 65535, initWindow: 65535, maxFrame: 16 << 10,
		recvWindow: h2SrvConnWindow,
		ctx:        ctx, fl: fl,
		noPark: s.parked == nil || fl == nil || s.idleTimeout <= h1ParkAfter,
	}
	c.cond.L = &c.mu
	if cs, ok := nc.(interface{ ConnectionState() tls.ConnectionState }); ok {
		st := cs.ConnectionState()
		c.tls = &st
	}
	c.initWire(nc, s.idleTimeout, h2SrvReadFrame, s.maxHeaderList)
	if err := c.start(); err != nil {
		c.end(err)
		return
	}
	parked := false
	defer func() {
		if !parked {
			c.close() // after a panic in the read loop too: its spare handlers go
		}
	}()
	parked = c.run()
}

// run is the read loop: it serves c until the connection ends, or parks
// (true).
func (c *h2SrvConn) run() (parked bool) {
	for {
		stop := context.AfterFunc(c.ctx, func() { c.shutdown(true) })
		err := c.readFrames(c)
		stopped := stop()
		if err != errH2Park { //nolint:errorlint // our own value, returned as is
			c.end(err)
			return false
		}
		if stopped && c.park() {
			return true
		}
		// Not parked: the proxy's stop (which closes it) or a socket
		// that can't be watched. The wait's past deadline goes.
		_ = c.conn.SetReadDeadline(time.Time{})
	}
}

// end closes the connection after the read loop's error (a
// ConnectionError: GOAWAY with its code first) once what it holds
// unwritten went out (a GOAWAY: the flow's clean-up closes the socket
// under it), and finishes the flow of a connection that was parked.
func (c *h2SrvConn) end(err error) {
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		c.goAwayNow(http2.ErrCode(ce))
	}
	if log := c.srv.log; log != nil && err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		log.Debug("HTTP/2 connection ended", audit.KeyClient, c.remote, audit.KeyError, err)
	}
	if !c.close() {
		return
	}
	if cc, ok := c.conn.(interface{ flushed() }); ok {
		cc.flushed() // bounded by closeLinger
	}
	if c.fl != nil {
		c.fl.finish()
	}
}

// start reads the client's preface and SETTINGS and sends the server's.
func (c *h2SrvConn) start() error {
	_ = c.conn.SetReadDeadline(time.Now().Add(h2PrefaceWait))
	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(c.br, preface[:]); err != nil {
		return fmt.Errorf("read HTTP/2 preface: %w", err)
	}
	if string(preface[:]) != http2.ClientPreface {
		return errors.New("client sent no HTTP/2 preface")
	}
	err := c.send(func() error {
		err := c.fr.WriteSettings(
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.srv.maxStreams},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2SrvStreamWindow},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: h2SrvReadFrame},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: c.srv.maxHeaderList},
		)
		if err != nil {
			return err
		}
		return c.fr.WriteWindowUpdate(0, h2SrvConnWindow-65535)
	})
	if err != nil {
		return err
	}
	f, err := c.fr.ReadFrame()
	if err != nil {
		return fmt.Errorf("read client SETTINGS: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	_ = c.conn.SetReadDeadline(time.Time{})
	if err := c.onSettings(sf); err != nil {
		return err
	}
	c.mu.Lock()
	c.idleLocked()
	c.mu.Unlock()
	return nil
}

// send runs f (frame writes) in the write turn; an error closes the
// connection. The read loop waits for the turn too: a client that stops
// reading stops being read (until the stalled write fails), and no
// goroutine is started per frame it floods.
func (c *h2SrvConn) send(f func() error) error {
	c.lockW()
	err := f()
	c.unlockW()
	if err != nil {
		c.conn.Close() // the read loop ends, and closes the rest
	}
	return err
}

func (c *h2SrvConn) onGoAway(*http2.GoAwayFrame) { c.shutdown(false) }

// onStreamError resets the stream a frame was refused on: a malformed
// head (whose block was decoded whole, so HPACK stays in step) or a
// frame against its state.
func (c *h2SrvConn) onStreamError(se http2.StreamError) error {
	c.mu.Lock()
	st := c.streams[se.StreamID]
	if st == nil && se.StreamID%2 == 1 && se.StreamID > c.lastID {
		c.lastID = se.StreamID // a new stream's head: refused, but used
	}
	c.mu.Unlock()
	c.resetStream(st, se.StreamID, se.Code, fmt.Errorf("HTTP/2 stream error: %v", se.Code))
	return nil
}

// resetStream sends RST_STREAM for id and ends st (nil: no open stream)
// with err: its handler's body reads and writes fail, its context ends.
func (c *h2SrvConn) resetStream(st *h2SrvStream, id uint32, code http2.ErrCode, err error) {
	if st != nil {
		c.mu.Lock()
		st.endLocked(err)
		c.mu.Unlock()
	}
	c.send(func() error { return c.fr.WriteRSTStream(id, code) })
}

// stream is the open stream id; nil with no error for a closed one, a
// connection error for one the client never opened (RFC 9113 5.1).
func (c *h2SrvConn) streamLocked(id uint32) (*h2SrvStream, error) {
	if st := c.streams[id]; st != nil {
		return st, nil
	}
	if id%2 == 0 || id > c.lastID {
		return nil, http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil, nil
}

func (c *h2SrvConn) onData(f *http2.DataFrame) error {
	n := int64(f.Length)
	c.mu.Lock()
	c.recvWindow -= n
	if c.recvWindow < 0 {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	st, err := c.streamLocked(f.StreamID)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	if st == nil || st.ended {
		// A closed stream's (one reset meanwhile), or one the client
		// ended: not for a reader, its window goes back at once.
		c.unacked += n
		inc := c.takeConnUpdateLocked()
		c.mu.Unlock()
		if inc > 0 {
			c.send(func() error { return c.writeUpdates(0, 0, inc) })
		}
		if st != nil {
			c.resetStream(st, st.id, http2.ErrCodeStreamClosed, errors.New("client sent DATA after its END_STREAM"))
		}
		return nil
	}
	st.recvWindow -= n
	if st.recvWindow < 0 {
		c.unacked += n
		c.mu.Unlock()
		c.resetStream(st, st.id, http2.ErrCodeFlowControl, errors.New("client sent more than the stream's window"))
		return nil
	}
	data := f.Data()
	pad := n - int64(len(data))
	st.got += int64(len(data))
	if st.declared >= 0 && (st.got > st.declared || f.StreamEnded() && st.got != st.declared) {
		c.unacked += n
		c.mu.Unlock()
		c.resetStream(st, st.id, http2.ErrCodeProtocol, errors.New("client's body does not match its content-length"))
		return nil
	}
	if st.bodyClosed {
		pad = n // nobody reads it: the window goes back at once
	} else {
		st.buf.write(data)
	}
	st.unacked += pad
	c.unacked += pad
	var sinc, cinc uint32
	if pad > 0 {
		sinc, cinc = st.takeUpdateLocked(), c.takeConnUpdateLocked()
	}
	if f.StreamEnded() {
		st.ended = true
		sinc = 0
		st.doneLocked()
	}
	st.wake()
	c.mu.Unlock()
	if sinc > 0 || cinc > 0 {
		c.send(func() error { return c.writeUpdates(st.id, sinc, cinc) })
	}
	return nil
}

// takeConnUpdateLocked is the connection window to give back now: all
// that was read (or dropped) once it reaches half the window; c.mu held.
func (c *h2SrvConn) takeConnUpdateLocked() uint32 {
	if c.closed {
		return 0
	}
	return h2GiveBack(&c.recvWindow, &c.unacked, h2SrvConnWindow)
}

func (c *h2SrvConn) onReset(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.streamLocked(f.StreamID)
	if st != nil {
		st.endLocked(errH2ClientReset)
	}
	return err
}

func (c *h2SrvConn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		return h2Setting(st, &c.initWindow, &c.maxFrame, nil, h2ShiftWindows(c.streams))
	})
	c.cond.Broadcast()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return c.send(func() error { return c.ackSettings(f) })
}

func (c *h2SrvConn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		c.sendWindow += inc
		over := c.sendWindow > h2MaxStreamID
		c.cond.Broadcast()
		c.mu.Unlock()
		if over {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		return nil
	}
	st, err := c.streamLocked(f.StreamID)
	if st == nil {
		c.mu.Unlock()
		return err
	}
	st.sendWindow += inc
	over := st.sendWindow > h2MaxStreamID
	c.cond.Broadcast()
	c.mu.Unlock()
	if over {
		c.resetStream(st, st.id, http2.ErrCodeFlowControl, errors.New("client overflowed the stream's send window"))
	}
	return nil
}

// idleLocked arms the idle timer when no stream is open, or closes a
// connection that said GOAWAY once its last stream ends; c.mu held.
func (c *h2SrvConn) idleLocked() {
	if len(c.streams) > 0 || c.closed {
		return
	}
	if c.goAway {
		if c.sentGoAway { // not before: a close would drop it
			go c.conn.Close() // drained: the read loop ends
		}
		return
	}
	c.idleSince = time.Now()
	c.armIdleLocked()
}

// armIdleLocked sets the idle timer for a connection with no stream
// open since idleSince: to park it h1ParkAfter from now, or to close it
// at the idle timeout; c.mu held.
func (c *h2SrvConn) armIdleLocked() {
	if c.srv.idleTimeout <= 0 || len(c.streams) > 0 || c.closed {
		return
	}
	wait := c.srv.idleTimeout - time.Since(c.idleSince)
	if !c.noPark {
		wait = min(wait, h1ParkAfter)
	}
	if c.idle == nil {
		c.idle = time.AfterFunc(wait, c.onIdle)
	} else {
		c.idle.Reset(wait)
	}
}

// onIdle is the idle timer's: with no stream open, it parks c (ends
// the read loop's wait for a frame) or, at the idle timeout, says
// GOAWAY and closes it. A read loop in the middle of a frame, or a
// handler still running, is tried again later.
func (c *h2SrvConn) onIdle() {
	c.mu.Lock()
	if len(c.streams) > 0 || c.closed || c.parked {
		c.mu.Unlock()
		return
	}
	if time.Since(c.idleSince) < c.srv.idleTimeout && !c.noPark {
		if !c.canParkLocked() || !c.kickLocked() {
			c.armIdleLocked()
		}
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	c.shutdown(false) // nothing open: it closes at once
}

// shutdown stops new streams (GOAWAY NO_ERROR, with the last stream the
// client opened): open ones may finish, then the connection closes. With
// bounded (the proxy stops) they have h2DrainWait; else (the client's
// GOAWAY, an answer with Connection: close) they run to their end, each
// under its own bounds, as x/net's server lets them.
func (c *h2SrvConn) shutdown(bounded bool) {
	c.mu.Lock()
	if c.closed || c.goAway && (!bounded || c.draining) {
		c.mu.Unlock()
		return
	}
	first := !c.goAway // after the client's GOAWAY or ours, only the bound is new
	c.goAway = true
	c.draining = c.draining || bounded
	last := c.lastID
	c.mu.Unlock()
	if first {
		_ = c.send(func() error { return c.writeGoAway(last, http2.ErrCodeNo) })
	}
	c.mu.Lock()
	c.idleLocked() // closes at once when nothing is open
	c.mu.Unlock()
	if bounded {
		drain := c.srv.drain
		if drain <= 0 {
			drain = h2DrainWait
		}
		time.AfterFunc(drain, func() { c.conn.Close() })
	}
}

// goAwayNow says GOAWAY with code for a connection error; the connection
// closes after it (its bytes still go out: a coalescing conn's Close
// lets them).
func (c *h2SrvConn) goAwayNow(code http2.ErrCode) {
	c.mu.Lock()
	c.goAway = true
	last := c.lastID
	c.mu.Unlock()
	_ = c.send(func() error { return c.writeGoAway(last, code) })
}

// writeGoAway writes GOAWAY and notes that it went out; in the write
// turn.
func (c *h2SrvConn) writeGoAway(last uint32, code http2.ErrCode) error {
	err := c.fr.WriteGoAway(last, code, nil)
	c.mu.Lock()
	c.sentGoAway = true
	c.mu.Unlock()
	return err
}

// close ends c and every stream still open: their handlers' reads and
// writes fail and their contexts end. It reports whether c was open.
func (c *h2SrvConn) close() bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	c.closed = true
	if c.idle != nil {
		c.idle.Stop()
	}
	for _, st := range c.streams {
		st.endLocked(errH2ConnClosed)
	}
	c.queue = nil
	c.releaseSpareLocked()
	c.cond.Broadcast()
	c.mu.Unlock()
	c.conn.Close()
	return true
}

// dropLocked takes st out of the open streams (once): its slot is free;
// c.mu held.
func (c *h2SrvConn) dropLocked(st *h2SrvStream) {
	if c.streams[st.id] == st {
		delete(c.streams, st.id)
		c.idleLocked()
	}
}

// dateField is the Date field's value now, formatted once a second; in
// the write turn.
func (c *h2SrvConn) dateField() string {
	now := time.Now()
	if sec := now.Unix(); c.date == "" || sec != c.dateSec {
		c.date, c.dateSec = now.UTC().Format(http.TimeFormat), sec
	}
	return c.date
}
