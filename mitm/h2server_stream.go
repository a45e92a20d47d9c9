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
// connection and its read loop, h2server_response.go the response the
// handler writes, which is the stream itself): its head read into an
// http.Request, its body, its handler.

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
		if n := len(c.spare); n > 0 {
			c.spare[n-1] <- st // buffered: never waits
			c.spare = c.spare[:n-1]
		} else {
			go c.runHandlers(st)
		}
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
		if hasToken(headerGet(h, "Expect"), "100-continue") {
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
// With none queued it waits as a spare for the connection's next stream
// (onHeaders hands it over), until the connection parks or ends; a
// connection that never parks keeps none (an idle one would keep them).
func (c *h2SrvConn) runHandlers(st *h2SrvStream) {
	growStack(false)
	var next chan *h2SrvStream
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
		if st != nil {
			c.mu.Unlock()
			continue
		}
		c.running--
		if c.closed || c.noPark || c.parked {
			c.mu.Unlock()
			return
		}
		if next == nil {
			next = make(chan *h2SrvStream, 1)
		}
		c.spare = append(c.spare, next)
		c.mu.Unlock()
		st = <-next // nil: released
	}
}

// releaseSpareLocked ends the spare handler goroutines' wait; c.mu held.
func (c *h2SrvConn) releaseSpareLocked() {
	for _, ch := range c.spare {
		ch <- nil
	}
	c.spare = nil
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
