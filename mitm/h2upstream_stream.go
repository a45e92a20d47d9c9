package mitm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// A request's stream on the HTTP/2 upstream client (h2upstream.go has
// the transport and its connections, h2upstream_read.go the read loop):
// its head, its body going out, its end, and the response body coming
// back.

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
	headBy time.Time     // when the response head is due (zero: no bound); set under c.mu
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
	ready      chan struct{} // a wake-up for the body's reader (capacity 1), made when it first waits
	stopAfter  func() bool   // unregisters the reset at the request's end; nil: none
	closeOnce  sync.Once
}

// roundTrip opens a stream for req on c (a reservation the caller holds),
// writes its head and waits for the response head, until headBy when it
// is not zero (with a body, sendBody sets the bound at its end).
func (c *h2UpConn) roundTrip(req *http.Request, hasBody bool, headBy time.Time) (*http.Response, error) {
	ctx := req.Context()
	s := &h2UpStream{c: c, req: req, ctx: ctx, cancel: req.Cancel, isHead: req.Method == http.MethodHead,
		head: make(chan struct{}), declared: -1,
		recvWindow: h2StreamWindow, sentEnd: !hasBody}
	if hasBody {
		s.body = req.Body
	}
	if err := c.lockWFor(ctx, s.cancel, headBy); err != nil {
		return nil, c.giveUp(s, err)
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
		return nil, c.giveUp(s, err)
	}
	c.mu.Lock()
	c.reserved--
	s.id = c.nextID
	c.nextID += 2
	c.served = true
	s.sendWindow = c.initWindow
	c.streams[s.id] = s
	if !headBy.IsZero() {
		s.headBy = headBy
		c.watchHeadLocked(headBy)
	}
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
	if !s.sentEnd || s.resp.Body == http.NoBody && !s.ended {
		// A request body still going out, or an answer with no body to
		// close (HEAD) whose stream has not ended: nothing the caller
		// does ends the stream, so the request's end does (the handler
		// returned, or the client left). The registration goes when the
		// stream does (dropLocked).
		s.stopAfter = context.AfterFunc(ctx, func() { s.abort(context.Cause(ctx)) })
	}
	c.mu.Unlock()
	return s.resp, nil
}

// giveUp returns the reservation of a request that opened no stream,
// closes its body and returns err.
func (c *h2UpConn) giveUp(s *h2UpStream, err error) error {
	c.mu.Lock()
	c.unreserveLocked()
	c.mu.Unlock()
	s.closeBody()
	return err
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
			if check && !httpguts.ValidHeaderFieldName(k) {
				return fmt.Errorf("invalid request trailer name %q for upstream HTTP/2", k)
			}
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

// sendBody sends the request body as DATA within the send windows, then
// its trailers or an empty END_STREAM; it closes the body. On its own
// goroutine: the response may stream meanwhile. It stops when the stream
// is reset, which the request's end does (roundTrip).
func (s *h2UpStream) sendBody() {
	c := s.c
	defer s.closeBody()
	bufp := copyBufs.Get().(*[]byte) // a read of it goes out in frames of maxFrame
	defer copyBufs.Put(bufp)
	buf := *bufp
	endSent := false
	var read int64
	for {
		// Read to io.EOF even after a declared length: a body's end arms
		// the response header timer of forward's other paths
		// (countingBody).
		n, rerr := s.body.Read(buf)
		if rerr != nil && rerr != io.EOF {
			s.abort(fmt.Errorf("read request body: %w", rerr))
			return
		}
		last := rerr == io.EOF
		read += int64(n)
		if last || s.req.ContentLength > 0 && read >= s.req.ContentLength {
			// The response head is due from the body's end as the proxy
			// read it, not as it went out: an upstream that gives no
			// window for it must not hold the request without a bound.
			s.headDueFromNow()
		}
		for data := buf[:n]; len(data) > 0; {
			k, ok := s.awaitWindow(len(data))
			if !ok {
				return
			}
			end := last && k == len(data) && len(s.req.Trailer) == 0
			if !s.write(func() error { return c.fr.WriteData(s.id, end, data[:k]) }) {
				s.unspend(k)
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
		for _, vs := range s.req.Trailer {
			for _, v := range vs {
				if !httpguts.ValidHeaderFieldValue(v) {
					s.abort(errors.New("invalid request trailer value for upstream HTTP/2"))
					return
				}
			}
		}
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

// headDueFromNow bounds the wait for the response head to the header
// timeout from now, unless it is bounded already or has come.
func (s *h2UpStream) headDueFromNow() {
	c := s.c
	c.mu.Lock()
	if d := c.t.headerTimeout; d > 0 && !s.headDone && s.headBy.IsZero() {
		s.headBy = time.Now().Add(d)
		c.watchHeadLocked(s.headBy)
	}
	c.mu.Unlock()
}

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

// unspend gives back the connection's send window awaitWindow took for
// k bytes that were not sent (the stream was reset meanwhile).
func (s *h2UpStream) unspend(k int) {
	c := s.c
	c.mu.Lock()
	if !c.closed {
		c.sendWindow += int64(k)
		c.cond.Broadcast()
	}
	c.mu.Unlock()
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
	s.c.mu.Lock()
	after := s.abortLocked(err)
	s.c.mu.Unlock()
	after()
}

// abortLocked is abort's part under c.mu; it returns the rest, to run
// once c.mu is let go.
func (s *h2UpStream) abortLocked(err error) (after func()) {
	c := s.c
	send := !s.reset && !c.closed && c.streams[s.id] == s
	s.failLocked(err)
	s.releaseBufLocked()
	var inc uint32
	if !send { // over already: only the window of what it held goes back
		inc = c.takeConnUpdateLocked()
	}
	return func() {
		switch {
		case send:
			c.sendSoon(func() error { return c.writeReset(s, s.id, http2.ErrCodeCancel) })
		case inc > 0:
			c.sendSoon(func() error { return c.writeUpdates(0, 0, inc) })
		}
		s.closeBody()
	}
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

// releaseBufLocked gives the connection's window the data s holds
// unread and lets its buffers go; c.mu held.
func (s *h2UpStream) releaseBufLocked() {
	s.c.unacked += int64(s.buf.n)
	s.buf.release()
}

// doneLocked takes s out of the connection once both sides ended; c.mu
// held. A stream that was reset leaves it where it was reset (a reset of
// ours: once its RST_STREAM is written, writeReset).
func (s *h2UpStream) doneLocked() {
	if s.ended && s.sentEnd && !s.reset {
		s.c.dropLocked(s)
	}
}

// wake wakes the body's reader if it waits; c.mu held.
func (s *h2UpStream) wake() {
	select {
	case s.ready <- struct{}{}: // a nil ready: no reader waited yet
	default:
	}
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
			if over != nil {
				c.mu.Unlock()
				s.abort(over) // which gives the connection's window back
				return n, over
			}
			var sinc uint32
			if !s.ended && !s.reset {
				sinc = h2GiveBack(&s.recvWindow, &s.unacked, h2StreamWindow)
			}
			cinc := c.takeConnUpdateLocked()
			c.mu.Unlock()
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
		if s.ready == nil {
			s.ready = make(chan struct{}, 1)
		}
		ready := s.ready
		c.mu.Unlock()
		select {
		case <-ready:
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

// canonicalH2Key is a response field's name (lower-case, a token: the
// Framer checked it) as net/http keys it: the HTTP/1.1 head's
// canonicalKey, a common field's name without an allocation.
func canonicalH2Key(name string) string {
	var buf [64]byte
	if len(name) > len(buf) {
		return http.CanonicalHeaderKey(name)
	}
	return canonicalKey(buf[:len(name)], name)
}

// h2LowerKeys spares the common fields' names an allocation: the
// response fields HTTP/1.1 interns, and the common request fields.
var h2LowerKeys = func() map[string]string {
	lower := map[string]string{}
	for k := range commonResponseKeys {
		lower[k] = strings.ToLower(k)
	}
	for _, k := range []string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Authorization",
		"Cookie", "Grpc-Accept-Encoding", "Grpc-Timeout",
		"If-Modified-Since", "If-None-Match", "Origin", "Referer", "Te", "User-Agent",
		"X-Forwarded-For", "X-Forwarded-Proto",
	} {
		lower[k] = strings.ToLower(k)
	}
	return lower
}()
