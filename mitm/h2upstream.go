package mitm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
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

	mu      sync.Mutex
	conns   []*h2UpConn
	dialing *h2Dial // the dial in flight, which the others wait for

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
	retried := false
	for stale := 0; ; {
		c, reused, err := t.conn(req.Context(), req.Cancel)
		if err != nil {
			if hasBody {
				req.Body.Close()
			}
			return nil, err
		}
		resp, err := c.roundTrip(req, hasBody)
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
// upstream that allows no stream is not dialed over and over).
func (t *h2Transport) conn(ctx context.Context, cancel <-chan struct{}) (c *h2UpConn, reused bool, err error) {
	dialed, lastLimit := false, uint32(0)
	for {
		gen := t.roomGen.Load()
		t.mu.Lock()
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
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-cancel:
			return nil, false, errH2Canceled
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

func (t *h2Transport) remove(c *h2UpConn) {
	t.mu.Lock()
	if i := slices.Index(t.conns, c); i >= 0 {
		t.conns = slices.Delete(t.conns, i, i+1)
	}
	t.mu.Unlock()
	t.signalRoom()
}

// h2UpConn is one HTTP/2 connection to the upstream. Frames are written
// by whoever holds the write turn (wturn: the Framer's write side, the
// HPACK encoder and wdl); the read loop alone reads. mu guards the
// streams and every window; it is taken inside the write turn, never
// the other way round.
type h2UpConn struct {
	t    *h2Transport
	conn net.Conn
	fr   *http2.Framer
	tls  *tls.ConnectionState

	wturn chan struct{} // capacity 1: held while writing
	henc  *hpack.Encoder
	hbuf  bytes.Buffer
	wdl   time.Time // the write deadline set last

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
}

// start opens the connection: the preface, SETTINGS and the connection
// window, the upstream's SETTINGS, then the read loop.
func (t *h2Transport) start(nc net.Conn) (*h2UpConn, error) {
	c := &h2UpConn{
		t: t, conn: nc,
		wturn:      make(chan struct{}, 1),
		streams:    map[uint32]*h2UpStream{},
		nextID:     1,
		maxStreams: h2InitialStreams,
		sendWindow: 65535, initWindow: 65535, maxFrame: 16 << 10,
		recvWindow: h2ConnWindow,
	}
	c.cond.L = &c.mu
	if cs, ok := nc.(interface{ ConnectionState() tls.ConnectionState }); ok {
		st := cs.ConnectionState()
		c.tls = &st
	}
	// A small buffer: a frame header and a short frame come from one read
	// of it; a DATA frame's payload is read past it into the Framer's.
	c.fr = http2.NewFramer(nc, bufio.NewReaderSize(nc, 4<<10))
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = t.maxHeaderList
	c.fr.SetMaxReadFrameSize(h2ReadFrame)
	c.fr.SetReuseFrames()
	c.henc = hpack.NewEncoder(&c.hbuf)
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

// lockW takes the write turn and pushes the connection's write deadline
// out to idleTimeout (at most once per deadlineSlack: over a coalescing
// conn it is only stored unless a Write waits): an upstream that reads
// nothing for that long fails the write, which closes the connection.
func (c *h2UpConn) lockW() {
	c.wturn <- struct{}{}
	c.armW()
}

// lockWFor is lockW for a request: it gives up when ctx ends or cancel
// closes (the client left, the header timer fired) while another holds
// the turn.
func (c *h2UpConn) lockWFor(ctx context.Context, cancel <-chan struct{}) error {
	select {
	case c.wturn <- struct{}{}:
		c.armW()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-cancel:
		return errH2Canceled
	}
}

func (c *h2UpConn) unlockW() { <-c.wturn }

func (c *h2UpConn) armW() {
	if idle := c.t.idleTimeout; idle > 0 {
		if t, push := pushDeadline(c.wdl, idle); push {
			_ = c.conn.SetWriteDeadline(t)
			c.wdl = t
		}
	}
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
	select {
	case c.wturn <- struct{}{}:
		c.armW()
		err := f()
		c.unlockW()
		if err != nil {
			c.close(fmt.Errorf("write to upstream: %w", err))
		}
	default:
		go func() { _ = c.send(f) }()
	}
}

// reserve promises the caller a stream on c when c takes new streams and
// has room for one; reused reports that c served a stream before.
// Called with t.mu held.
func (c *h2UpConn) reserve() (reused, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.goAway || uint32(len(c.streams)+c.reserved) >= c.maxStreams {
		return false, false
	}
	if uint64(c.nextID)+2*uint64(c.reserved) > h2MaxStreamID {
		c.goAway = true // no ID left for another stream: drain, then close
		c.idleLocked()
		return false, false
	}
	c.reserved++
	if c.idle != nil {
		c.idle.Stop()
	}
	return c.served, true
}

// unreserve returns a reservation roundTrip did not use; c.mu held.
func (c *h2UpConn) unreserveLocked() {
	c.reserved--
	c.idleLocked()
	c.t.signalRoom()
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

// closeIfIdle closes c unless a stream is open or promised. It holds
// t.mu while it looks, so reserve cannot promise one meanwhile.
func (c *h2UpConn) closeIfIdle() {
	c.t.mu.Lock()
	c.mu.Lock()
	idle := len(c.streams)+c.reserved == 0
	if idle {
		c.goAway = true // no more reservations
	}
	c.mu.Unlock()
	c.t.mu.Unlock()
	if idle {
		c.close(errors.New("idle upstream HTTP/2 connection closed"))
	}
}

// close ends c: every open stream fails with err (wrapped in
// errH2ConnLost when it had no response head yet).
func (c *h2UpConn) close(err error) {
	c.t.remove(c)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed, c.err = true, err
	if c.idle != nil {
		c.idle.Stop()
	}
	for _, s := range c.streams {
		s.failLocked(err)
	}
	clear(c.streams)
	c.cond.Broadcast()
	c.mu.Unlock()
	c.conn.Close()
}

// dropLocked takes s out of the connection's streams (once); c.mu held.
func (c *h2UpConn) dropLocked(s *h2UpStream) {
	if c.streams[s.id] == s {
		delete(c.streams, s.id)
		c.idleLocked()
		c.t.signalRoom()
	}
}

// h2UpStream is one request's stream. Its fields below mu are guarded by
// the connection's mu.
type h2UpStream struct {
	c      *h2UpConn
	id     uint32
	req    *http.Request
	ctx    context.Context
	cancel <-chan struct{}
	isHead bool
	head   chan struct{} // closed when resp or err is set
	body   io.ReadCloser // the request body being sent; nil: none or done

	// mu: c.mu
	resp       *http.Response
	err        error // the stream's end, for the response side
	headDone   bool
	got1xx     int
	buf        h2Queue // received, not yet read
	ended      bool    // the upstream's END_STREAM came
	sentEnd    bool    // the request's END_STREAM went out (or never will)
	reset      bool    // RST_STREAM sent or received: nothing more is sent
	trailer    http.Header
	declared   int64 // the response's content-length, -1: none
	read       int64
	recvWindow int64
	unacked    int64
	sendWindow int64
	ready      chan struct{} // a wake-up for the body's reader (capacity 1)
	closeOnce  sync.Once
}

// roundTrip opens a stream for req on c (a reservation the caller holds),
// writes its head and waits for the response head.
func (c *h2UpConn) roundTrip(req *http.Request, hasBody bool) (*http.Response, error) {
	ctx := req.Context()
	s := &h2UpStream{c: c, req: req, ctx: ctx, cancel: req.Cancel, isHead: req.Method == http.MethodHead,
		head: make(chan struct{}), ready: make(chan struct{}, 1), declared: -1,
		recvWindow: h2StreamWindow, sentEnd: !hasBody}
	if hasBody {
		s.body = req.Body
	}
	if err := c.lockWFor(ctx, s.cancel); err != nil {
		c.mu.Lock()
		c.unreserveLocked()
		c.mu.Unlock()
		s.closeBody()
		return nil, err
	}
	c.mu.Lock()
	if c.closed || c.goAway {
		c.unreserveLocked()
		c.mu.Unlock()
		c.unlockW()
		return nil, errH2Stale // the body is untouched: RoundTrip sends it on another
	}
	maxFrame, maxList := c.maxFrame, c.maxHeaderList
	c.mu.Unlock()
	// The head is checked whole before a field goes into the encoder:
	// a head refused half-encoded would leave the connection's HPACK
	// table out of step with the upstream's, and the next request's
	// fields decoded as someone else's.
	if err := checkHead(req, hasBody, maxList); err != nil {
		c.unlockW()
		c.mu.Lock()
		c.unreserveLocked()
		c.mu.Unlock()
		s.closeBody()
		return nil, err
	}
	c.mu.Lock()
	c.reserved--
	s.id = c.nextID
	c.nextID += 2
	c.served = true
	s.sendWindow = c.initWindow
	c.streams[s.id] = s
	c.mu.Unlock()
	err := c.writeBlock(s.id, !hasBody, c.encodeHead(req, hasBody), maxFrame)
	c.unlockW()
	if err != nil {
		c.close(fmt.Errorf("write to upstream: %w", err))
		s.closeBody()
		return nil, fmt.Errorf("%w: write request: %w", errH2ConnLost, err)
	}
	if hasBody {
		go s.sendBody()
	}
	select {
	case <-s.head:
	case <-ctx.Done():
		s.abort(ctx.Err())
		return nil, ctx.Err()
	case <-s.cancel:
		s.abort(errH2Canceled)
		return nil, errH2Canceled
	}
	if s.resp == nil {
		return nil, s.err
	}
	c.mu.Lock()
	open := !s.sentEnd || s.resp.Body == http.NoBody && !s.ended
	c.mu.Unlock()
	if open {
		// A request body still going out, or an answer with no body to
		// close (HEAD) whose stream has not ended: nothing the caller
		// does ends the stream, so the request's end does (the handler
		// returned, or the client left).
		context.AfterFunc(ctx, func() { s.abort(context.Cause(ctx)) })
	}
	return s.resp, nil
}

// headFields calls field with each field of req's head: x/net's
// Transport's, the pseudo-fields, then req.Header without the
// connection-specific fields, content-length for a body of known length
// (and for an empty POST, PUT or PATCH), the announced trailers, no
// User-Agent unless the request has one. With check, names and values
// are checked first (an invalid one is the error).
func headFields(req *http.Request, hasBody, check bool, field func(name, value string)) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if check && !httpguts.ValidHostHeader(host) {
		return fmt.Errorf("invalid Host %q for upstream HTTP/2", host)
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	field(":authority", host)
	field(":method", method)
	if method != http.MethodConnect {
		path := req.URL.RequestURI()
		if !strings.HasPrefix(path, "/") && path != "*" {
			if check && req.URL.Opaque == "" {
				return fmt.Errorf("invalid request path %q for upstream HTTP/2", path)
			}
			path = req.URL.Opaque
		}
		field(":path", path)
		field(":scheme", req.URL.Scheme)
	}
	for k, vs := range req.Header {
		if check && !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("invalid request field name %q for upstream HTTP/2", k)
		}
		name := lowerKey(k)
		switch name {
		case "host", "content-length", "connection", "proxy-connection", "transfer-encoding", "upgrade", "keep-alive", "trailer":
			continue
		case "te":
			if !slices.ContainsFunc(vs, func(v string) bool { return strings.EqualFold(v, "trailers") }) {
				continue
			}
			vs = []string{"trailers"}
		case "user-agent":
			if len(vs) == 0 || vs[0] == "" {
				continue
			}
			vs = vs[:1]
		}
		for _, v := range vs {
			if check && !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("invalid value of request field %q for upstream HTTP/2", k)
			}
			field(name, v)
		}
	}
	if len(req.Trailer) > 0 {
		keys := make([]string, 0, len(req.Trailer))
		for k := range req.Trailer {
			keys = append(keys, http.CanonicalHeaderKey(k))
		}
		slices.Sort(keys)
		field("trailer", strings.Join(keys, ","))
	}
	// As net/http reads a request: a body with ContentLength 0 is of
	// unknown length.
	if n := req.ContentLength; n > 0 && hasBody || n == 0 && !hasBody && (method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch) {
		field("content-length", strconv.FormatInt(n, 10))
	}
	return nil
}

// checkHead checks req's head (headFields) and its size against the
// upstream's limit (0: none), touching no encoder.
func checkHead(req *http.Request, hasBody bool, maxList uint64) error {
	var size uint64
	err := headFields(req, hasBody, true, func(name, value string) { size += uint64(len(name) + len(value) + 32) })
	if err == nil && maxList > 0 && size > maxList {
		err = fmt.Errorf("request head of %d bytes is over the upstream's limit of %d", size, maxList)
	}
	return err
}

// encodeHead is req's head (checked by checkHead) as an HPACK block, in
// c.hbuf; in the write turn.
func (c *h2UpConn) encodeHead(req *http.Request, hasBody bool) []byte {
	c.hbuf.Reset()
	_ = headFields(req, hasBody, false, func(name, value string) {
		_ = c.henc.WriteField(hpack.HeaderField{Name: name, Value: value}) // into c.hbuf: no error
	})
	return c.hbuf.Bytes()
}

// writeBlock writes a header block as HEADERS and CONTINUATION frames of
// at most maxFrame bytes; in the write turn.
func (c *h2UpConn) writeBlock(id uint32, endStream bool, block []byte, maxFrame int) error {
	first := true
	for first || len(block) > 0 {
		chunk := block[:min(len(block), maxFrame)]
		block = block[len(chunk):]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk, EndStream: endStream, EndHeaders: len(block) == 0})
		} else {
			err = c.fr.WriteContinuation(id, len(block) == 0, chunk)
		}
		if err != nil {
			return err
		}
		first = false
	}
	return nil
}

// sendBody sends the request body as DATA within the send windows, then
// its trailers or an empty END_STREAM; it closes the body. On its own
// goroutine: the response may stream meanwhile. It stops when the stream
// is reset, which the request's end does (roundTrip).
func (s *h2UpStream) sendBody() {
	c := s.c
	defer s.closeBody()
	bufp := h2BodyBufs.Get().(*[]byte)
	defer h2BodyBufs.Put(bufp)
	buf := *bufp
	endSent := false
	for {
		// Read to io.EOF even after a declared length: a body's end arms
		// the response header timer (countingBody).
		n, rerr := s.body.Read(buf)
		if rerr != nil && rerr != io.EOF {
			s.abort(fmt.Errorf("read request body: %w", rerr))
			return
		}
		last := rerr == io.EOF
		for data := buf[:n]; len(data) > 0; {
			k, ok := s.awaitWindow(len(data))
			if !ok {
				return
			}
			end := last && k == len(data) && len(s.req.Trailer) == 0
			if !s.write(func() error { return c.fr.WriteData(s.id, end, data[:k]) }) {
				return
			}
			endSent = end
			data = data[k:]
		}
		if last {
			break
		}
	}
	switch {
	case endSent:
	case len(s.req.Trailer) > 0:
		ok := s.write(func() error {
			c.mu.Lock()
			maxFrame := c.maxFrame
			c.mu.Unlock()
			c.hbuf.Reset()
			for k, vs := range s.req.Trailer {
				for _, v := range vs {
					_ = c.henc.WriteField(hpack.HeaderField{Name: lowerKey(k), Value: v})
				}
			}
			return c.writeBlock(s.id, true, c.hbuf.Bytes(), maxFrame)
		})
		if !ok {
			return
		}
	default:
		if !s.write(func() error { return c.fr.WriteData(s.id, true, nil) }) {
			return
		}
	}
	c.mu.Lock()
	s.sentEnd = true
	s.doneLocked()
	c.mu.Unlock()
}

// h2BodyBufs holds the buffers request bodies are sent from.
var h2BodyBufs = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// awaitWindow waits until the stream may send and returns how much of n
// bytes it may send now (taken from both windows); false: the stream or
// the connection ended.
func (s *h2UpStream) awaitWindow(n int) (int, bool) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if s.reset || c.closed {
			return 0, false
		}
		if w := min(s.sendWindow, c.sendWindow, int64(c.maxFrame)); w > 0 {
			k := int(min(int64(n), w))
			s.sendWindow -= int64(k)
			c.sendWindow -= int64(k)
			return k, true
		}
		c.cond.Wait()
	}
}

// write runs a frame write for s in the write turn unless s was reset;
// a write error ends the connection. It reports whether the frame went
// out.
func (s *h2UpStream) write(f func() error) bool {
	c := s.c
	c.lockW()
	c.mu.Lock()
	gone := s.reset || c.closed
	c.mu.Unlock()
	if gone {
		c.unlockW()
		return false
	}
	err := f()
	c.unlockW()
	if err != nil {
		c.close(fmt.Errorf("write to upstream: %w", err))
		return false
	}
	return true
}

// closeBody closes the request body once.
func (s *h2UpStream) closeBody() {
	if s.body != nil {
		s.closeOnce.Do(func() { s.body.Close() })
	}
}

// abort resets the stream (RST_STREAM CANCEL) unless it is over, fails
// it with err and gives its unread data's window back.
func (s *h2UpStream) abort(err error) {
	c := s.c
	c.mu.Lock()
	send := !s.reset && !c.closed && c.streams[s.id] == s
	s.failLocked(err)
	inc := s.releaseLocked()
	c.mu.Unlock()
	if send || inc > 0 {
		c.sendSoon(func() error {
			if send {
				if err := c.fr.WriteRSTStream(s.id, http2.ErrCodeCancel); err != nil {
					return err
				}
			}
			return c.writeUpdates(0, 0, inc)
		})
	}
	s.closeBody()
}

// failLocked ends the response side with err unless it ended already;
// nothing more goes out on the stream. c.mu held.
func (s *h2UpStream) failLocked(err error) {
	if !s.headDone {
		if !errors.Is(err, errH2Unprocessed) && !errors.Is(err, errH2ConnLost) && s.c.closed {
			err = fmt.Errorf("%w: %w", errH2ConnLost, err)
		}
		s.err, s.headDone = err, true
		close(s.head)
	} else if s.err == nil && !s.ended {
		s.err = err
	}
	s.reset = true
	s.wake()
	s.c.cond.Broadcast()
}

// releaseLocked takes s out of the connection, gives the connection's
// window its unread data back and returns the increment to send now
// (takeConnUpdateLocked); c.mu held.
func (s *h2UpStream) releaseLocked() uint32 {
	c := s.c
	c.dropLocked(s)
	c.unacked += int64(s.buf.n)
	s.buf.release()
	return c.takeConnUpdateLocked()
}

// doneLocked takes s out of the connection once both sides ended; c.mu
// held.
func (s *h2UpStream) doneLocked() {
	if (s.ended || s.reset) && s.sentEnd {
		s.c.dropLocked(s)
	}
}

func (s *h2UpStream) wake() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// readLoop reads frames until the connection ends, then closes it.
func (c *h2UpConn) readLoop() {
	err := c.readFrames()
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		c.sendSoon(func() error { return c.fr.WriteGoAway(0, http2.ErrCode(ce), nil) })
	}
	c.close(fmt.Errorf("read from upstream: %w", err))
}

func (c *h2UpConn) readFrames() error {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code, fmt.Errorf("upstream HTTP/2 stream: %w", se))
				continue
			}
			return err
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			err = c.onHeaders(f)
		case *http2.DataFrame:
			err = c.onData(f)
		case *http2.RSTStreamFrame:
			c.onReset(f)
		case *http2.SettingsFrame:
			err = c.onSettings(f)
		case *http2.PingFrame:
			if !f.IsAck() {
				data := f.Data
				err = c.send(func() error { return c.fr.WritePing(true, data) })
			}
		case *http2.GoAwayFrame:
			c.onGoAway(f)
		case *http2.WindowUpdateFrame:
			err = c.onWindowUpdate(f)
		case *http2.PushPromiseFrame:
			return http2.ConnectionError(http2.ErrCodeProtocol) // push is off in our SETTINGS
		}
		if err != nil {
			return err
		}
	}
}

// stream is the open stream id, nil for one that ended (or was never
// opened: a connection error when id is one we never used).
func (c *h2UpConn) stream(id uint32) (*h2UpStream, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.streams[id]; s != nil {
		return s, nil
	}
	if id%2 == 0 || id >= c.nextID {
		return nil, http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil, nil
}

// resetStream resets stream id with code and fails it with err; from the
// read loop.
func (c *h2UpConn) resetStream(id uint32, code http2.ErrCode, err error) {
	c.mu.Lock()
	s := c.streams[id]
	var inc uint32
	if s != nil {
		s.failLocked(err)
		inc = s.releaseLocked()
	}
	c.mu.Unlock()
	if s != nil {
		s.closeBody()
	}
	_ = c.send(func() error {
		if err := c.fr.WriteRSTStream(id, code); err != nil {
			return err
		}
		return c.writeUpdates(0, 0, inc)
	})
}

func (c *h2UpConn) onHeaders(f *http2.MetaHeadersFrame) error {
	s, err := c.stream(f.StreamID)
	if s == nil {
		return err // a stream we reset: the block was decoded, the HPACK state kept
	}
	if f.Truncated {
		c.resetStream(s.id, http2.ErrCodeProtocol, fmt.Errorf("upstream response head over %d bytes", c.t.maxHeaderList))
		return nil
	}
	c.mu.Lock()
	headDone := s.headDone
	c.mu.Unlock()
	if headDone {
		return c.onTrailers(s, f)
	}
	status := f.PseudoValue("status")
	code, err := strconv.Atoi(status)
	if len(status) != 3 || err != nil || code < 100 {
		c.resetStream(s.id, http2.ErrCodeProtocol, fmt.Errorf("upstream sent a response with :status %q", status))
		return nil
	}
	if code < 200 {
		c.mu.Lock()
		s.got1xx++
		n := s.got1xx
		c.mu.Unlock()
		if code == http.StatusSwitchingProtocols || f.StreamEnded() || n > h2Max1xx {
			c.resetStream(s.id, http2.ErrCodeProtocol, errUnexpected1xx)
		}
		return nil
	}
	resp := c.response(s, status, code, f)
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.headDone { // aborted meanwhile
		return nil
	}
	s.resp, s.headDone = resp, true
	close(s.head)
	if f.StreamEnded() {
		s.ended = true
		s.doneLocked()
	}
	return nil
}

// response is the response a final head makes, cleaned as x/net's
// Transport cleans it (go.dev/issue/81115): no connection-specific
// field, a Content-Length kept only when every copy agrees, the
// announced trailers as resp.Trailer's keys. Its body: none for HEAD;
// one that reads io.ErrUnexpectedEOF when the head ended the stream
// but announced a length; else the stream's.
func (c *h2UpConn) response(s *h2UpStream, status string, code int, f *http2.MetaHeadersFrame) *http.Response {
	fields := f.RegularFields()
	header := make(http.Header, len(fields))
	var trailer http.Header
	for _, hf := range fields {
		key := canonicalH2Key(hf.Name)
		if key == "Trailer" {
			if trailer == nil {
				trailer = http.Header{}
			}
			for v := range strings.SplitSeq(hf.Value, ",") {
				if v = textprotoTrim(v); v != "" {
					trailer[http.CanonicalHeaderKey(v)] = nil
				}
			}
			continue
		}
		header[key] = append(header[key], hf.Value)
	}
	for _, k := range h2ConnFields {
		delete(header, k)
	}
	resp := &http.Response{
		Status: status + " " + http.StatusText(code), StatusCode: code,
		Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: header, Trailer: trailer, ContentLength: -1,
		Request: s.req, TLS: c.tls,
	}
	if vs, ok := header["Content-Length"]; ok {
		n, err := strconv.ParseUint(vs[0], 10, 63)
		if err != nil || slices.ContainsFunc(vs[1:], func(v string) bool { return v != vs[0] }) {
			delete(header, "Content-Length")
		} else {
			header["Content-Length"] = vs[:1]
			resp.ContentLength = int64(n)
		}
	}
	switch {
	case s.isHead:
		resp.Body = http.NoBody
	case f.StreamEnded() && resp.ContentLength > 0:
		resp.Body = h2MissingBody{}
	case f.StreamEnded():
		resp.Body, resp.ContentLength = http.NoBody, 0
	default:
		resp.Body = &h2UpBody{s: s}
		s.declared = resp.ContentLength // s is not yet visible to a reader: set before head closes
	}
	return resp
}

// h2MissingBody is the body of a response whose head ended its stream
// but announced a length: it is missing.
type h2MissingBody struct{}

func (h2MissingBody) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }
func (h2MissingBody) Close() error             { return nil }

func (c *h2UpConn) onTrailers(s *h2UpStream, f *http2.MetaHeadersFrame) error {
	if !f.StreamEnded() {
		c.resetStream(s.id, http2.ErrCodeProtocol, errors.New("upstream sent a second header block that does not end the stream"))
		return nil
	}
	t := http.Header{}
	for _, hf := range f.RegularFields() {
		k := canonicalH2Key(hf.Name)
		t[k] = append(t[k], hf.Value)
	}
	c.mu.Lock()
	s.trailer, s.ended = t, true
	s.wake()
	s.doneLocked()
	c.mu.Unlock()
	return nil
}

func (c *h2UpConn) onData(f *http2.DataFrame) error {
	n := int64(f.Length)
	c.mu.Lock()
	c.recvWindow -= n
	if c.recvWindow < 0 {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	s := c.streams[f.StreamID]
	if s == nil || !s.headDone || s.ended || s.resp.Body == http.NoBody {
		c.unacked += n // not for a reader: given back at once
		inc := c.takeConnUpdateLocked()
		known := s != nil || f.StreamID%2 == 1 && f.StreamID < c.nextID
		bad := s != nil && (!s.headDone || s.ended)
		if s != nil && !bad && f.StreamEnded() { // a HEAD's
			s.ended = true
			s.doneLocked()
		}
		c.mu.Unlock()
		if !known {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if bad {
			c.resetStream(f.StreamID, http2.ErrCodeStreamClosed, errors.New("upstream sent DATA outside a response body"))
		}
		return c.sendUpdates(0, 0, inc)
	}
	s.recvWindow -= n
	if s.recvWindow < 0 {
		c.unacked += n // refused: the connection's window back
		c.mu.Unlock()
		c.resetStream(s.id, http2.ErrCodeFlowControl, errors.New("upstream sent more than the stream's window"))
		return nil
	}
	data := f.Data()
	pad := n - int64(len(data))
	s.unacked += pad
	c.unacked += pad
	s.buf.write(data)
	if f.StreamEnded() {
		s.ended = true
		s.doneLocked()
	}
	s.wake()
	c.mu.Unlock()
	return nil
}

// takeConnUpdateLocked is the connection window to give back now: all
// that was read (or dropped) once it reaches half the window; c.mu held.
func (c *h2UpConn) takeConnUpdateLocked() uint32 {
	if c.unacked < h2ConnWindow/2 || c.closed {
		return 0
	}
	inc := c.unacked
	c.unacked = 0
	c.recvWindow += inc
	return uint32(inc)
}

// sendUpdates sends WINDOW_UPDATEs (writeUpdates) in the write turn.
func (c *h2UpConn) sendUpdates(id, streamInc, connInc uint32) error {
	if streamInc == 0 && connInc == 0 {
		return nil
	}
	return c.send(func() error { return c.writeUpdates(id, streamInc, connInc) })
}

// writeUpdates writes WINDOW_UPDATEs for the connection and stream id (0:
// none); in the write turn.
func (c *h2UpConn) writeUpdates(id, streamInc, connInc uint32) error {
	if connInc > 0 {
		if err := c.fr.WriteWindowUpdate(0, connInc); err != nil {
			return err
		}
	}
	if streamInc > 0 {
		return c.fr.WriteWindowUpdate(id, streamInc)
	}
	return nil
}

func (c *h2UpConn) onReset(f *http2.RSTStreamFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if s == nil {
		return
	}
	switch {
	case f.ErrCode == http2.ErrCodeRefusedStream:
		s.failLocked(fmt.Errorf("%w: refused", errH2Unprocessed))
	case f.ErrCode == http2.ErrCodeNo && s.ended:
		// a complete response; the upstream wants no more of the body
		s.reset = true
		c.cond.Broadcast()
	default:
		s.failLocked(fmt.Errorf("upstream reset the HTTP/2 stream: %v", f.ErrCode))
	}
	c.dropLocked(s) // its unread data stays for the reader; Close gives its window back
}

func (c *h2UpConn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err // MAX_FRAME_SIZE outside 16 KiB-16 MiB, a window over 2^31-1, ...
		}
		switch st.ID {
		case http2.SettingMaxConcurrentStreams:
			c.maxStreams = st.Val
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - c.initWindow
			for _, s := range c.streams {
				s.sendWindow += delta
				if s.sendWindow > h2MaxStreamID {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			c.initWindow = int64(st.Val)
			c.cond.Broadcast()
		case http2.SettingMaxFrameSize:
			c.maxFrame = int(st.Val)
		case http2.SettingMaxHeaderListSize:
			c.maxHeaderList = uint64(st.Val)
		}
		return nil
	})
	c.mu.Unlock()
	if err != nil {
		return err
	}
	c.t.signalRoom() // the stream limit may have risen
	return c.send(func() error {
		if v, ok := f.Value(http2.SettingHeaderTableSize); ok {
			c.henc.SetMaxDynamicTableSizeLimit(v)
		}
		return c.fr.WriteSettingsAck()
	})
}

func (c *h2UpConn) onGoAway(f *http2.GoAwayFrame) {
	c.t.remove(c)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.goAway = true
	for id, s := range c.streams {
		if id > f.LastStreamID {
			s.failLocked(fmt.Errorf("%w: GOAWAY (%v)", errH2Unprocessed, f.ErrCode))
			c.dropLocked(s)
		}
	}
	c.idleLocked()
}

func (c *h2UpConn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	inc := int64(f.Increment)
	var overflow uint32 // a stream whose window overflowed
	if f.StreamID == 0 {
		c.sendWindow += inc
		if c.sendWindow > h2MaxStreamID {
			c.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
	} else if s := c.streams[f.StreamID]; s != nil {
		if s.sendWindow += inc; s.sendWindow > h2MaxStreamID {
			overflow = s.id
		}
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	if overflow != 0 {
		c.resetStream(overflow, http2.ErrCodeFlowControl, errors.New("upstream overflowed the stream's send window"))
	}
	return nil
}

// h2UpBody is a response body: what the read loop buffered for its
// stream.
type h2UpBody struct {
	s      *h2UpStream
	closed bool
}

// Read returns what the stream buffered, waiting for more until its
// end. Data past the declared length is an error (after the part within
// it); all it read is given back to the windows as it goes.
func (b *h2UpBody) Read(p []byte) (int, error) {
	s := b.s
	c := s.c
	for {
		c.mu.Lock()
		if b.closed {
			c.mu.Unlock()
			return 0, errH2BodyClosed
		}
		if s.buf.n > 0 {
			n := s.buf.read(p)
			s.read += int64(n)
			s.unacked += int64(n)
			c.unacked += int64(n)
			var over error
			if s.declared >= 0 && s.read > s.declared {
				n -= int(s.read - s.declared)
				s.read = s.declared
				over = errors.New("upstream sent more than its Content-Length")
			}
			var sinc uint32
			if over == nil && s.unacked >= h2StreamWindow/2 && !s.ended && !s.reset {
				sinc = uint32(s.unacked)
				s.recvWindow += s.unacked
				s.unacked = 0
			}
			cinc := c.takeConnUpdateLocked()
			c.mu.Unlock()
			if over != nil {
				s.abort(over)
				return n, over
			}
			if sinc > 0 || cinc > 0 {
				_ = c.sendUpdates(s.id, sinc, cinc) // a failure closes c: the next read says so
			}
			return n, nil
		}
		if s.ended {
			t := s.trailer
			short := s.declared >= 0 && s.read < s.declared
			c.mu.Unlock()
			if short {
				return 0, io.ErrUnexpectedEOF
			}
			for k, vs := range t {
				if s.resp.Trailer == nil {
					s.resp.Trailer = http.Header{}
				}
				s.resp.Trailer[k] = vs
			}
			return 0, io.EOF
		}
		if err := s.err; err != nil {
			c.mu.Unlock()
			return 0, err
		}
		c.mu.Unlock()
		select {
		case <-s.ready:
		case <-s.ctx.Done():
			err := s.ctx.Err()
			s.abort(err)
			return 0, err
		case <-s.cancel:
			s.abort(errH2Canceled)
			return 0, errH2Canceled
		}
	}
}

// Close ends the body; before its end, the stream is reset.
func (b *h2UpBody) Close() error {
	s := b.s
	c := s.c
	c.mu.Lock()
	if b.closed {
		c.mu.Unlock()
		return nil
	}
	b.closed = true
	// Read to its end, with the request's END_STREAM sent: the stream
	// left the table already. Else it is reset, as x/net's is (the
	// request body's rest is not wanted once the response is over).
	whole := s.ended && s.buf.n == 0 && s.sentEnd
	c.mu.Unlock()
	if !whole {
		s.abort(errH2BodyClosed)
	}
	return nil
}

// h2Queue is a stream's received data in pooled chunks: a download
// reuses the same few buffers instead of growing one per stream (which
// put megabytes per download to the collector).
type h2Queue struct {
	chunks []*[]byte // each filled to its len; the first read from off
	off    int
	n      int // bytes held
}

// h2Chunks pools the chunks by size: small answers take a small one.
var h2Chunks = [...]sync.Pool{
	{New: func() any { b := make([]byte, 0, 1<<10); return &b }},
	{New: func() any { b := make([]byte, 0, 4<<10); return &b }},
	{New: func() any { b := make([]byte, 0, 16<<10); return &b }},
}

func h2Chunk(want int) *[]byte {
	switch {
	case want <= 1<<10:
		return h2Chunks[0].Get().(*[]byte)
	case want <= 4<<10:
		return h2Chunks[1].Get().(*[]byte)
	}
	return h2Chunks[2].Get().(*[]byte)
}

func putH2Chunk(b *[]byte) {
	*b = (*b)[:0]
	switch cap(*b) {
	case 1 << 10:
		h2Chunks[0].Put(b)
	case 4 << 10:
		h2Chunks[1].Put(b)
	case 16 << 10:
		h2Chunks[2].Put(b)
	}
}

func (q *h2Queue) write(p []byte) {
	q.n += len(p)
	for len(p) > 0 {
		var last *[]byte
		if k := len(q.chunks); k > 0 {
			last = q.chunks[k-1]
		}
		if last == nil || len(*last) == cap(*last) {
			last = h2Chunk(len(p))
			q.chunks = append(q.chunks, last)
		}
		k := min(len(p), cap(*last)-len(*last))
		*last = append(*last, p[:k]...)
		p = p[k:]
	}
}

func (q *h2Queue) read(p []byte) int {
	n := 0
	for n < len(p) && len(q.chunks) > 0 {
		first := q.chunks[0]
		k := copy(p[n:], (*first)[q.off:])
		n += k
		q.off += k
		if q.off == len(*first) {
			putH2Chunk(first)
			q.chunks[0] = nil
			q.chunks = q.chunks[1:]
			q.off = 0
		}
	}
	q.n -= n
	if len(q.chunks) == 0 {
		q.chunks = q.chunks[:0:0] // the slice's array goes with its last chunk
	}
	return n
}

func (q *h2Queue) release() {
	for _, b := range q.chunks {
		putH2Chunk(b)
	}
	q.chunks, q.off, q.n = nil, 0, 0
}

// lowerKey is a request field's name as HTTP/2 writes it.
func lowerKey(k string) string {
	if s, ok := h2LowerKeys[k]; ok {
		return s
	}
	return strings.ToLower(k)
}

// canonicalH2Key is a response field's name as net/http keys it.
func canonicalH2Key(name string) string {
	if s, ok := h2CanonicalKeys[name]; ok {
		return s
	}
	return http.CanonicalHeaderKey(name)
}

// h2LowerKeys and h2CanonicalKeys spare the common fields' names an
// allocation each way.
var h2LowerKeys, h2CanonicalKeys = func() (map[string]string, map[string]string) {
	lower, canon := map[string]string{}, map[string]string{}
	for k := range commonResponseKeys {
		lower[k], canon[strings.ToLower(k)] = strings.ToLower(k), k
	}
	for _, k := range []string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Authorization",
		"Cookie", "Grpc-Encoding", "Grpc-Accept-Encoding", "Grpc-Message", "Grpc-Status", "Grpc-Timeout",
		"If-Modified-Since", "If-None-Match", "Origin", "Referer", "Te", "Trailer", "User-Agent",
		"X-Forwarded-For", "X-Forwarded-Proto",
	} {
		lower[k], canon[strings.ToLower(k)] = strings.ToLower(k), k
	}
	return lower, canon
}()

// textprotoTrim trims the spaces and tabs around a list element.
func textprotoTrim(s string) string { return strings.Trim(s, " \t") }
