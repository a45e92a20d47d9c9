package mitm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/audit"
)

// A response body is copied through a pooled buffer: a small one first,
// and a large one once the body has passed bulkAfter bytes, so a long
// download costs fewer reads and writes, while the many short or slow
// bodies hold only a small one.
var (
	copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
	bulkBufs = sync.Pool{New: func() any { b := make([]byte, bulkBuf); return &b }}
)

const (
	bulkAfter = 1 << 20
	bulkBuf   = 64 << 10
)

// h2RecordData is the most payload an HTTP/2 DATA frame can carry and
// still fit, with its 9-byte frame header, in one TLS record of 16 KiB:
// a full 16 KiB frame takes a second record (and a second write system
// call) for its last 9 bytes.
const h2RecordData = 16<<10 - 9

// responseCopy copies a response body to the client.
type responseCopy struct {
	w     http.ResponseWriter
	rc    *http.ResponseController // set when idle or flush is
	h2    bool                     // the client speaks HTTP/2: writes of at most h2RecordData
	flush bool                     // every piece goes out as soon as it is read
	// idle, when set, bounds every write: a client that stops reading
	// is dropped after idle.
	idle time.Duration
	// until is the write deadline last set (pushDeadline): a long
	// download does not set one per write.
	until time.Time
	// body, when set, is a request body still being read (full
	// duplex: gRPC, a watch): each push of the write deadline pushes
	// its read deadline too, so a client that only listens is not cut
	// while the answer flows (IdleTimeout is no traffic either way).
	body *countingBody
}

// deadlineSlack is how much later than idle after its last write a
// stalled client may be dropped.
const deadlineSlack = 10 * time.Millisecond

// pushDeadline returns the deadline to set for an I/O starting now when
// until is the one set last (zero: none), bound to idle: until itself
// while it is at least idle away, else idle plus deadlineSlack from now
// (push: it must be set). A transfer in many pieces sets one every
// deadlineSlack at most, not one per piece.
func pushDeadline(until time.Time, idle time.Duration) (t time.Time, push bool) {
	now := time.Now()
	if until.Sub(now) >= idle {
		return until, false
	}
	return now.Add(idle + deadlineSlack), true
}

// copy copies body to the client until either side fails or body ends
// (readErr io.EOF); written counts what the client's writer accepted.
func (bc *responseCopy) copy(body io.Reader) (written int64, readErr, writeErr error) {
	bp, pool := copyBufs.Get().(*[]byte), &copyBufs
	// Both servers have copied what they accepted when a Write returns,
	// failed or not: the buffer goes back whichever way the copy ends.
	defer func() { pool.Put(bp) }()
	buf := bc.trim(*bp)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			m, werr := bc.write(buf[:n])
			written += int64(m)
			if werr != nil {
				return written, nil, werr
			}
		}
		if err != nil {
			return written, err, nil
		}
		if pool == &copyBufs && written >= bulkAfter {
			copyBufs.Put(bp)
			bp, pool = bulkBufs.Get().(*[]byte), &bulkBufs
			buf = bc.trim(*bp)
		}
	}
}

// trim is buf cut, for an HTTP/2 client, to whole frames of
// h2RecordData: a full read then leaves no short frame behind.
func (bc *responseCopy) trim(buf []byte) []byte {
	if bc.h2 {
		return buf[:len(buf)/h2RecordData*h2RecordData]
	}
	return buf
}

// write writes p to the client in pieces: of h2RecordData over HTTP/2,
// else of at most 32 KiB, each with its write deadline.
func (bc *responseCopy) write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := min(len(p), 32<<10)
		if bc.h2 {
			k = min(k, h2RecordData)
		}
		if bc.idle > 0 {
			var push bool
			if bc.until, push = pushDeadline(bc.until, bc.idle); push {
				_ = bc.rc.SetWriteDeadline(bc.until)
				if bc.body != nil {
					bc.body.extend(bc.until)
				}
			}
		}
		m, err := bc.w.Write(p[:k])
		written += m
		if err == nil && bc.flush {
			// A deadline left armed while the handler waits for the
			// upstream's next event does not cut a quiet stream: over
			// HTTP/1.1 it bounds writes only, over HTTP/2 waits for the
			// client's window only (h2SrvStream.window), and it is
			// pushed out before the next write.
			err = bc.rc.Flush()
		}
		if err != nil {
			return written, err
		}
		p = p[k:]
	}
	return written, nil
}

var errResponseHeaderTimeout = errors.New("upstream response header timeout")

// countingBody counts the request body as the client sends it. The
// transport may still read it after RoundTrip returns, hence atomics.
type countingBody struct {
	r        io.ReadCloser
	n        atomic.Int64
	onEOF    func() // called when the body has been read to its end
	declared int64  // Content-Length, -1 when unknown
	// Before a read the client's read deadline is pushed out
	// (pushDeadline, through rc, the handler's): a client that stalls
	// mid-body is dropped after IdleTimeout instead of holding its slot
	// and an upstream connection, and a body read in many pieces does
	// not set one per read (each is a syscall over HTTP/1.1, a lock over
	// HTTP/2). Held here rather than in a closure: one allocation for
	// all three.
	rc    http.ResponseController
	idle  time.Duration
	until time.Time // the read deadline last set
	// ended: read to its end, or failed (failed: not at its end).
	ended, failed atomic.Bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	var push bool
	if b.until, push = pushDeadline(b.until, b.idle); push {
		_ = b.rc.SetReadDeadline(b.until)
	}
	n, err := b.r.Read(p)
	total := b.n.Add(int64(n))
	atEnd := err == io.EOF || (b.declared > 0 && total >= b.declared)
	if atEnd && b.onEOF != nil {
		b.onEOF()
	}
	if atEnd || err != nil {
		b.failed.Store(!atEnd)
		b.ended.Store(true)
	}
	return n, err
}

// extend pushes the client's read deadline to t while the body is still
// being read, from the goroutine that writes the answer.
func (b *countingBody) extend(t time.Time) {
	if !b.ended.Load() {
		_ = b.rc.SetReadDeadline(t)
	}
}

func (b *countingBody) Close() error { return b.r.Close() }

// forward sends the request the chain left upstream and streams the
// answer back through the response stages.
func (x *Exchange) forward() {
	f, r, w, rec, t := x.f, x.Req, x.w, x.Record, x.t
	p := f.p
	// A body is forwarded unless there is none: an HTTP/2 request without
	// one comes with a non-nil Body of length 0, which must not wait for
	// an end that the upstream request never reads.
	var body io.ReadCloser
	var rc *http.ResponseController // made when needed: most requests don't
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		x.body = &countingBody{r: r.Body, declared: r.ContentLength,
			rc: *http.NewResponseController(w), idle: p.cfg.IdleTimeout.D()}
		rc = &x.body.rc
		if r.ProtoMajor == 1 {
			// The upstream may answer while the body is still coming.
			_ = rc.EnableFullDuplex()
		}
		body = x.body
		for _, wrap := range x.wraps {
			body = wrap(body)
		}
	}
	host := r.Host
	if f.explicit() && f.fixed == nil {
		host = r.URL.Host
	}
	ht := &x.ht
	ht.d = p.cfg.ResponseHeaderTimeout.D()

	// The request goes out on this goroutine when the pool and the
	// request allow it (h1upstream.go); else through the pool's Transport
	// as out, with its own context for the response header timer.
	ctx := r.Context()
	var out *http.Request
	switch up := t.pool; {
	case up.h1 != nil && h1Syncable(r, body):
		if host == "" { // an HTTP/1.0 request without Host: the Transport's choice
			host = t.urlHost()
		}
		x.h1req = h1Request{r: r, host: host, body: body}
		if body != nil {
			x.h1req.n = r.ContentLength
		}
	case up.h1 == nil:
		// An HTTP/2 pool: its client (h2upstream.go) watches the
		// request's Cancel channel next to its context, which is then
		// the client's own (a context derived per request costs a
		// registration with, and later removal from, its parent).
		out = x.transportRequest(ctx, host, body)
		x.stop.ch = make(chan struct{})
		//lint:ignore SA1019 the pool's HTTP/2 client honours it; it costs no context per request
		out.Cancel = x.stop.ch
	default:
		ctx, x.stopCtx = context.WithCancelCause(ctx)
		defer x.stopCtx(nil)
		out = x.transportRequest(ctx, host, body)
	}
	if out != nil {
		// ResponseHeaderTimeout counts from the end of the request body,
		// as net/http's Transport does, so a long upload is not cut short.
		// An HTTP/2 pool's client keeps it itself (send).
		ht.fire = x.headerTimedOut
		if x.body != nil && t.pool.h2 == nil {
			x.body.onEOF = ht.arm
		}
	}
	upStart := time.Now()
	resp, err := x.send(out)
	for x.bal != nil {
		ok := err == nil && resp.StatusCode < http.StatusInternalServerError
		x.bal.done(ok)
		// A retry is for a failed connect or a 5xx (policy/README.md):
		// the response header timeout bounds the request, not each try,
		// so a try it ended is not followed by another.
		timedOut := errors.Is(err, errResponseHeaderTimeout)
		if ok || timedOut || !x.bal.retry(r, body != nil) || !x.retryOn() {
			break
		}
		if resp != nil {
			resp.Body.Close()
		}
		t = x.t
		if out != nil {
			out.URL.Host = t.urlHost()
			*ht = headerTimer{d: ht.d, fire: ht.fire}
		}
		resp, err = x.send(out)
	}
	if x.bal != nil && t.addr.IsValid() {
		rec.DstIP, rec.UpstreamAddr = t.addr.Addr(), t.addrString(t.addr) // the target that answered
	}
	rec.UpstreamDuration = time.Since(upStart)
	if err != nil {
		x.roundTripFailed(ctx, err)
		return
	}
	defer resp.Body.Close()
	rec.Status, rec.Source = resp.StatusCode, audit.SourceUpstream
	if resp.StatusCode == http.StatusSwitchingProtocols {
		x.upgrade(resp)
		return
	}
	// Every stage's Request ran (none answered), so every response
	// stage sees the response, in chain order.
	for _, s := range p.stages {
		rs, ok := s.(ResponseStage)
		if !ok {
			continue
		}
		if a := rs.Response(x, resp); a != nil {
			x.answer(a)
			return
		}
	}
	x.respond(resp, rc)
}

// cancelOut cancels the request forward sent through a pool's Transport
// with cause: through x.stop on an HTTP/2 pool, else through its
// context. A request sent on this goroutine (x.h1req) has nothing to
// cancel: closing its body closes its connection. A method, not a func
// value kept per request: each of those was an allocation.
func (x *Exchange) cancelOut(cause error) {
	switch {
	case x.stop.ch != nil:
		x.stop.cancel(cause)
	case x.stopCtx != nil:
		x.stopCtx(cause)
	}
}

// headerTimedOut is the response header timer's: the request is
// cancelled with errResponseHeaderTimeout.
func (x *Exchange) headerTimedOut() { x.cancelOut(errResponseHeaderTimeout) }

// transportRequest is the request for the pool's Transport, held in x:
// the client's, with the Host it names, its header without the
// hop-by-hop fields (a WebSocket upgrade kept; a copy when there is
// anything to change, else the client's own), and body.
func (x *Exchange) transportRequest(ctx context.Context, host string, body io.ReadCloser) *http.Request {
	r, t := x.Req, x.t
	out := &x.out
	if ctx == r.Context() {
		*out = *r // shallow, as WithContext's copy is, without its allocation
	} else {
		*out = *r.WithContext(ctx)
	}
	x.outURL = *r.URL
	out.URL = &x.outURL
	out.RequestURI = ""
	out.URL.Scheme = "http"
	if t.useTLS {
		out.URL.Scheme = "https"
	}
	out.URL.Host = t.urlHost()
	out.Host = host
	out.Close = false
	out.Body = body
	out.Trailer = r.Trailer
	if !needsHopEdit(r.Header) {
		return out // nothing below would change the header: the Transport only reads it
	}
	out.Header = r.Header.Clone()
	upgrade := removeHopHeaders(out.Header, true)
	if upgrade != "" {
		out.Header.Set("Connection", "Upgrade")
		out.Header.Set("Upgrade", upgrade)
	}
	out.Header.Del("Expect")
	out.Header.Del("Trailer")
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header.Set("User-Agent", "") // no Go default User-Agent
	}
	return out
}

// needsHopEdit reports whether transportRequest would change h: a field
// it removes or rewrites (removeHopHeaders' own, Expect, Trailer), or no
// User-Agent (it adds an empty one).
func needsHopEdit(h http.Header) bool {
	_, ua := h["User-Agent"]
	_, expect := h["Expect"]
	_, trailer := h["Trailer"]
	return !ua || expect || trailer || hasHopField(h)
}

// stopChan cancels one request to an HTTP/2 pool through the request's
// Cancel channel; cancel may be called more than once, the first cause
// counts.
type stopChan struct {
	ch       chan struct{}
	closed   atomic.Bool
	timedOut atomic.Bool // the first cause was errResponseHeaderTimeout
}

func (s *stopChan) cancel(cause error) {
	if s.closed.CompareAndSwap(false, true) {
		s.timedOut.Store(cause == errResponseHeaderTimeout) //nolint:errorlint // our own sentinel, never wrapped here
		close(s.ch)
	}
}

// send sends the request to x.t: out through the pool's Transport, with
// the response header timer (armed here unless the request body's end
// arms it) or, on an HTTP/2 pool, its client's own; without out,
// x.h1req on this goroutine.
func (x *Exchange) send(out *http.Request) (*http.Response, error) {
	up := x.t.pool
	switch {
	case out == nil:
		return up.h1.roundTrip(x.Req.Context(), &x.h1req, x.ht.d)
	case up.h2 != nil:
		return up.h2.RoundTrip(out)
	}
	if x.body == nil || x.body.onEOF == nil {
		x.ht.arm()
	}
	resp, err := up.rt.RoundTrip(out)
	x.ht.stop()
	return resp, err
}

// retryOn points the exchange at another target of its group for a
// retry, reporting whether there is one (dialed, for plain HTTP).
func (x *Exchange) retryOn() bool {
	for {
		if x.retarget(false) != nil {
			return false
		}
		if x.t.useTLS {
			return true
		}
		if err := x.t.ensure(x.f); err == nil {
			return true
		}
		x.bal.done(false)
	}
}

// roundTripFailed answers a request the upstream did not answer.
func (x *Exchange) roundTripFailed(ctx context.Context, err error) {
	t, rec := x.t, x.Record
	if a := x.aborted.Load(); a != nil {
		x.answer(a) // a body stage refused the rest of the body
		return
	}
	host := hostOr(t.host, t.conn.Addrs)
	switch {
	case x.stop.timedOut.Load(), errors.Is(context.Cause(ctx), errResponseHeaderTimeout), errors.Is(err, errResponseHeaderTimeout):
		x.answer(fail(http.StatusGatewayTimeout, audit.ReasonUpstreamTimeout,
			fmt.Sprintf("upstream %s sent no response headers within %s", host, x.f.p.cfg.ResponseHeaderTimeout.D())))
	case x.Req.Context().Err() != nil:
		// The client gave up waiting (a cancelled call or stream): a
		// normal end, as nginx's 499 is.
		rec.Status, rec.Source = statusClientClosed, audit.SourceClient
		rec.End = audit.EndClientClosed
		x.finish()
	default:
		reason, detail := audit.ReasonUpstreamError, fmt.Sprintf("upstream %s: %v", host, err)
		var de *dialError
		var ne net.Error
		switch {
		case errors.As(err, &de):
			reason, detail = de.reason, de.Error()
		case errors.As(err, &ne) && ne.Timeout():
			reason = audit.ReasonUpstreamUnreachable
		}
		x.answer(fail(http.StatusBadGateway, reason, detail))
	}
}

// shortResponse is the size of net/http's response buffer (its
// bufferBeforeChunkingSize): a body up to it is written to the client
// only after the handler returns.
const shortResponse = 2 << 10

// h2ShortResponse is what the HTTP/2 server holds of a response body
// until its head goes out (h2SrvStream.Write): a body up to it is
// written, with its head, after the handler returns, bounded then by
// IdleTimeout (h2SrvStream.window); its writes need no deadline
// (TestH2ShortResponseBuffered).
const h2ShortResponse = 4 << 10

// writesNeedDeadline reports whether respond's writes of a body of
// length n (-1: unknown) may block on the client, so that each needs a
// write deadline: unless the whole body fits the server's buffer.
func writesNeedDeadline(h2 bool, n int64) bool {
	if h2 {
		return n < 0 || n > h2ShortResponse
	}
	return n < 0 || n > shortResponse
}

// statusClientClosed is nginx's "client closed request": the status a
// record carries when the client left before the response started.
const statusClientClosed = 499

// respond streams the upstream's response to the client; rc may be nil
// (made here when a write needs a deadline or a flush).
func (x *Exchange) respond(resp *http.Response, rc *http.ResponseController) {
	r, w, rec := x.Req, x.w, x.Record
	h := w.Header()
	if hasHopField(resp.Header) {
		removeHopHeaders(resp.Header, false)
	}
	grpcStatus(rec, resp.Header) // a trailers-only gRPC answer, as the upstream sent it
	if a, ok := w.(headerAdopter); ok && a.adoptHeader(resp.Header) {
		h = resp.Header // made for this response, used by nothing else after
	} else {
		for k, vs := range resp.Header {
			h[k] = vs
		}
	}
	for k, vs := range x.Decision.Header {
		h[k] = append(h[k], vs...)
	}
	if resp.ContentLength >= 0 && r.Method != http.MethodHead {
		var b [20]byte
		if n := strconv.AppendInt(b[:0], resp.ContentLength, 10); len(h["Content-Length"]) != 1 || h["Content-Length"][0] != string(n) {
			h.Set("Content-Length", string(n))
		}
	}
	// The trailers the upstream announced (net/http moves its Trailer
	// header into resp.Trailer's keys) are announced to the client too.
	var announced []string
	for k := range resp.Trailer {
		announced = append(announced, k)
		h.Add("Trailer", k)
	}
	w.WriteHeader(resp.StatusCode)
	// A body of unknown length may be a stream (SSE, chunked): every
	// piece goes out as soon as the upstream sends it, headers first. A
	// body of known length is written through net/http's small buffer,
	// which goes out as it fills and when the handler returns.
	streaming := resp.ContentLength < 0
	// A client that stops reading is dropped after IdleTimeout. A short
	// body of known length only fills the server's buffer here (it goes
	// out after the handler returns), so its writes need no deadline
	// (over HTTP/2 the server bounds that later write: h2SrvStream.window).
	guard := writesNeedDeadline(r.ProtoMajor == 2, resp.ContentLength)
	if guard {
		if rc == nil {
			rc = http.NewResponseController(w)
		}
		defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	}
	if streaming {
		_ = rc.Flush()
	}
	bc := responseCopy{w: w, rc: rc, h2: r.ProtoMajor == 2, flush: streaming}
	if guard {
		bc.idle = x.f.p.cfg.IdleTimeout.D()
		bc.body = x.body
	}
	written, readErr, writeErr := bc.copy(resp.Body)
	rec.BytesOut = written
	switch cut := asCut(readErr); {
	case cut != nil:
		rec.Decision, rec.Reason, rec.Error = cut.Decision, cut.Reason, cut.Detail
		x.finish()
		x.cancelOut(cut) // the Transport's request; a pooled connection closes with the body
		panic(http.ErrAbortHandler)
	// A client that leaves mid-response (a cancelled stream, or one that
	// closes as soon as it has what it wants) ends the exchange normally.
	// A stream whose upstream ended because the client had left (the
	// upstream saw the cancellation first) ends the same way.
	case writeErr != nil || (readErr != io.EOF || streaming) && r.Context().Err() != nil:
		rec.End = audit.EndClientClosed
		x.finish()
		return
	// The upstream's answer ended because the client's body did (it
	// stalled past IdleTimeout, or was reset): the client's doing.
	case readErr != io.EOF && x.body != nil && x.body.failed.Load():
		rec.End = audit.EndClientClosed
		rec.Error = fmt.Sprintf("request body: %v", readErr)
		x.finish()
		panic(http.ErrAbortHandler)
	case readErr != io.EOF:
		rec.Decision, rec.Reason = audit.DecisionError, audit.ReasonUpstreamError
		rec.Error = fmt.Sprintf("upstream body: %v", readErr)
		x.notePolicy()
		x.finish()
		panic(http.ErrAbortHandler)
	}
	// Announced trailers go out under their names, others with net/http's
	// TrailerPrefix.
	for k, vs := range resp.Trailer {
		if slices.Contains(announced, k) {
			h[k] = vs
		} else {
			h[http.TrailerPrefix+k] = vs
		}
	}
	grpcStatus(rec, resp.Trailer)
	x.finish()
}

// headerAdopter is a ResponseWriter that can take a header map as its
// own while it has none of its own and has written no head
// (h2SrvStream, fastResponse; each checks that itself): respond
// hands it the upstream's instead of copying each field into a new map
// (a map's first insert and the copy were 1.5-2% of the proxy's CPU
// under h2load). It reports false when it can't.
type headerAdopter interface{ adoptHeader(http.Header) bool }

// asCut is the *Cut in err's chain, nil when there is none; the end of a
// body (io.EOF) costs no search.
func asCut(err error) *Cut {
	if err == nil || err == io.EOF {
		return nil
	}
	return findCut(err)
}

// findCut searches err's chain; its own function, so the target that
// escapes to errors.As is allocated only when there is a chain to search.
func findCut(err error) *Cut {
	var cut *Cut
	if !errors.As(err, &cut) {
		return nil
	}
	return cut
}

// grpcStatus copies a gRPC call's status (trailers, or the headers of a
// trailers-only answer) into the record, so a failed call does not look
// like its HTTP 200.
func grpcStatus(rec *audit.Record, h http.Header) {
	if v := headerGet(h, "Grpc-Status"); v != "" {
		rec.GRPCStatus = v
		rec.GRPCMessage = headerGet(h, "Grpc-Message")
	}
}

// headerTimer fires once, d after arm, unless stop came first.
type headerTimer struct {
	d    time.Duration
	fire func()

	mu      sync.Mutex
	t       *time.Timer
	stopped bool
}

func (h *headerTimer) arm() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.stopped && h.t == nil {
		h.t = time.AfterFunc(h.d, h.fire)
	}
}

func (h *headerTimer) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	if h.t != nil {
		h.t.Stop()
	}
}

// urlHost is poolURLHost(t), remembered per target for as long as its
// host, address and port stay the same.
func (t *target) urlHost() string {
	k := urlHostKey{t.host, t.addr, t.port}
	if m := t.urlHostMemo.Load(); m != nil && m.k == k {
		return m.v
	}
	h := poolURLHost(t)
	t.urlHostMemo.Store(&memo[urlHostKey, string]{k, h})
	return h
}

type urlHostKey struct {
	host string
	addr netip.AddrPort
	port uint16
}

func poolURLHost(t *target) string {
	h := t.host
	if h == "" && t.addr.IsValid() {
		h = t.addr.Addr().String()
	}
	if strings.Contains(h, ":") {
		h = "[" + h + "]"
	}
	return h + ":" + strconv.Itoa(int(t.port))
}

// upgrade completes a protocol switch (WebSocket): the 101 goes to the
// client, then bytes are copied both ways until either side closes.
func (x *Exchange) upgrade(resp *http.Response) {
	d := x.Decision
	rec := x.Record
	upConn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		x.answer(fail(http.StatusBadGateway, audit.ReasonUpstreamError, "upstream switched protocols without a bidirectional body"))
		return
	}
	defer upConn.Close()
	if x.Req.ProtoMajor != 1 {
		x.answer(fail(http.StatusBadGateway, audit.ReasonUpstreamError, "protocol switch over HTTP/2 is not supported"))
		return
	}
	clientConn, brw, err := http.NewResponseController(x.w).Hijack()
	if err != nil {
		x.answer(fail(http.StatusInternalServerError, audit.ReasonUpstreamError, "hijack client connection: "+err.Error()))
		return
	}
	defer clientConn.Close()
	_ = clientConn.SetDeadline(time.Time{})
	hdr := resp.Header.Clone()
	for k, vs := range d.Header {
		hdr[k] = append(hdr[k], vs...)
	}
	fmt.Fprintf(brw, "HTTP/1.1 101 %s\r\n", http.StatusText(http.StatusSwitchingProtocols))
	_ = hdr.Write(brw)
	_, _ = brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		rec.Error = "write 101 to client: " + err.Error()
		x.finish()
		return
	}
	var clientSide io.Reader = clientConn
	if n := brw.Reader.Buffered(); n > 0 {
		clientSide = io.MultiReader(io.LimitReader(brw.Reader, int64(n)), clientConn)
	}
	in, out, err := pipe(x.f.ctx, clientSide, clientConn, upConn)
	rec.BytesIn, rec.BytesOut = in, out
	if err != nil {
		rec.Error = err.Error()
	}
	x.finish()
}
