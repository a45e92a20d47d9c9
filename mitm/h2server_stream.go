package mitm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/audit"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// A request's stream on the HTTP/2 server (h2server.go has the
// connection and its read loop): its head read into an http.Request,
// its body, its handler, and the response the handler writes, which is
// the stream itself (an http.ResponseWriter, Flusher and what
// http.ResponseController asks for).

// h2SrvStream is one request. The fields above mu are the handler's
// (the response side); those below are guarded by the connection's mu.
type h2SrvStream struct {
	c      *h2SrvConn
	id     uint32
	req    *http.Request
	ctx    context.Context
	cancel context.CancelFunc
	body   h2SrvBody
	url    url.URL // the request's, in the same allocation

	h           http.Header
	status      int
	wroteHeader bool // WriteHeader ran (or the first Write)
	sentHeader  bool // the head went out
	handlerDone bool
	cl          int64 // the Content-Length the handler declared; -1: none
	written     int64
	pending     []byte  // a short body held until the head goes out
	pendingBox  *[]byte // pending's pooled chunk; nil: none taken
	werr        error   // sticky: the stream or the connection ended
	// needsContinue: the client waits for 100 Continue before its body,
	// sent on the body's first read (by whichever goroutine reads it).
	needsContinue atomic.Bool

	// mu: c.mu
	buf        h2Queue // received, not yet read
	declared   int64   // the request's content-length; -1: none
	got        int64
	ended      bool // the client's END_STREAM came
	sentEnd    bool // ours went out
	done       bool // out of the open streams (both ends ended, or reset)
	err        error
	bodyClosed bool
	recvWindow int64
	unacked    int64
	sendWindow int64
	trailer    http.Header   // the request's trailers, once they came
	rdl, wdl   time.Time     // the handler's read and write deadlines
	ready      chan struct{} // a wake-up for the body's reader (capacity 1); nil: no body
}

// h2SrvBody is a request's body: what the read loop buffered for its
// stream.
type h2SrvBody struct{ st *h2SrvStream }

func (c *h2SrvConn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	if st := c.streams[id]; st != nil {
		c.mu.Unlock()
		return c.onTrailers(st, f)
	}
	if id%2 == 0 || id <= c.lastID {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol) // RFC 9113 5.1.1
	}
	c.lastID = id
	refused := uint32(len(c.streams)) >= c.srv.maxStreams
	if c.goAway {
		c.mu.Unlock()
		return nil // after our GOAWAY: not processed, the client may send it again elsewhere
	}
	c.mu.Unlock()
	switch {
	case refused:
		c.send(func() error { return c.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
		return nil
	case f.Truncated:
		// As x/net's server: a head over the limit (within twice it:
		// beyond, the Framer ended the connection) is answered, with no
		// handler.
		body := !f.StreamEnded()
		return c.send(func() error {
			c.hbuf.Reset()
			_ = c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: "431"})
			if err := c.writeBlock(id, true, c.hbuf.Bytes(), c.maxFrameNow()); err != nil || !body {
				return err
			}
			return c.fr.WriteRSTStream(id, http2.ErrCodeNo) // its body is not wanted
		})
	}
	st, err := c.newStream(f)
	if err != nil {
		c.send(func() error { return c.fr.WriteRSTStream(id, http2.ErrCodeProtocol) })
		if c.srv.log != nil {
			c.srv.log.Debug("malformed HTTP/2 request", audit.KeyClient, c.remote, audit.KeyError, err)
		}
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		st.cancel()
		return nil
	}
	st.sendWindow = c.initWindow
	st.ended = f.StreamEnded() // half-closed (remote) from its head on
	c.streams[id] = st
	if c.idle != nil {
		c.idle.Stop()
	}
	switch {
	case c.running < int(c.srv.maxStreams):
		c.running++
		go c.runHandlers(st)
	case len(c.queue) < h2QueuedPerStream*int(c.srv.maxStreams):
		c.queue = append(c.queue, st) // the client reset streams whose handlers still run
	default:
		return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	return nil
}

// maxFrameNow is the largest frame the client takes.
func (c *h2SrvConn) maxFrameNow() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxFrame
}

// newStream reads a request head into a stream, or says why it is
// malformed (RFC 9113 8.1.1, 8.2.2, 8.3.1).
func (c *h2SrvConn) newStream(f *http2.MetaHeadersFrame) (*h2SrvStream, error) {
	method, path := f.PseudoValue("method"), f.PseudoValue("path")
	scheme, authority := f.PseudoValue("scheme"), f.PseudoValue("authority")
	if f.PseudoValue("protocol") != "" {
		return nil, errors.New(":protocol without extended CONNECT")
	}
	connect := method == http.MethodConnect
	switch {
	case !validMethod(method):
		return nil, errors.New("a :method that is not a token") // an HTTP/1.1 upstream would read it as more
	case connect && (path != "" || scheme != "" || authority == ""):
		return nil, errors.New("CONNECT with :path or :scheme, or without :authority")
	case !connect && (path == "" || path[0] != '/' && path != "*" || scheme != "https" && scheme != "http"):
		return nil, errors.New("a :path not absolute, or a :scheme not http(s)")
	}
	fields := f.RegularFields()
	h := make(http.Header, len(fields))
	vals := make([]string, len(fields)) // each field's first value: one allocation for all
	for i, hf := range fields {
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			return nil, fmt.Errorf("connection-specific field %q", hf.Name)
		case "te":
			if hf.Value != "trailers" {
				return nil, errors.New("te other than trailers")
			}
		}
		key := canonicalH2Key(hf.Name)
		if vs, ok := h[key]; ok {
			h[key] = append(vs, hf.Value)
		} else {
			vals[i] = hf.Value
			h[key] = vals[i : i+1 : i+1]
		}
	}
	if cs := h["Cookie"]; len(cs) > 1 {
		h["Cookie"] = []string{strings.Join(cs, "; ")}
	}
	// As x/net's server (httpcommon.NewServerRequest): one Host field at
	// most, equal to :authority; no userinfo; a valid host.
	if hs := h["Host"]; len(hs) > 1 || len(hs) == 1 && authority != "" && hs[0] != authority {
		return nil, errors.New("a Host field that is not :authority")
	} else if len(hs) == 1 {
		authority = hs[0]
	}
	delete(h, "Host")
	if strings.IndexByte(authority, '@') >= 0 || authority != "" && !httpguts.ValidHostHeader(authority) {
		return nil, errors.New("an invalid :authority")
	}
	var trailer http.Header
	if vs, ok := h["Trailer"]; ok {
		delete(h, "Trailer")
		for _, v := range vs {
			for name := range strings.SplitSeq(v, ",") {
				switch name = http.CanonicalHeaderKey(textproto.TrimString(name)); name {
				case "", "Transfer-Encoding", "Trailer", "Content-Length": // as net/http: ignored
				default:
					if trailer == nil {
						trailer = http.Header{}
					}
					trailer[name] = nil
				}
			}
		}
	}
	bodyOpen := !f.StreamEnded()
	cl := int64(-1)
	if vs, ok := h["Content-Length"]; ok {
		n, err := strconv.ParseUint(vs[0], 10, 63)
		if err != nil || slices.ContainsFunc(vs[1:], func(v string) bool { return v != vs[0] }) {
			return nil, errors.New("invalid content-length")
		}
		h["Content-Length"] = vs[:1]
		cl = int64(n)
	}
	if !bodyOpen {
		if cl > 0 {
			return nil, errors.New("content-length with no body")
		}
		cl = 0
	}
	st := &h2SrvStream{c: c, id: f.StreamID, h: make(http.Header), cl: -1, declared: cl, recvWindow: h2SrvStreamWindow}
	u := &st.url
	requestURI := path
	switch {
	case connect:
		st.url.Host, requestURI = authority, authority
	case plainTarget(path): // as ParseRequestURI would, without its allocation
		p, q, hasQuery := strings.Cut(path, "?")
		st.url.Path, st.url.RawQuery, st.url.ForceQuery = p, q, hasQuery && q == ""
	default:
		var err error
		if u, err = url.ParseRequestURI(path); err != nil {
			return nil, fmt.Errorf("invalid :path: %w", err)
		}
	}
	st.ctx, st.cancel = context.WithCancel(c.baseCtx)
	st.body.st = st
	req := &http.Request{
		Method: method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: h, ContentLength: cl, Host: authority, RemoteAddr: c.remote,
		RequestURI: requestURI, TLS: c.tls, Trailer: trailer, Body: http.NoBody,
	}
	if bodyOpen {
		st.ready = make(chan struct{}, 1)
		req.Body = &st.body
		if hasToken(h.Get("Expect"), "100-continue") {
			st.needsContinue.Store(true) // the field stays: the size stage answers such a body 417
		}
	}
	st.req = req.WithContext(st.ctx)
	return st, nil
}

// onTrailers takes the request's trailers, which end its stream.
func (c *h2SrvConn) onTrailers(st *h2SrvStream, f *http2.MetaHeadersFrame) error {
	if !f.StreamEnded() || len(f.PseudoFields()) > 0 || f.Truncated {
		c.resetStream(st, st.id, http2.ErrCodeProtocol, errors.New("client sent a second head that is not trailers"))
		return nil
	}
	t := http.Header{}
	for _, hf := range f.RegularFields() {
		k := canonicalH2Key(hf.Name)
		if !httpguts.ValidTrailerHeader(k) {
			c.resetStream(st, st.id, http2.ErrCodeProtocol, fmt.Errorf("client sent trailer %q", k))
			return nil
		}
		t[k] = append(t[k], hf.Value)
	}
	c.mu.Lock()
	ended, short := st.ended, st.declared >= 0 && st.got != st.declared
	if !ended && !short {
		st.trailer, st.ended = t, true
		st.wake()
		st.doneLocked()
	}
	c.mu.Unlock()
	switch {
	case ended: // a head on a half-closed (remote) stream
		c.resetStream(st, st.id, http2.ErrCodeStreamClosed, errors.New("client sent a head after its END_STREAM"))
	case short:
		c.resetStream(st, st.id, http2.ErrCodeProtocol, errors.New("client's body does not match its content-length"))
	}
	return nil
}

// runHandlers serves st, then the streams queued while maxStreams
// handlers ran, on the same goroutine. A queued stream the client reset
// before its handler started is dropped unserved, as x/net's server
// drops it (a rapid reset costs no run of the policy, nor a record).
func (c *h2SrvConn) runHandlers(st *h2SrvStream) {
	for st != nil {
		c.serve(st)
		c.mu.Lock()
		st = nil
		for st == nil && len(c.queue) > 0 {
			st = c.queue[0]
			c.queue[0] = nil
			c.queue = c.queue[1:]
			if st.done {
				st.body.closeLocked()
				st = nil
			}
		}
		if st == nil {
			c.running--
		}
		c.mu.Unlock()
	}
}

// serve runs the handler for st and completes its response; a handler
// that panics has its stream reset (the client sees an error, not a
// short answer).
func (c *h2SrvConn) serve(st *h2SrvStream) {
	if c.call(st) {
		st.finish()
	}
	st.cancel()
	st.putPending()
	c.mu.Lock()
	st.body.closeLocked()
	inc := c.takeConnUpdateLocked()
	c.mu.Unlock()
	if inc > 0 {
		c.send(func() error { return c.writeUpdates(0, 0, inc) })
	}
}

func (c *h2SrvConn) call(st *h2SrvStream) (ok bool) {
	defer func() {
		if ok {
			return
		}
		v := recover()
		if v != http.ErrAbortHandler && c.srv.log != nil { //nolint:errorlint // sentinel panic value
			buf := make([]byte, 16<<10)
			buf = buf[:runtime.Stack(buf, false)]
			c.srv.log.Error("panic serving HTTP/2 request", audit.KeyPanic, fmt.Sprint(v), audit.KeyClient, c.remote, audit.KeyStack, string(buf))
		}
		c.mu.Lock()
		over := st.done || st.sentEnd
		c.mu.Unlock()
		if !over {
			c.resetStream(st, st.id, http2.ErrCodeInternal, errors.New("handler aborted"))
		}
	}()
	c.handler.ServeHTTP(st, st.req)
	return true
}

// endLocked ends st early with err (the client or we reset it, the
// connection ended): its body reads and writes fail, its context ends,
// its slot is free and the window of its unread data goes back; c.mu
// held.
func (st *h2SrvStream) endLocked(err error) {
	if st.done {
		return
	}
	st.done = true
	if st.err == nil {
		st.err = err
	}
	st.cancel()
	st.body.releaseLocked()
	st.c.dropLocked(st)
	st.wake()
	st.c.cond.Broadcast()
}

// doneLocked takes st out of the open streams once both ends ended;
// c.mu held.
func (st *h2SrvStream) doneLocked() {
	if st.ended && st.sentEnd && !st.done {
		st.done = true
		st.c.dropLocked(st)
	}
}

func (st *h2SrvStream) wake() {
	select {
	case st.ready <- struct{}{}:
	default:
	}
}

// takeUpdateLocked is the stream window to give back now: all that was
// read once it reaches half the window; c.mu held.
func (st *h2SrvStream) takeUpdateLocked() uint32 {
	if st.ended || st.done {
		return 0
	}
	return h2GiveBack(&st.recvWindow, &st.unacked, h2SrvStreamWindow)
}

// Read returns what the stream buffered, waiting for more until its
// end, its reset or the read deadline; all it reads goes back to the
// windows as it goes. The trailers are in the request's Trailer at
// io.EOF.
func (b *h2SrvBody) Read(p []byte) (int, error) {
	st := b.st
	c := st.c
	if st.needsContinue.Load() && st.needsContinue.Swap(false) {
		st.write100()
	}
	for {
		c.mu.Lock()
		if st.bodyClosed {
			c.mu.Unlock()
			return 0, http.ErrBodyReadAfterClose
		}
		if st.buf.n > 0 {
			n := st.buf.read(p)
			st.unacked += int64(n)
			c.unacked += int64(n)
			sinc, cinc := st.takeUpdateLocked(), c.takeConnUpdateLocked()
			c.mu.Unlock()
			if sinc > 0 || cinc > 0 {
				c.send(func() error { return c.writeUpdates(st.id, sinc, cinc) })
			}
			return n, nil
		}
		if st.done && st.err != nil { // reset: what it held was dropped
			err := st.err
			c.mu.Unlock()
			return 0, err
		}
		if st.ended {
			t := st.trailer
			c.mu.Unlock()
			if st.req.Trailer != nil { // the client announced trailers
				for k, vs := range t {
					st.req.Trailer[k] = vs
				}
			}
			return 0, io.EOF
		}
		rdl := st.rdl
		c.mu.Unlock()
		if rdl.IsZero() {
			<-st.ready
			continue
		}
		wait := time.Until(rdl)
		if wait <= 0 {
			return 0, fmt.Errorf("read request body: %w", os.ErrDeadlineExceeded) // the handler may still answer
		}
		t := time.NewTimer(wait)
		select {
		case <-st.ready:
		case <-t.C:
		}
		t.Stop()
	}
}

// Close drops the rest of the body: what comes later is not kept, and
// its window goes back at once.
func (b *h2SrvBody) Close() error {
	c := b.st.c
	c.mu.Lock()
	b.closeLocked()
	inc := c.takeConnUpdateLocked()
	c.mu.Unlock()
	if inc > 0 {
		c.send(func() error { return c.writeUpdates(0, 0, inc) })
	}
	return nil
}

// closeLocked closes the body: what it holds and what comes later is
// dropped, its window given back; c.mu held.
func (b *h2SrvBody) closeLocked() {
	b.st.bodyClosed = true
	b.releaseLocked()
	b.st.wake() // a Read waiting on another goroutine returns
}

// releaseLocked gives the connection's window the data the body held
// unread, and lets its buffers go; c.mu held.
func (b *h2SrvBody) releaseLocked() {
	st := b.st
	st.c.unacked += int64(st.buf.n)
	st.buf.release()
}

// The response side: the handler's goroutine only.

func (st *h2SrvStream) Header() http.Header { return st.h }

func (st *h2SrvStream) WriteHeader(code int) {
	if st.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code < 200 {
		st.write1xx(code)
		return
	}
	st.wroteHeader, st.status = true, code
	if vs := st.h["Content-Length"]; len(vs) > 0 {
		if n, err := strconv.ParseInt(vs[0], 10, 64); err == nil && n >= 0 {
			st.cl = n
		} else {
			delete(st.h, "Content-Length")
		}
	}
}

// write1xx sends an informational head at once.
func (st *h2SrvStream) write1xx(code int) {
	c := st.c
	c.lockW()
	defer c.unlockW()
	maxFrame, err := st.gone()
	if err != nil {
		st.werr = err
		return
	}
	c.hbuf.Reset()
	_ = c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(code)})
	st.encodeFields(func(k string) bool { return k == "Content-Length" || k == "Transfer-Encoding" })
	if err := c.writeBlock(st.id, false, c.hbuf.Bytes(), maxFrame); err != nil {
		st.werr = err
		c.conn.Close()
	}
}

// sniffLen is how much of a body http.DetectContentType reads.
const sniffLen = 512

// write100 sends 100 Continue unless the final head went out (sentHeader
// is written only in the write turn).
func (st *h2SrvStream) write100() {
	c := st.c
	c.lockW()
	defer c.unlockW()
	if _, err := st.gone(); err != nil || st.sentHeader {
		return
	}
	c.hbuf.Reset()
	_ = c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: "100"})
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: st.id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true}); err != nil {
		c.conn.Close()
	}
}

func (st *h2SrvStream) Write(p []byte) (int, error) {
	if !st.wroteHeader {
		st.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !bodyAllowedForStatus(st.status) {
		return 0, http.ErrBodyNotAllowed
	}
	st.written += int64(len(p))
	if st.cl >= 0 && st.written > st.cl {
		return 0, http.ErrContentLength
	}
	if st.werr != nil {
		return 0, st.werr
	}
	if !st.sentHeader && len(st.pending)+len(p) <= h2ShortResponse {
		if st.pendingBox == nil {
			st.pendingBox = h2Chunk(h2ShortResponse)
			st.pending = *st.pendingBox
		}
		st.pending = append(st.pending, p...)
		return len(p), nil
	}
	if st.req.Method == http.MethodHead {
		// No body: the head goes out when the handler returns, its
		// Content-Type sniffed from the first bytes (as many as
		// http.DetectContentType reads).
		if k := min(len(p), sniffLen-len(st.pending)); k > 0 {
			st.pending = append(st.pending, p[:k]...)
		}
		return len(p), nil
	}
	if err := st.out(p, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush sends the head and the body held so far.
func (st *h2SrvStream) Flush() { _ = st.FlushError() }

func (st *h2SrvStream) FlushError() error {
	if !st.wroteHeader {
		st.WriteHeader(http.StatusOK)
	}
	if st.werr != nil {
		return st.werr
	}
	return st.out(nil, false)
}

// SetReadDeadline bounds the body's reads: one waiting when it passes
// fails with os.ErrDeadlineExceeded, as do later ones, while the handler
// may still answer (as x/net's).
func (st *h2SrvStream) SetReadDeadline(t time.Time) error {
	st.c.mu.Lock()
	st.rdl = t
	st.c.mu.Unlock()
	st.wake() // a read waiting looks at the new deadline
	return nil
}

// SetWriteDeadline bounds the waits for the client's flow-control
// window: one that passes it resets the stream. (A client that stops
// reading the connection is the conn's write deadline's: h2Wire.)
func (st *h2SrvStream) SetWriteDeadline(t time.Time) error {
	c := st.c
	c.mu.Lock()
	earlier := !t.IsZero() && (st.wdl.IsZero() || t.Before(st.wdl))
	st.wdl = t
	if earlier { // a later one is seen when the timer of the earlier fires
		c.cond.Broadcast()
	}
	c.mu.Unlock()
	return nil
}

// EnableFullDuplex: a stream's body and response flow independently
// already.
func (st *h2SrvStream) EnableFullDuplex() error { return nil }

// finish completes the response after the handler returned: the head
// (with a Content-Length when the handler declared none and its whole
// body is held), the body held, the trailers or END_STREAM. A client
// that grants no window meanwhile gets IdleTimeout unless the handler
// set a write deadline.
func (st *h2SrvStream) finish() {
	st.handlerDone = true
	if !st.wroteHeader {
		st.WriteHeader(http.StatusOK)
	}
	if st.werr != nil {
		return
	}
	c := st.c
	c.mu.Lock()
	if st.wdl.IsZero() && c.srv.idleTimeout > 0 {
		st.wdl = time.Now().Add(c.srv.idleTimeout)
	}
	c.mu.Unlock()
	_ = st.out(nil, true)
}

func (st *h2SrvStream) putPending() {
	if st.pendingBox != nil {
		*st.pendingBox = st.pending
		putH2Chunk(st.pendingBox)
		st.pendingBox, st.pending = nil, nil
	}
}

// gone is why nothing more may go out on st (nil: it may), and the
// largest frame the client takes. In the write turn.
func (st *h2SrvStream) gone() (maxFrame int, err error) {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxFrame, st.endedLocked()
}

// endedLocked is why nothing more may go out on st; nil: it may. c.mu
// held.
func (st *h2SrvStream) endedLocked() error {
	switch {
	case st.done && st.err != nil:
		return st.err
	case st.done || st.sentEnd:
		return errH2StreamDone
	case st.c.closed:
		return errH2ConnClosed
	}
	return nil
}

// out sends the head if it has not gone out, the body held and p as
// DATA within the windows, and with end the trailers or END_STREAM. Each
// write turn takes what the windows allow; the waits for more are out of
// it. A HEAD's body is dropped.
func (st *h2SrvStream) out(p []byte, end bool) error {
	held := st.pending
	// What the head precedes, whatever the window lets go with it: its
	// Content-Type is sniffed from it.
	sniff := held
	if len(sniff) == 0 {
		sniff = p
	}
	if st.req.Method == http.MethodHead {
		held, p = nil, nil // the head's Content-Length and Content-Type still come from pending
	}
	if st.sentHeader && len(held)+len(p) == 0 && !end {
		return nil // a Flush with nothing to send
	}
	for first := true; ; first = false {
		n := len(held) + len(p)
		k := 0
		if n > 0 {
			var err error
			if k, err = st.window(n, first && !st.sentHeader); err != nil {
				st.werr = err
				return err
			}
		}
		take := min(k, len(held))
		a, b := held[:take], p[:k-take]
		held, p = held[take:], p[k-take:]
		last := end && len(held)+len(p) == 0
		if err := st.turn(a, b, sniff, last, n > 0 && k == 0); err != nil {
			st.unspend(k)
			st.werr = err
			return err
		}
		if len(held)+len(p) == 0 {
			st.pending = st.pending[:0]
			return nil
		}
	}
}

// turn is one write turn of out: the head when it has not gone out (its
// Content-Type sniffed from sniff), the DATA a then b (taken from the
// windows already), and with last the end of the stream. more says a
// body follows a head that goes out now with no DATA.
func (st *h2SrvStream) turn(a, b, sniff []byte, last, more bool) error {
	c := st.c
	c.lockW()
	defer c.unlockW()
	maxFrame, err := st.gone()
	if err != nil {
		return err
	}
	var trailers bool
	if last {
		trailers = st.hasTrailers()
	}
	closeConn := false
	if !st.sentHeader {
		st.sentHeader = true
		var block []byte
		block, closeConn = st.encodeHead(sniff)
		endHead := last && len(a)+len(b) == 0 && !trailers && !more || st.req.Method == http.MethodHead && last
		if err := c.writeBlock(st.id, endHead, block, maxFrame); err != nil {
			return st.writeFailed(err)
		}
		if endHead {
			return st.afterEnd(closeConn)
		}
	}
	for i, d := range [2][]byte{a, b} {
		final := i == 1 || len(b) == 0 // the last slice with bytes
		for len(d) > 0 {
			k := min(len(d), maxFrame)
			end := last && !trailers && final && k == len(d)
			if err := c.fr.WriteData(st.id, end, d[:k]); err != nil {
				return st.writeFailed(err)
			}
			d = d[k:]
			if end {
				return st.afterEnd(closeConn)
			}
		}
	}
	if !last {
		return nil
	}
	if trailers {
		c.hbuf.Reset()
		st.encodeTrailers()
		if err := c.writeBlock(st.id, true, c.hbuf.Bytes(), maxFrame); err != nil {
			return st.writeFailed(err)
		}
	} else if err := c.fr.WriteData(st.id, true, nil); err != nil {
		return st.writeFailed(err)
	}
	return st.afterEnd(closeConn)
}

func (st *h2SrvStream) writeFailed(err error) error {
	st.c.conn.Close() // the read loop ends, and the streams with it
	return fmt.Errorf("write to client: %w", err)
}

// afterEnd notes that END_STREAM went out, in the write turn: the
// stream is over when the client's came too; else the client is told to
// send no more of a body nobody will read (RST_STREAM NO_ERROR), as
// x/net's server tells it. A head with Connection: close makes the
// connection shut down (GOAWAY), as net/http's HTTP/1.1 closes.
func (st *h2SrvStream) afterEnd(closeConn bool) error {
	c := st.c
	c.mu.Lock()
	st.sentEnd = true
	rst := !st.ended && !st.done
	if rst {
		st.endLocked(errH2StreamDone)
	} else {
		st.doneLocked()
	}
	c.mu.Unlock()
	if closeConn {
		go c.shutdown(false)
	}
	if rst {
		if err := c.fr.WriteRSTStream(st.id, http2.ErrCodeNo); err != nil {
			return st.writeFailed(err)
		}
	}
	return nil
}

// window waits until the stream may send and takes what it may of n
// bytes from both windows; with now it does not wait (0: none now).
// A wait past the write deadline (without one: IdleTimeout from the
// wait's start) resets the stream: a client that grants no window does
// not hold a handler and its connection.
func (st *h2SrvStream) window(n int, now bool) (int, error) {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var idleBound, armed time.Time // the bound without a deadline; the timer's
	for {
		if err := st.endedLocked(); err != nil {
			return 0, err
		}
		if w := min(st.sendWindow, c.sendWindow, int64(c.maxFrame)*4); w > 0 {
			k := int(min(int64(n), w))
			st.sendWindow -= int64(k)
			c.sendWindow -= int64(k)
			return k, nil
		}
		if now {
			return 0, nil
		}
		dl := st.wdl
		if dl.IsZero() && c.srv.idleTimeout > 0 {
			if idleBound.IsZero() {
				idleBound = time.Now().Add(c.srv.idleTimeout)
			}
			dl = idleBound
		}
		if !dl.IsZero() {
			wait := time.Until(dl)
			if wait <= 0 {
				st.endLocked(os.ErrDeadlineExceeded)
				id := st.id
				c.mu.Unlock()
				_ = c.send(func() error { return c.fr.WriteRSTStream(id, http2.ErrCodeInternal) })
				c.mu.Lock()
				return 0, os.ErrDeadlineExceeded
			}
			if !dl.Equal(armed) { // a deadline moved earlier wakes the waits (SetWriteDeadline)
				if timer != nil {
					timer.Stop()
				}
				timer, armed = time.AfterFunc(wait, func() {
					c.mu.Lock()
					c.cond.Broadcast()
					c.mu.Unlock()
				}), dl
			}
		}
		c.cond.Wait()
	}
}

// unspend gives back the connection's window taken for k bytes that did
// not go out.
func (st *h2SrvStream) unspend(k int) {
	c := st.c
	c.mu.Lock()
	if !c.closed && k > 0 {
		c.sendWindow += int64(k)
		c.cond.Broadcast()
	}
	c.mu.Unlock()
}

// hasTrailers reports whether the handler set any trailer: under a name
// the Trailer field announced, or under http.TrailerPrefix.
func (st *h2SrvStream) hasTrailers() bool {
	for k, vs := range st.h {
		if len(vs) > 0 && strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	found := false
	st.eachAnnounced(func(name string) {
		if len(st.h[name]) > 0 {
			found = true
		}
	})
	return found
}

// eachAnnounced calls f with each trailer name the Trailer field
// announced.
func (st *h2SrvStream) eachAnnounced(f func(name string)) {
	for _, v := range st.h["Trailer"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = http.CanonicalHeaderKey(textproto.TrimString(name)); name != "" && httpguts.ValidTrailerHeader(name) {
				f(name)
			}
		}
	}
}

// encodeHead is the response head as an HPACK block (in c.hbuf) and
// whether it asks for the connection's close, as x/net's server writes
// it: the handler's fields but the connection-specific ones and the
// trailers', a Content-Length the handler declared (or, when it returned
// with its whole body held, that body's), a sniffed Content-Type when
// it set none, a Date. In the write turn.
func (st *h2SrvStream) encodeHead(sniff []byte) ([]byte, bool) {
	c, h := st.c, st.h
	c.hbuf.Reset()
	_ = c.henc.WriteField(hpack.HeaderField{Name: ":status", Value: h2Status(st.status)})
	allowed := bodyAllowedForStatus(st.status)
	isHead := st.req.Method == http.MethodHead
	cl := st.cl
	if cl < 0 && st.handlerDone && allowed && st.written == int64(len(st.pending)) && (st.written > 0 || !isHead) {
		cl = st.written // the whole body is held
	}
	var announced []string
	st.eachAnnounced(func(name string) { announced = append(announced, name) })
	closeConn := false
	st.encodeFields(func(k string) bool {
		switch k {
		case "Content-Length":
			return true
		case "Connection":
			closeConn = closeConn || hasToken(h.Get("Connection"), "close")
			return true
		}
		return slices.Contains(announced, k)
	})
	if cl >= 0 && (allowed || st.status == http.StatusNotModified) { // a 304's is the representation's
		_ = c.henc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(cl, 10)})
	}
	if allowed && len(sniff) > 0 && len(h["Content-Type"]) == 0 && h.Get("Content-Encoding") == "" {
		if _, set := h["Content-Type"]; !set {
			_ = c.henc.WriteField(hpack.HeaderField{Name: "content-type", Value: http.DetectContentType(sniff)})
		}
	}
	if _, set := h["Date"]; !set {
		_ = c.henc.WriteField(hpack.HeaderField{Name: "date", Value: c.dateField()})
	}
	return c.hbuf.Bytes(), closeConn
}

// encodeFields encodes the handler's fields into c.hbuf but those skip
// names, the connection-specific ones, those under http.TrailerPrefix,
// invalid names and invalid values (dropped, as x/net's server drops
// them). In the write turn.
func (st *h2SrvStream) encodeFields(skip func(k string) bool) {
	c := st.c
	for k, vs := range st.h {
		if skip(k) {
			continue
		}
		switch k {
		case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade":
			continue
		}
		if strings.HasPrefix(k, http.TrailerPrefix) || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		name := lowerKey(k)
		for _, v := range vs {
			if httpguts.ValidHeaderFieldValue(v) {
				_ = c.henc.WriteField(hpack.HeaderField{Name: name, Value: v})
			}
		}
	}
}

// encodeTrailers encodes the trailers the handler set into c.hbuf: the
// announced names' values and the fields under http.TrailerPrefix. In
// the write turn.
func (st *h2SrvStream) encodeTrailers() {
	c := st.c
	put := func(name string, vs []string) {
		if !httpguts.ValidHeaderFieldName(name) {
			return
		}
		name = lowerKey(name)
		for _, v := range vs {
			if httpguts.ValidHeaderFieldValue(v) {
				_ = c.henc.WriteField(hpack.HeaderField{Name: name, Value: v})
			}
		}
	}
	st.eachAnnounced(func(name string) { put(name, st.h[name]) })
	for k, vs := range st.h {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			put(name, vs)
		}
	}
}

// h2Status is code as :status, without an allocation for the common ones.
func h2Status(code int) string {
	switch code {
	case 200:
		return "200"
	case 204:
		return "204"
	case 206:
		return "206"
	case 301:
		return "301"
	case 302:
		return "302"
	case 304:
		return "304"
	case 400:
		return "400"
	case 401:
		return "401"
	case 403:
		return "403"
	case 404:
		return "404"
	case 429:
		return "429"
	case 500:
		return "500"
	case 502:
		return "502"
	case 503:
		return "503"
	}
	return strconv.Itoa(code)
}
