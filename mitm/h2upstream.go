package mitm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// h2Transport is an upstream pool's HTTP/2 client. x/net's Transport
// costs a goroutine per request (it writes the request), four channels
// and about six selects per exchange, handed between the request's
// goroutine, that one and the connection's read loop; here the request's
// own goroutine writes the HEADERS, waits once for the response head and
// reads the body the read loop buffers for it. A goroutine is started
// only to send a request body (which must flow while the response
// streams: gRPC, echo). What it does as a client: flow control both
// ways, SETTINGS (checked; a new connection takes no stream before the
// upstream's), PING, GOAWAY and REFUSED_STREAM (a request the upstream
// did not process is sent once more when it has no body, on a
// connection that takes it), stream IDs until they run out, connections
// dialed as the upstream's stream limit requires (each waiting request
// starts or joins one dial, then waits for room) and closed after
// idleTimeout unused; a connection whose writes stall for idleTimeout is
// closed. Response heads are cleaned as x/net's are: no
// connection-specific field, one Content-Length or none.
type h2Transport struct {
	dial          func(context.Context) (net.Conn, error)
	idleTimeout   time.Duration
	maxHeaderList uint32 // what a response head may decode to
	// headerTimeout bounds the wait for a response head (0: none), as
	// forward's timer does on the other paths: from the moment the
	// request body was read whole (sendBody); a request without one
	// counts from RoundTrip's start, so a wait for a connection or the
	// write turn counts too. It fails with errResponseHeaderTimeout.
	// Each connection keeps one timer for all its streams
	// (h2UpConn.watchHeadLocked), where a timer per request was 1.6% of
	// the proxy's CPU under h2load.
	headerTimeout time.Duration

	mu      sync.Mutex
	conns   []*h2UpConn
	dialing *h2Dial // the dial in flight, which the others wait for
	// live is conns as of its last change, a copy read without mu: a
	// request looks for a stream slot there first (conn). Under h2load
	// every request taking mu to look was the proxy's most contended
	// lock (its mutex profile: four goroutines waiting at any time).
	live atomic.Pointer[[]*h2UpConn]

	// room wakes requests waiting for a stream slot: closed (and
	// dropped) when a stream ends, a connection comes or goes, or a
	// stream limit rises; roomGen counts those, so that a request that
	// looked before one does not wait for the next.
	roomMu  sync.Mutex
	room    chan struct{}
	roomGen atomic.Uint64
}

// h2Dial is one connection being dialed, and its outcome: an error, or
// the stream limit the new connection came with.
type h2Dial struct {
	done  chan struct{}
	err   error
	limit uint32
}

const (
	// h2StreamWindow and h2ConnWindow are the receive windows: x/net's
	// Transport's, so a download runs as fast as it did.
	h2StreamWindow = 4 << 20
	h2ConnWindow   = 1 << 30
	// h2ReadFrame is the largest frame the upstream may send (x/net's
	// Transport's too): a download comes in a sixteenth of the frames
	// (and read-loop wake-ups) of the protocol's default.
	h2ReadFrame = 1 << 20
	// h2InitialStreams is the stream limit assumed until the upstream's
	// SETTINGS say otherwise (RFC 9113 advises at least 100).
	h2InitialStreams = 100
	// h2StreamsPerConn caps the streams Sluice opens on one connection,
	// below a larger limit of the upstream's: each connection's streams
	// share its lock, and past this many they queue on it.
	h2StreamsPerConn = 64
	// h2Max1xx bounds the informational answers one request may get.
	h2Max1xx = 5
	// h2MaxStreamID is the last stream ID a client may open.
	h2MaxStreamID = 1<<31 - 1
)

var (
	// errH2Unprocessed: the upstream says it did not process the stream
	// (GOAWAY below it, REFUSED_STREAM): safe to send again.
	errH2Unprocessed = errors.New("upstream did not process the HTTP/2 stream")
	// errH2ConnLost: the connection ended before the response head came.
	errH2ConnLost = errors.New("upstream HTTP/2 connection lost")
	// errH2Stale: the connection ended between its choice and the
	// request's first frame: nothing was sent or read, any request may go
	// again.
	errH2Stale    = errors.New("upstream HTTP/2 connection ended before the request")
	errH2Canceled = errors.New("request canceled")
	// errH2BodyClosed is what a read of a response body after its Close
	// returns, as net/http's does.
	errH2BodyClosed = errors.New("http2: response body closed")
)

// h2ConnFields are the connection-specific fields RFC 9113 (8.2.2) bars
// from HTTP/2 messages: a response's are dropped, as x/net's Transport
// drops them (an HTTP/1.1 client after Sluice must not read them).
var h2ConnFields = [...]string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"}

func newH2Transport(dial func(context.Context) (net.Conn, error), idleTimeout time.Duration, maxHeaderList uint32) *h2Transport {
	return &h2Transport{dial: dial, idleTimeout: idleTimeout, maxHeaderList: maxHeaderList}
}

// RoundTrip sends req on a connection with room for a stream and returns
// the response head; its body streams from the connection.
func (t *h2Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	hasBody := req.Body != nil && req.Body != http.NoBody
	var headBy time.Time // with a body: set once it is read whole (sendBody)
	if t.headerTimeout > 0 && !hasBody {
		headBy = time.Now().Add(t.headerTimeout)
	}
	retried := false
	for stale := 0; ; {
		c, reused, err := t.conn(req.Context(), req.Cancel, headBy)
		if err != nil {
			if hasBody {
				req.Body.Close()
			}
			return nil, err
		}
		resp, err := c.roundTrip(req, hasBody, headBy)
		switch {
		case err == nil:
			return resp, nil
		case errors.Is(err, errH2Stale) && stale < 3:
			stale++
			continue
		case errors.Is(err, errH2Stale):
			if hasBody {
				req.Body.Close()
			}
			return nil, err
		case retried || hasBody:
			return nil, err
		case !errors.Is(err, errH2Unprocessed) && (!errors.Is(err, errH2ConnLost) || !reused || !idempotent(req)):
			return nil, err
		}
		retried = true
	}
}

// CloseIdleConnections closes the connections with no stream open.
func (t *h2Transport) CloseIdleConnections() {
	t.mu.Lock()
	conns := slices.Clone(t.conns)
	t.mu.Unlock()
	for _, c := range conns {
		c.closeIfIdle()
	}
}

// conn returns a connection with a stream reserved for the caller;
// reused reports that it served a stream before. When none has room the
// caller starts (or joins) a dial, one at a time per transport, and
// again while each dial brings a connection that allows streams (others
// may have taken them); after a dial that brought one allowing none, it
// waits for room, and dials again only when no connection is left (an
// upstream that allows no stream is not dialed over and over). A wait
// ends with errResponseHeaderTimeout at headBy (zero: never).
func (t *h2Transport) conn(ctx context.Context, cancel <-chan struct{}, headBy time.Time) (c *h2UpConn, reused bool, err error) {
	dialed, lastLimit := false, uint32(0)
	var late <-chan time.Time // made at the first wait

	for {
		gen := t.roomGen.Load()
		if live := t.live.Load(); live != nil {
			for _, c := range *live {
				if c.full.Load() {
					continue
				}
				if reused, ok := c.reserve(); ok {
					return c, reused, nil
				}
			}
		}
		t.mu.Lock() // to dial or wait: look again, as a dial may have ended meanwhile
		for _, c := range t.conns {
			if reused, ok := c.reserve(); ok {
				t.mu.Unlock()
				return c, reused, nil
			}
		}
		var wait <-chan struct{}
		var d *h2Dial
		if !dialed || lastLimit > 0 || len(t.conns) == 0 {
			dialed = true
			if d = t.dialing; d == nil {
				d = &h2Dial{done: make(chan struct{})}
				t.dialing = d
				go t.dialConn(d)
			}
			wait = d.done
		}
		t.mu.Unlock()
		if wait == nil {
			if wait = t.roomAfter(gen); wait == nil {
				continue // room came meanwhile: look again
			}
		}
		if late == nil && !headBy.IsZero() {
			tm := time.NewTimer(time.Until(headBy))
			defer tm.Stop()
			late = tm.C
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-cancel:
			return nil, false, errH2Canceled
		case <-late:
			return nil, false, errResponseHeaderTimeout
		}
		if d != nil {
			if d.err != nil {
				return nil, false, d.err
			}
			lastLimit = d.limit
		}
	}
}

// roomAfter is the channel the next signalRoom closes, nil when one came
// after gen.
func (t *h2Transport) roomAfter(gen uint64) <-chan struct{} {
	t.roomMu.Lock()
	defer t.roomMu.Unlock()
	if t.roomGen.Load() != gen {
		return nil
	}
	if t.room == nil {
		t.room = make(chan struct{})
	}
	return t.room
}

// signalRoom wakes the requests waiting for a stream slot. It takes only
// roomMu, so it may be called with any other lock held.
func (t *h2Transport) signalRoom() {
	t.roomMu.Lock()
	defer t.roomMu.Unlock()
	t.roomGen.Add(1)
	if t.room != nil {
		close(t.room)
		t.room = nil
	}
}

// dialConn dials for d, on a goroutine of its own: a request that stops
// waiting leaves the connection to the others.
func (t *h2Transport) dialConn(d *h2Dial) {
	nc, err := t.dial(context.Background())
	var c *h2UpConn
	if err == nil {
		c, err = t.start(nc)
	}
	t.mu.Lock()
	d.err = err
	if c != nil {
		t.conns = append(t.conns, c)
		t.publishLocked()
		c.mu.Lock()
		d.limit = c.maxStreams
		c.idleLocked() // closed in time even if no request takes it
		c.mu.Unlock()
	}
	t.dialing = nil
	t.mu.Unlock()
	close(d.done)
	t.signalRoom()
}

// publishLocked makes conns, as they are now, what live gives; t.mu
// held.
func (t *h2Transport) publishLocked() {
	live := slices.Clone(t.conns)
	t.live.Store(&live)
}

func (t *h2Transport) remove(c *h2UpConn) {
	t.mu.Lock()
	if i := slices.Index(t.conns, c); i >= 0 {
		t.conns = slices.Delete(t.conns, i, i+1)
		t.publishLocked()
	}
	t.mu.Unlock()
	t.signalRoom()
}

// h2UpConn is one HTTP/2 connection to the upstream, its frames read
// and written through its h2Wire. mu guards the streams and every
// window; it is taken inside the write turn, never the other way round.
type h2UpConn struct {
	h2Wire
	t   *h2Transport
	tls *tls.ConnectionState

	mu         sync.Mutex
	cond       sync.Cond // a send window grew, or a stream or the connection ended
	streams    map[uint32]*h2UpStream
	reserved   int // streams promised by reserve, not yet opened
	nextID     uint32
	served     bool // a stream was opened on it before
	maxStreams uint32
	// sendWindow is what the upstream lets the connection send; initWindow
	// a new stream's, maxFrame the largest DATA it takes, maxHeaderList
	// the largest request head (0: no limit).
	sendWindow    int64
	initWindow    int64
	maxFrame      int
	maxHeaderList uint64
	recvWindow    int64 // what the upstream may still send on the connection
	unacked       int64 // read by bodies, not yet returned to the upstream
	goAway        bool
	closed        bool
	err           error // why it closed
	idle          *time.Timer
	// headTimer fails the streams whose response head is late
	// (sweepHeads); headAt is when it fires, zero when it is not armed.
	headTimer *time.Timer
	headAt    time.Time
	// full is a hint for conn's look without t.mu, kept under mu by
	// noteRoomLocked: no stream can be reserved on c now. A request
	// passes a full connection without taking its lock; a stale hint
	// costs only the look under t.mu, which asks reserve itself.
	full atomic.Bool
}

// start opens the connection: the preface, SETTINGS and the connection
// window, the upstream's SETTINGS, then the read loop.
func (t *h2Transport) start(nc net.Conn) (*h2UpConn, error) {
	c := &h2UpConn{
		t:          t,
		streams:    map[uint32]*h2UpStream{},
		nextID:     1,
		maxStreams: min(h2InitialStreams, h2StreamsPerConn),
		sendWindow: 65535, initWindow: 65535, maxFrame: 16 << 10,
		recvWindow: h2ConnWindow,
	}
	c.cond.L = &c.mu
	if cs, ok := nc.(interface{ ConnectionState() tls.ConnectionState }); ok {
		st := cs.ConnectionState()
		c.tls = &st
	}
	c.initWire(nc, t.idleTimeout, h2ReadFrame, t.maxHeaderList)
	err := c.send(func() error {
		if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
			return err
		}
		err := c.fr.WriteSettings(
			http2.Setting{ID: http2.SettingEnablePush, Val: 0},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: h2ReadFrame},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: t.maxHeaderList},
		)
		if err != nil {
			return err
		}
		return c.fr.WriteWindowUpdate(0, h2ConnWindow-65535)
	})
	if err == nil {
		err = c.awaitSettings()
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("start HTTP/2 with upstream: %w", err)
	}
	go c.readLoop()
	return c, nil
}

// h2SettingsWait bounds the wait for the upstream's SETTINGS.
const h2SettingsWait = 10 * time.Second

// awaitSettings reads the upstream's first frame, which must be its
// SETTINGS, and applies it: no stream is opened before its stream limit
// is known (an upstream allowing fewer than h2InitialStreams would
// refuse the rest of a burst).
func (c *h2UpConn) awaitSettings() error {
	_ = c.conn.SetReadDeadline(time.Now().Add(h2SettingsWait))
	f, err := c.fr.ReadFrame()
	_ = c.conn.SetReadDeadline(time.Time{})
	if err != nil {
		return fmt.Errorf("read SETTINGS: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return fmt.Errorf("upstream's first frame is %v, not its SETTINGS", f.Header().Type)
	}
	return c.onSettings(sf)
}

// send runs f (frame writes) in the write turn; an error closes c.
func (c *h2UpConn) send(f func() error) error {
	c.lockW()
	err := f()
	c.unlockW()
	if err != nil {
		c.close(fmt.Errorf("write to upstream: %w", err))
	}
	return err
}

// sendSoon is send without waiting for the turn: when another holds it
// (a write stalled on the upstream), f runs on a goroutine of its own.
// For the frames a request's goroutine sends as it leaves (RST_STREAM,
// a window given back).
func (c *h2UpConn) sendSoon(f func() error) {
	if !c.tryLockW() {
		go func() { _ = c.send(f) }()
		return
	}
	err := f()
	c.unlockW()
	if err != nil {
		c.close(fmt.Errorf("write to upstream: %w", err))
	}
}

// reserve promises the caller a stream on c when c takes new streams and
// has room for one; reused reports that c served a stream before. c.mu
// alone makes it and closeIfIdle exclusive: a reservation stops the
// close, or the close's goAway stops the reservation.
func (c *h2UpConn) reserve() (reused, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.goAway || uint32(len(c.streams)+c.reserved) >= c.maxStreams {
		return false, false
	}
	if uint64(c.nextID)+2*uint64(c.reserved) > h2MaxStreamID {
		c.goAway = true // no ID left for another stream: drain, then close
		c.noteRoomLocked()
		c.idleLocked()
		return false, false
	}
	c.reserved++
	c.noteRoomLocked()
	if c.idle != nil {
		c.idle.Stop()
	}
	return c.served, true
}

// unreserveLocked returns a reservation roundTrip did not use; c.mu
// held.
func (c *h2UpConn) unreserveLocked() {
	c.reserved--
	c.noteRoomLocked()
	c.idleLocked()
	c.t.signalRoom()
}

// noteRoomLocked sets the full hint from c's state; c.mu held.
func (c *h2UpConn) noteRoomLocked() {
	c.full.Store(c.closed || c.goAway || uint32(len(c.streams)+c.reserved) >= c.maxStreams)
}

// idleLocked arms the idle timer when c has nothing open; c.mu held.
func (c *h2UpConn) idleLocked() {
	if len(c.streams)+c.reserved > 0 || c.closed {
		return
	}
	if c.goAway {
		go c.close(errH2Unprocessed) // drained: the upstream asked for no more
		return
	}
	if c.t.idleTimeout <= 0 {
		return
	}
	if c.idle == nil {
		c.idle = time.AfterFunc(c.t.idleTimeout, c.closeIfIdle)
	} else {
		c.idle.Reset(c.t.idleTimeout)
	}
}

// watchHeadLocked has the head timer fire by by, when a stream's
// response head is due then; c.mu held. Deadlines come in the order
// streams open, so the timer, once armed, is usually early enough and
// is left alone: one timer move per headerTimeout, not per request.
func (c *h2UpConn) watchHeadLocked(by time.Time) {
	switch {
	case c.closed:
	case c.headAt.IsZero():
		c.headAt = by
		if c.headTimer == nil {
			c.headTimer = time.AfterFunc(time.Until(by), c.sweepHeads)
		} else {
			c.headTimer.Reset(time.Until(by))
		}
	case by.Before(c.headAt):
		c.headAt = by
		c.headTimer.Reset(time.Until(by))
	}
}

// sweepHeads fails with errResponseHeaderTimeout the streams whose
// response head is due and has not come, and arms the timer for the
// next one due.
func (c *h2UpConn) sweepHeads() {
	now := time.Now()
	var late []*h2UpStream
	var next time.Time
	c.mu.Lock()
	c.headAt = time.Time{}
	for _, s := range c.streams {
		switch {
		case s.headDone || s.headBy.IsZero():
		case !now.Before(s.headBy):
			late = append(late, s)
		case next.IsZero() || s.headBy.Before(next):
			next = s.headBy
		}
	}
	// Failed under the same hold that found them late: a head that came
	// meanwhile would get its caller a response whose body then fails.
	afters := make([]func(), len(late))
	for i, s := range late {
		afters[i] = s.abortLocked(errResponseHeaderTimeout)
	}
	if !next.IsZero() {
		c.watchHeadLocked(next)
	}
	c.mu.Unlock()
	for _, after := range afters {
		after()
	}
}

// closeIfIdle closes c unless a stream is open or promised. It looks
// and sets goAway under c.mu, so reserve cannot promise one meanwhile.
func (c *h2UpConn) closeIfIdle() {
	c.mu.Lock()
	idle := len(c.streams)+c.reserved == 0
	if idle {
		c.goAway = true // no more reservations
		c.noteRoomLocked()
	}
	c.mu.Unlock()
	if idle {
		c.close(errors.New("idle upstream HTTP/2 connection closed"))
	}
}

// close ends c: every open stream fails with err (wrapped in
// errH2ConnLost when it had no response head yet).
func (c *h2UpConn) close(err error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed, c.err = true, err
	c.noteRoomLocked()
	if c.idle != nil {
		c.idle.Stop()
	}
	if c.headTimer != nil {
		c.headTimer.Stop()
	}
	for _, s := range c.streams {
		s.failLocked(err)
	}
	clear(c.streams)
	c.cond.Broadcast()
	c.mu.Unlock()
	c.t.remove(c) // after closed is set: a request with an older t.live can't reserve on c
	c.conn.Close()
}

// dropLocked takes s out of the connection's streams (once), freeing
// its slot; c.mu held.
func (c *h2UpConn) dropLocked(s *h2UpStream) {
	if c.streams[s.id] == s {
		delete(c.streams, s.id)
		c.noteRoomLocked()
		if s.stopAfter != nil {
			s.stopAfter()
		}
		c.idleLocked()
		c.t.signalRoom()
	}
}

// writeReset writes RST_STREAM for stream id and only then frees s's
// slot (s nil: no open stream): the upstream counts the stream until it
// reads the RST, and a request let into the slot before would be one
// over its limit (refused with PROTOCOL_ERROR). The window of what s
// held goes back with it. In the write turn.
func (c *h2UpConn) writeReset(s *h2UpStream, id uint32, code http2.ErrCode) error {
	if err := c.fr.WriteRSTStream(id, code); err != nil {
		return err
	}
	c.mu.Lock()
	if s != nil {
		c.dropLocked(s)
	}
	inc := c.takeConnUpdateLocked()
	c.mu.Unlock()
	return c.writeUpdates(0, 0, inc)
}
