package mitm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The fast loop. A keep-alive HTTP/1.1 client connection is served on a
// loop of Sluice's own (serveFast) as long as its requests are the plain
// kind: HTTP/1.1, a Content-Length body or none, no Transfer-Encoding,
// Expect or protocol upgrade, one valid Host, valid header fields, a head
// within MaxHeaderBytes that http.ReadRequest reads exactly. Per request
// it costs a parse and one write, with none of net/http's per-request
// context, background read goroutine and deadline changes, header clone
// and sort, or the framer's second parse. Anything else, and any error,
// goes to net/http's server, which gets the connection with every byte
// not yet served (as h1Conn.next, through the framer as before): the
// request, malformed or unusual, is answered and recorded exactly as
// without the loop. Requests are served in order, one at a time.
//
// A client that leaves while its request is served is noticed as under
// net/http: a read of the connection fails. That read is not started per
// request but only when the connection's socket reports the peer's close
// (goneSet, edge-triggered EPOLLRDHUP), so a request costs no goroutine
// for it.

// h1FastBuf is the size of the loop's read and write buffers, as
// net/http's: a head that does not fit goes to net/http.
const h1FastBuf = 4 << 10

// maxPostHandlerRead is net/http's maxPostHandlerReadBytes: a request
// body left unread by the handler is read to its end if that many bytes
// or fewer remain, else the connection closes.
const maxPostHandlerRead = 256 << 10

var (
	fastReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, h1FastBuf) }}
	fastWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, h1FastBuf) }}
)

// h1Fast is one run of the loop on a connection, from its handover (or
// its wake from parking) until it is parked, handed to net/http or
// closed.
type h1Fast struct {
	s   *h1Server
	c   *h1Conn
	src fastSource
	br  *bufio.Reader
	bw  *bufio.Writer
	out fastOut
	ctx context.Context
	// tmpl is the Request that each request the loop parses starts as
	// a copy of: it holds ctx (newReqTemplate).
	tmpl *http.Request
	// dl is the connection's read deadline when dlSet: the loop set it
	// last, and no handler or gone-watch read changed it since. The wait
	// for the next request keeps one that ends late enough (waitDeadline).
	dl       time.Time
	dlSet    bool
	lastPost bool // the last request was a POST
	counted  bool // this run took a request (h1Server.fastServed)
	// dlMu guards inHandler and, while a handler runs, dlSet:
	// the handler's ResponseController (SetReadDeadline) may be called
	// from a goroutine of its own, also after the handler returned.
	dlMu      sync.Mutex
	inHandler bool
	w         fastResponse
}

// fastSource is what the loop reads: the bytes h1Conn.next and the
// gone-watch's read hold, then the connection.
type fastSource struct{ c *h1Conn }

func (s fastSource) Read(b []byte) (int, error) {
	c := s.c
	if len(c.next) > 0 {
		n := copy(b, c.next)
		c.next = c.next[n:]
		return n, nil
	}
	g := &c.gw
	g.mu.Lock()
	if len(g.stash) > 0 {
		n := copy(b, g.stash)
		g.stash = g.stash[n:]
		g.mu.Unlock()
		return n, nil
	}
	g.mu.Unlock()
	n, err := c.Conn.Read(b)
	if err != nil {
		c.fastReadFailed(err)
	}
	return n, err
}

// fastReadFailed is net/http's connReader on a failed read of the
// client's connection, by the loop, a request body's reader or the
// gone-watch: unless a deadline ended it, the client left, so the
// request's context ends and the upstream exchange is aborted.
func (c *h1Conn) fastReadFailed(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	g := &c.gw
	g.mu.Lock()
	cancel := g.cancel
	g.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	c.readFailed(err)
}

// fastOut writes to the connection and notes a write that timed out (the
// client stopped reading), as h1Conn.Write does.
type fastOut struct{ c *h1Conn }

func (o fastOut) Write(b []byte) (int, error) {
	n, err := o.c.Conn.Write(b)
	if err != nil && isTimeout(err) {
		o.c.stuck.Store(true)
	}
	return n, err
}

// serve hands hc to the fast loop when its socket can be watched for the
// client's close, else to net/http's server.
func (s *h1Server) serve(hc *h1Conn) {
	hc.srv = s
	if !s.noFast && s.gone != nil && s.gone.add(hc) {
		go s.serveFast(hc)
		return
	}
	s.serveStd(hc)
}

// serveFast is the loop.
func (s *h1Server) serveFast(c *h1Conn) {
	fs := &h1Fast{s: s, c: c, src: fastSource{c}, out: fastOut{c}}
	fs.w.fs = fs
	fs.br = fastReaders.Get().(*bufio.Reader)
	fs.br.Reset(fs.src)
	fs.bw = fastWriters.Get().(*bufio.Writer)
	fs.bw.Reset(fs.out)
	if c.baseCtx == nil {
		f := c.fl
		c.baseCtx = context.WithValue(context.WithValue(f.ctx, http.ServerContextKey, s.srv), flowKey{}, f)
		c.remote = c.RemoteAddr().String()
	}
	ctx, cancel := context.WithCancel(c.baseCtx)
	fs.ctx = ctx
	fs.tmpl = newReqTemplate(ctx)
	c.gw.mu.Lock()
	c.gw.cancel = cancel
	c.gw.mu.Unlock()
	defer cancel()
	first := true
	for {
		switch fs.next(first) {
		case fastServed:
			first = false
			continue
		case fastPark: // nothing buffered either way: the loop flushes when it has no request
			fs.release()
			c.goneRemove()
			fs.drop(cancel)
			c.park()
		case fastHandOff:
			// The answers to the requests before go out first.
			if err := fs.bw.Flush(); err != nil {
				fs.release()
				c.Close()
				return
			}
			c.next = fs.unread()
			fs.release()
			c.goneRemove()
			fs.drop(cancel)
			_ = c.Conn.SetReadDeadline(time.Time{})
			s.serveStd(c)
		case fastClose:
			_ = fs.bw.Flush()
			fs.release()
			c.Close()
		case fastCloseWait:
			// As net/http after a request body it left unread: the
			// answer goes out, then a half-close and a wait, so that
			// the client, still sending, reads the answer before the
			// close (which, with its unread bytes, resets the
			// connection).
			flushed := fs.bw.Flush() == nil
			fs.release() // the wait holds no buffers
			if flushed {
				_ = c.CloseWrite()
				time.Sleep(rstAvoidanceDelay)
			}
			c.Close()
		}
		return
	}
}

const (
	fastServed = iota
	fastPark
	fastHandOff
	fastClose
	fastCloseWait
)

// rstAvoidanceDelay is net/http's: how long a connection closed with a
// request body unread stays half-closed first.
const rstAvoidanceDelay = 500 * time.Millisecond

// drop lets go of what the connection kept of this run, before it is
// parked or handed over: a parked connection holds as little as it can.
func (fs *h1Fast) drop(cancel context.CancelFunc) {
	c := fs.c
	cancel()
	c.gw.mu.Lock()
	c.gw.cancel = nil
	c.gw.mu.Unlock()
	c.baseCtx, c.remote = nil, ""
}

// unread is every byte read and not served yet, for net/http.
func (fs *h1Fast) unread() []byte {
	b, _ := fs.br.Peek(fs.br.Buffered())
	out := make([]byte, 0, len(b)+len(fs.c.next))
	out = append(out, b...)
	out = append(out, fs.c.next...)
	g := &fs.c.gw
	g.mu.Lock()
	out = append(out, g.stash...)
	g.stash = nil
	g.mu.Unlock()
	return out
}

func (fs *h1Fast) release() {
	fs.br.Reset(nil)
	fastReaders.Put(fs.br)
	fs.bw.Reset(nil)
	fastWriters.Put(fs.bw)
	fs.br, fs.bw = nil, nil
}

func (fs *h1Fast) setReadDeadline(t time.Time) {
	_ = fs.c.Conn.SetReadDeadline(t)
	fs.dl, fs.dlSet = t, true
}

// h1ParkSlack is how much later than h1ParkAfter a connection idle
// since a request may be parked: the wait for the next request keeps a
// read deadline that ends no later, so that a busy connection does not
// set one per request (each takes the poller's lock and resets its
// timer); it sets one a little later, good for the requests of the next
// h1ParkSlack.
const h1ParkSlack = h1ParkAfter / 8

// h1PartialChecks is how many times the loop checks the whole lines of
// a head that comes in parts before it leaves the head to net/http: a
// TLS connection's first head takes one or two.
const h1PartialChecks = 4

// waitDeadline readies the read deadline for the wait for the next
// request, which began at since: it ends at since plus the idle timeout
// when that comes before h1ParkAfter (the connection closes), else
// between h1ParkAfter and h1ParkAfter+h1ParkSlack (it is parked, its
// idle time counted from since), and never after the idle timeout.
func (fs *h1Fast) waitDeadline(since time.Time) {
	idle := fs.s.idleTimeout
	if idle <= h1ParkAfter {
		fs.setReadDeadline(since.Add(idle))
		return
	}
	t := since.Add(h1ParkAfter)
	if fs.dlSet && !fs.dl.Before(t) && fs.dl.Sub(t) <= h1ParkSlack && !fs.dl.After(since.Add(idle)) {
		return
	}
	fs.setReadDeadline(t.Add(min(h1ParkSlack, idle-h1ParkAfter)))
}

// next waits for the next request and serves it; first: the connection
// is new or woke from parking, so the wait is the header timeout's.
func (fs *h1Fast) next(first bool) int {
	c, s, br := fs.c, fs.s, fs.br
	var idleFrom time.Time // when the wait for the next request began
	if !first && br.Buffered() == 0 && len(c.next) == 0 && !c.gw.stashed() {
		if err := fs.bw.Flush(); err != nil {
			return fastClose
		}
		since := time.Now()
		idleFrom = since
		fs.waitDeadline(since)
		if _, err := br.Peek(1); err != nil {
			if isTimeout(err) && c.fl.ctx.Err() == nil && br.Buffered() == 0 {
				c.idleSince = since
				return fastPark
			}
			return fastClose
		}
	}
	if !first && br.Buffered() < 4 {
		// As net/http's server: the next request is read once 4 bytes
		// of it have come; fewer, then the client's close or the idle
		// timeout, end the connection without an answer.
		if err := fs.bw.Flush(); err != nil {
			return fastClose
		}
		if idleFrom.IsZero() {
			idleFrom = time.Now()
		}
		fs.setReadDeadline(idleFrom.Add(s.idleTimeout))
		if _, err := br.Peek(4); err != nil {
			fs.feedPartial()
			return fastClose
		}
	}
	if fs.lastPost {
		// As net/http's server: up to 4 CR or LF bytes after a POST
		// are dropped (RFC 9112 2.2, clients that end a body with CRLF).
		peek, _ := br.Peek(min(4, br.Buffered()))
		n := 0
		for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
			n++
		}
		_, _ = br.Discard(n)
	}
	// The whole head, in the buffer; what is still to come of it within
	// the header timeout, as net/http's readRequest.
	end := 0
	timed := false
	whole := 0  // the bytes of the head's whole lines that partialOK passed
	checks := 0 // partialOK calls for this head
	for {
		buf, _ := br.Peek(br.Buffered())
		if end = headEnd(buf); end > 0 {
			break
		}
		if br.Buffered() >= br.Size() {
			return fastHandOff // too large: net/http reads it
		}
		if nl := bytes.LastIndexByte(buf, '\n') + 1; nl > whole {
			// A head in parts (a TLS connection's first request comes
			// so: the sniff's 64 bytes, then the rest). net/http
			// answers a malformed line as soon as it is whole: a line
			// it would refuse hands the connection over now. Each
			// check parses all the lines so far, so a head sent a line
			// per TLS record would cost a parse per line: past
			// h1PartialChecks, net/http reads it.
			if checks++; checks > h1PartialChecks || !partialOK(buf[:nl]) {
				return fastHandOff
			}
			whole = nl
		}
		// The answers so far go out before a read that may wait.
		if err := fs.bw.Flush(); err != nil {
			return fastClose
		}
		if !timed {
			timed = true
			var t time.Time
			if d := s.srv.ReadHeaderTimeout; d > 0 {
				t = time.Now().Add(d)
			}
			fs.setReadDeadline(t)
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			if br.Buffered() == 0 {
				return fastClose
			}
			if !isTimeout(err) {
				// The client ended inside a head: net/http answers
				// it (400) and records it.
				return fastHandOff
			}
			// A partial head at the header timeout: net/http closes
			// without an answer.
			fs.feedPartial()
			return fastClose
		}
	}
	if end > s.srv.MaxHeaderBytes {
		return fastHandOff // net/http and the framer answer 431
	}
	// Parsed from a copy, so that a head the loop does not serve is
	// still unread for net/http.
	head, _ := br.Peek(end)
	var sc reqScan
	req, exact, err := parseHeadScan(fs.tmpl, head, &sc)
	if err != nil || !exact || !fastServable(req, &sc) {
		return fastHandOff
	}
	_, _ = br.Discard(end)
	fs.lastPost = req.Method == http.MethodPost
	req.RemoteAddr = c.remote
	var body *fastBody
	if req.ContentLength > 0 {
		body = &fastBody{fs: fs, remain: req.ContentLength}
		body.rw = bodyResponse{&fs.w, body}
		req.Body = body
		// The body reads without a deadline, as net/http's do: neither
		// the loop's nor one a handler set on this connection before
		// (ResponseController.SetReadDeadline) may cut it.
		if !fs.dlSet || !fs.dl.IsZero() {
			fs.setReadDeadline(time.Time{})
		}
	} else {
		req.Body = http.NoBody
	}
	return fs.serveRequest(req, body)
}

// feedPartial gives the framer the part of a head the loop holds when
// the connection ends without an answer, for its record
// (recordNoRequest).
func (fs *h1Fast) feedPartial() {
	b, _ := fs.br.Peek(fs.br.Buffered())
	if len(b) == 0 {
		return
	}
	c := fs.c
	c.mu.Lock()
	c.fr.feed(b)
	c.mu.Unlock()
}

// partialOK reports whether lines, the whole lines of a head still in
// parts, are ones http.ReadRequest reads without an error, so that
// net/http's server, reading them, would wait for the rest too rather
// than answer at once. Lines of parseHead's shape are (scanRequest, no
// allocation; FuzzReadRequest holds it to ReadRequest); others are
// parsed ended by an empty line. An error that this end may cause (one
// about the head as a whole) only hands a request over that the loop
// could have served.
func partialOK(lines []byte) bool {
	if sc, ok := scanRequest(lines, true); ok && sc.plainPath {
		return true
	}
	head := make([]byte, 0, len(lines)+2)
	head = append(append(head, lines...), "\r\n"...)
	_, _, err := readHead(head)
	return err == nil
}

// headEnd returns the length of the request head at the start of buf
// (through the empty line that ends it, CRLF or bare LF), or 0 when buf
// holds no whole head.
func headEnd(buf []byte) int {
	i := 0
	for {
		j := bytes.IndexByte(buf[i:], '\n')
		if j < 0 {
			return 0
		}
		i += j + 1
		if i < len(buf) && buf[i] == '\n' {
			return i + 1
		}
		if i+1 < len(buf) && buf[i] == '\r' && buf[i+1] == '\n' {
			return i + 2
		}
	}
}

// fastServable reports whether the loop serves req (else net/http does).
// sc is what parseHeadScan left: when buildRequest made req (sc.built),
// what scanRequest found in the head. Such a head's field names are
// token bytes and its values visible ASCII, spaces and tabs (fastValue),
// which ValidHeaderFieldName and ValidHeaderFieldValue take, and the
// scan noted the fields looked at by name below: its header is not
// walked again (each of undici's 9 fields, say, cost a map step and two
// checks). reqSame holds the two ways to the same answer on every head
// FuzzReadRequest tries.
func fastServable(r *http.Request, sc *reqScan) bool {
	if r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.Method == http.MethodConnect || r.Method == "PRI" ||
		r.TransferEncoding != nil || r.ContentLength < 0 || r.RequestURI == "*" {
		return false
	}
	// ReadRequest took the one Host field (more are an error) out of
	// the header: for a request in origin form, r.Host is its value.
	// net/http's server wants one for HTTP/1.1, and a valid one.
	if r.URL.Host != "" || r.Host == "" || !httpguts.ValidHostHeader(r.Host) {
		return false
	}
	h := r.Header
	if sc.built {
		// Transfer-Encoding and Trailer: the scan takes no head with them.
		return !sc.refused && (!sc.conn || fastConnection(h["Connection"]))
	}
	for k, vs := range h {
		switch k {
		case "Transfer-Encoding", "Trailer":
			return false
		case "Connection":
			if !fastConnection(vs) {
				return false
			}
		}
		if fastRefusedName([]byte(k)) || !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// fastConnection reports whether the Connection values vs have no token
// but keep-alive and close (in any case), which the loop handles.
func fastConnection(vs []string) bool {
	for _, v := range vs {
		for tok := range strings.SplitSeq(v, ",") {
			tok = trimBlank(tok)
			if !strings.EqualFold(tok, "keep-alive") && !strings.EqualFold(tok, "close") && tok != "" {
				return false
			}
		}
	}
	return true
}

// serveRequest runs the handler for req and finishes its response, in
// net/http's order (finishRequest): the answer goes out, then the rest
// of the request body is read (or the connection closes).
func (fs *h1Fast) serveRequest(req *http.Request, body *fastBody) int {
	c := fs.c
	w := &fs.w
	w.reset(req)
	if !fs.counted {
		fs.counted = true
		fs.s.fastServed.Add(1)
	}
	// The answers to the requests before go out first: this one's
	// handler may take long.
	if fs.bw.Buffered() > 0 {
		if err := fs.bw.Flush(); err != nil {
			return fastClose
		}
	}
	c.gw.begin(c, body == nil)
	fs.handlerRuns(true)
	ok := fs.runHandler(w, req)
	fs.handlerRuns(false)
	if body != nil {
		// Before end: no read of the body (and so no bodyDone) comes
		// after it.
		body.close()
	}
	if c.gw.end(c) {
		fs.dlSet = false // in the past
	}
	if !ok {
		return fastClose
	}
	early := false
	if body != nil && !w.fullDuplex && !w.sentHeader {
		// As net/http's writeHeader: the rest of the body is read
		// before the answer, or the answer says the connection closes.
		switch body.discard() {
		case bodyTooBig:
			w.closeAfter, early = true, true
		case bodyFailed:
			w.closeAfter = true
		}
		body = nil
	}
	if err := w.finish(); err != nil {
		return fastClose
	}
	if body != nil && body.left() {
		if err := fs.bw.Flush(); err != nil {
			return fastClose
		}
		switch body.discard() {
		case bodyTooBig:
			return fastCloseWait
		case bodyFailed:
			return fastClose
		}
	}
	if !w.reusable() || fs.ctx.Err() != nil {
		if early {
			return fastCloseWait
		}
		return fastClose
	}
	return fastServed
}

// handlerRuns notes the start and end of a handler: while one runs, its
// ResponseController sets the read deadline, else the loop does.
func (fs *h1Fast) handlerRuns(on bool) {
	fs.dlMu.Lock()
	fs.inHandler = on
	fs.dlMu.Unlock()
}

// runHandler calls the flow's handler; false: it panicked (an aborted
// response), and the connection closes.
func (fs *h1Fast) runHandler(w *fastResponse, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler { //nolint:errorlint // sentinel panic value
				fs.s.srv.ErrorLog.Printf("http: panic serving %v: %v", fs.c.remote, v)
			}
			if w.sentHeader {
				_ = fs.bw.Flush() // what went out before the abort, as net/http
			}
			ok = false
		}
	}()
	var rw http.ResponseWriter = w
	if b, ok := req.Body.(*fastBody); ok {
		rw = &b.rw
	}
	fs.c.fl.ServeHTTP(rw, req)
	return true
}

// bodyResponse is the ResponseWriter of a request with a body: a
// goroutine still reading the body after the handler returned may call
// SetReadDeadline (countingBody), also while the next request's handler
// runs, and that call must do nothing.
type bodyResponse struct {
	*fastResponse
	b *fastBody
}

func (w *bodyResponse) SetReadDeadline(t time.Time) error {
	fs := w.b.fs
	fs.dlMu.Lock()
	defer fs.dlMu.Unlock()
	if !fs.inHandler || w.b.ended {
		return nil
	}
	fs.dlSet = false
	return fs.c.Conn.SetReadDeadline(t)
}

// fastBody is a request body of declared length, read from the loop's
// buffer. Closed when the handler returns: a transport still holding it
// reads no further.
type fastBody struct {
	fs     *h1Fast
	mu     sync.Mutex
	remain int64
	closed bool
	err    error // a failed read: the connection can't be reused
	ended  bool  // the handler returned (under fs.dlMu)
	rw     bodyResponse
}

func (b *fastBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.remain == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.remain {
		p = p[:b.remain]
	}
	n, err := b.fs.br.Read(p)
	b.remain -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		b.err = err
		return n, err
	}
	if b.remain == 0 {
		b.fs.c.gw.bodyDone(b.fs.c)
		return n, io.EOF
	}
	return n, nil
}

func (b *fastBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return nil
}

// close ends the body for its readers when the handler has returned. A
// read still under way (a Transport goroutine sending the body upstream
// after the answer came) is interrupted, not waited for: the client may
// be sending nothing more.
func (b *fastBody) close() {
	b.fs.dlMu.Lock()
	b.ended = true
	b.fs.dlMu.Unlock()
	interrupted := false
	if !b.mu.TryLock() {
		b.fs.setReadDeadline(aLongTimeAgo)
		interrupted = true
		b.mu.Lock()
	}
	b.closed = true
	if interrupted && errors.Is(b.err, os.ErrDeadlineExceeded) {
		b.err = nil // that read's end, not the client's
	}
	b.mu.Unlock()
}

// left reports whether part of the body is still to be read.
func (b *fastBody) left() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.remain > 0 || b.err != nil
}

const (
	bodyRead = iota
	bodyTooBig
	bodyFailed
)

// discard reads what is left of a closed body and drops it, if less
// than maxPostHandlerRead (as net/http's body.Close); bodyTooBig: it is
// not read, and the connection closes; bodyFailed: a read failed.
func (b *fastBody) discard() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return bodyFailed
	}
	if b.remain >= maxPostHandlerRead {
		return bodyTooBig
	}
	if b.remain > 0 {
		fs := b.fs
		fs.setReadDeadline(time.Now().Add(fs.s.idleTimeout))
		n, err := fs.br.Discard(int(b.remain))
		b.remain -= int64(n)
		if err != nil {
			b.err = err
			return bodyFailed
		}
	}
	return bodyRead
}

// goneWatch is what the connection's gone-watch (goneSet) and the loop
// share.
type goneWatch struct {
	mu      sync.Mutex
	token   uint64 // in the goneSet; 0: not
	set     *goneSet
	sock    syscall.RawConn
	hup     bool          // the socket reported the peer's close
	serving bool          // a handler runs, its request body read
	bg      chan struct{} // a read of the connection is under way; closed when it ends
	stop    bool          // end is stopping that read
	stash   []byte        // what that read got
	cancel  context.CancelFunc
}

func (g *goneWatch) stashed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.stash) > 0
}

// begin: a handler starts; bodyRead: its request has no body left to
// read.
func (g *goneWatch) begin(c *h1Conn, bodyRead bool) {
	g.mu.Lock()
	g.serving = bodyRead
	start := g.startLocked()
	g.mu.Unlock()
	if start != nil {
		go c.goneRead(start)
	}
}

// bodyDone: the handler's request body has been read to its end, as
// begin with nothing left to read.
func (g *goneWatch) bodyDone(c *h1Conn) { g.begin(c, true) }

// hupped: the socket watched under token tok reported the client's
// close (ignored when c is no longer watched under it).
func (g *goneWatch) hupped(c *h1Conn, tok uint64) {
	g.mu.Lock()
	if g.token != tok {
		g.mu.Unlock()
		return
	}
	g.hup = true
	start := g.startLocked()
	g.mu.Unlock()
	if start != nil {
		go c.goneRead(start)
	}
}

func (g *goneWatch) startLocked() chan struct{} {
	if !g.hup || !g.serving || g.bg != nil {
		return nil
	}
	g.bg = make(chan struct{})
	return g.bg
}

// end: the handler returned; a read under way is stopped (then it
// reports true: the read deadline is in the past).
func (g *goneWatch) end(c *h1Conn) bool {
	g.mu.Lock()
	g.serving = false
	bg := g.bg
	g.stop = bg != nil
	g.mu.Unlock()
	if bg == nil {
		return false
	}
	_ = c.Conn.SetReadDeadline(aLongTimeAgo)
	<-bg
	g.mu.Lock()
	g.bg, g.stop = nil, false
	g.mu.Unlock()
	return true
}

// goneRead reads the client's connection while a handler runs, as
// net/http's background read: a byte (a pipelined request) is kept for
// the loop; a failure means the client left, and the request's context
// ends.
func (c *h1Conn) goneRead(done chan struct{}) {
	g := &c.gw
	g.mu.Lock()
	if !g.stop {
		// Not the loop's idle or header deadline: this read waits
		// until the client leaves or end stops it.
		_ = c.Conn.SetReadDeadline(time.Time{})
	}
	g.mu.Unlock()
	var b [1]byte
	n, err := c.Conn.Read(b[:])
	g.mu.Lock()
	if n > 0 {
		g.stash = append(g.stash, b[0])
	}
	g.mu.Unlock()
	if err != nil {
		c.fastReadFailed(err)
	}
	close(done)
}

// goneRemove takes c out of its goneSet.
func (c *h1Conn) goneRemove() {
	g := &c.gw
	g.mu.Lock()
	set, tok, sock := g.set, g.token, g.sock
	g.set, g.token, g.sock, g.hup = nil, 0, nil, false
	g.mu.Unlock()
	if set != nil {
		set.remove(c, tok, sock)
	}
}

// fastResponse is the loop's http.ResponseWriter, with net/http's
// framing rules for an HTTP/1.1 response (chunkWriter.writeHeader):
// Content-Length when the handler sets it or finishes within the first
// 2 KiB, else chunked; no body for HEAD, 1xx, 204 and 304; Date and a
// sniffed Content-Type added; Connection: close when either side asks.
// Fields go out in map order.
type fastResponse struct {
	fs          *h1Fast
	req         *http.Request
	h           http.Header // own, or the upstream's (adoptHeader)
	own         http.Header // the map each request starts with, kept for the next
	status      int
	wroteHeader bool // WriteHeader ran (or the first Write)
	sentHeader  bool // the head is in the write buffer
	chunking    bool
	cl          int64 // declared Content-Length; -1: none
	written     int64
	pending     []byte // body bytes held until the head is decided
	closeAfter  bool
	fullDuplex  bool // EnableFullDuplex: the answer may go out before the body is read
	done        bool // the handler returned
	werr        error
	// date is the Date field's value for the second dateSec, kept from
	// the run's last response: a busy connection formats it once a
	// second, not per response.
	date    []byte
	dateSec int64
	dateBuf [29]byte
}

// dateAt is the Date field's value at now.
func (w *fastResponse) dateAt(now time.Time) []byte {
	if sec := now.Unix(); w.date == nil || sec != w.dateSec {
		w.date, w.dateSec = now.UTC().AppendFormat(w.dateBuf[:0], http.TimeFormat), sec
	}
	return w.date
}

// reset readies w for req. w.fs stays: the ResponseController of an
// earlier request's handler may still read it.
func (w *fastResponse) reset(req *http.Request) {
	if w.own == nil {
		w.own = make(http.Header)
	} else {
		clear(w.own)
	}
	w.req, w.h, w.status = req, w.own, 0
	w.wroteHeader, w.sentHeader, w.chunking, w.fullDuplex = false, false, false, false
	w.cl, w.written, w.pending = -1, 0, w.pending[:0]
	w.closeAfter, w.done, w.werr = req.Close, false, nil
}

func (w *fastResponse) Header() http.Header { return w.h }

// adoptHeader makes h the response's header map (headerAdopter), while
// the response has none of its own yet. The next request starts with w's
// own map again: h is neither cleared nor kept.
func (w *fastResponse) adoptHeader(h http.Header) bool {
	if w.wroteHeader || len(w.h) > 0 || h == nil {
		return false
	}
	w.h = h
	return true
}

func (w *fastResponse) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		// An informational answer goes out at once; the final one follows.
		bw := w.fs.bw
		writeStatus(bw, code)
		writeFields(bw, w.h, func(k string) bool { return k == "Content-Length" || k == "Transfer-Encoding" })
		bw.WriteString("\r\n")
		w.werr = bw.Flush()
		return
	}
	w.wroteHeader = true
	w.status = code
	if cl := headerGet(w.h, "Content-Length"); cl != "" {
		if v, err := strconv.ParseInt(cl, 10, 64); err == nil && v >= 0 {
			w.cl = v
		} else {
			w.h.Del("Content-Length")
		}
	}
}

func (w *fastResponse) bodyAllowed() bool { return bodyAllowedForStatus(w.status) }

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199:
		return false
	case status == 204, status == 304:
		return false
	}
	return true
}

func (w *fastResponse) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !w.bodyAllowed() {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(p))
	if w.cl != -1 && w.written > w.cl {
		return 0, http.ErrContentLength
	}
	if w.werr != nil {
		return 0, w.werr
	}
	if !w.sentHeader {
		if len(w.pending)+len(p) <= shortResponse {
			w.pending = append(w.pending, p...)
			return len(p), nil
		}
		w.writeHead(append(w.pending, p...))
		w.writeBody(w.pending)
		w.pending = w.pending[:0]
	}
	w.writeBody(p)
	if w.werr != nil {
		return 0, w.werr
	}
	return len(p), nil
}

// writeBody writes p, framed, to the write buffer.
func (w *fastResponse) writeBody(p []byte) {
	if len(p) == 0 || w.req.Method == http.MethodHead {
		return
	}
	bw := w.fs.bw
	if w.chunking {
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(len(p)), 16))
		bw.WriteString("\r\n")
	}
	if _, err := bw.Write(p); err != nil {
		w.werr = err
		return
	}
	if w.chunking {
		if _, err := bw.WriteString("\r\n"); err != nil {
			w.werr = err
		}
	}
}

// writeHead decides the framing and writes the head; p is the first of
// the body (sniffed for a Content-Type).
func (w *fastResponse) writeHead(p []byte) {
	w.sentHeader = true
	h, req := w.h, w.req
	isHEAD := req.Method == http.MethodHead
	trailers := len(h["Trailer"]) > 0
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			trailers = true
			break
		}
	}
	te := headerGet(h, "Transfer-Encoding")
	hasTE := te != ""
	extraCL := false // a Content-Length field of w.cl goes out
	if w.done && !trailers && !hasTE && w.bodyAllowed() && len(h["Content-Length"]) == 0 && (!isHEAD || len(p) > 0) {
		w.cl = int64(len(p))
		extraCL = true
	}
	hasCL := w.cl != -1
	saysClose := hasToken(headerGet(h, "Connection"), "close")
	if saysClose {
		w.closeAfter = true
	}
	var skip [4]string
	ns := 0
	contentType := ""
	if w.bodyAllowed() {
		_, haveType := h["Content-Type"]
		if headerGet(h, "Content-Encoding") == "" && !haveType && !hasTE && len(p) > 0 {
			contentType = http.DetectContentType(p)
		}
	} else {
		skip[0], skip[1] = "Content-Length", "Transfer-Encoding"
		ns = 2
		if w.status == http.StatusNotModified {
			skip[2] = "Content-Type"
			ns = 3
		}
	}
	var date []byte
	if _, ok := h["Date"]; !ok {
		date = w.dateAt(time.Now())
	}
	if hasCL && hasTE && te != "identity" {
		skip[ns] = "Content-Length"
		ns++
		hasCL = false
	}
	transferEncoding := ""
	switch {
	case isHEAD || !w.bodyAllowed():
		if ns < 4 && skip[1] != "Transfer-Encoding" {
			skip[ns] = "Transfer-Encoding"
			ns++
		}
	case hasCL:
		skip[ns] = "Transfer-Encoding"
		ns++
	case hasTE && te == "identity":
		w.closeAfter = true
		skip[ns] = "Transfer-Encoding"
		ns++
	default:
		w.chunking = true
		transferEncoding = "chunked"
		if hasTE {
			skip[ns] = "Transfer-Encoding"
			ns++
		}
	}
	if w.chunking && ns < 4 {
		skip[ns] = "Content-Length"
		ns++
	}
	connClose := w.closeAfter && !saysClose && w.status != http.StatusSwitchingProtocols
	bw := w.fs.bw
	writeStatus(bw, w.status)
	writeFields(bw, h, func(k string) bool {
		if connClose && k == "Connection" {
			return true
		}
		for _, s := range skip[:ns] {
			if k == s {
				return true
			}
		}
		return strings.HasPrefix(k, http.TrailerPrefix)
	})
	if date != nil {
		bw.WriteString("Date: ")
		bw.Write(date)
		bw.WriteString("\r\n")
	}
	if extraCL {
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), w.cl, 10))
		bw.WriteString("\r\n")
	}
	if contentType != "" {
		bw.WriteString("Content-Type: ")
		bw.WriteString(contentType)
		bw.WriteString("\r\n")
	}
	if connClose {
		bw.WriteString("Connection: close\r\n")
	}
	if transferEncoding != "" {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if _, err := bw.WriteString("\r\n"); err != nil {
		w.werr = err
	}
}

func writeStatus(bw *bufio.Writer, code int) {
	bw.Write(appendStatusLine(bw.AvailableBuffer(), code))
}

// appendStatusLine appends the HTTP/1.1 status line of code, with its
// CRLF, as net/http's server writes it ("status code N" for a code
// without a text).
func appendStatusLine(dst []byte, code int) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, ' ')
	if text := http.StatusText(code); text != "" {
		dst = append(dst, text...)
	} else {
		dst = append(dst, "status code "...)
		dst = strconv.AppendInt(dst, int64(code), 10)
	}
	return append(dst, "\r\n"...)
}

var headerNewlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// writeFields writes h's fields but those skip names, as net/http's
// Header.WriteSubset does (invalid names dropped, line breaks in values
// made spaces, values trimmed), in map order.
func writeFields(bw *bufio.Writer, h http.Header, skip func(string) bool) {
	for k, vs := range h {
		if skip != nil && skip(k) {
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		for _, v := range vs {
			writeResponseField(bw, k, v)
		}
	}
}

func hasToken(v, token string) bool {
	for v != "" {
		var t string
		t, v, _ = strings.Cut(v, ",")
		if strings.EqualFold(strings.Trim(t, " \t"), token) {
			return true
		}
	}
	return false
}

// sendHead writes the head (a 200 if the handler set none) and the body
// held back for it, unless they went out already.
func (w *fastResponse) sendHead() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.sentHeader {
		w.writeHead(w.pending)
		w.writeBody(w.pending)
		w.pending = w.pending[:0]
	}
}

// finish completes the response after the handler returned.
func (w *fastResponse) finish() error {
	w.done = true
	w.sendHead()
	if w.chunking {
		bw := w.fs.bw
		bw.WriteString("0\r\n")
		w.writeTrailers()
		if _, err := bw.WriteString("\r\n"); err != nil && w.werr == nil {
			w.werr = err
		}
	}
	return w.werr
}

// writeTrailers writes the trailers the handler set: fields under
// http.TrailerPrefix, and those the Trailer field announced.
func (w *fastResponse) writeTrailers() {
	bw := w.fs.bw
	for k, vs := range w.h {
		name, ok := strings.CutPrefix(k, http.TrailerPrefix)
		if !ok || !httpguts.ValidHeaderFieldName(name) {
			continue
		}
		for _, v := range vs {
			writeResponseField(bw, name, v)
		}
	}
	for _, decl := range w.h["Trailer"] {
		for name := range strings.SplitSeq(decl, ",") {
			name = http.CanonicalHeaderKey(strings.Trim(name, " \t"))
			if name == "" || !httpguts.ValidTrailerHeader(name) || !httpguts.ValidHeaderFieldName(name) {
				continue
			}
			for _, v := range w.h[name] {
				writeResponseField(bw, name, v)
			}
		}
	}
}

// writeResponseField writes the response field k: v, as net/http's
// Header.Write does: CR and LF in v become spaces (a request field with
// them is refused instead: writeField), and its ends are trimmed.
func writeResponseField(bw *bufio.Writer, k, v string) {
	if strings.ContainsAny(v, "\r\n") {
		v = headerNewlineToSpace.Replace(v)
	}
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(strings.Trim(v, " \t"))
	bw.WriteString("\r\n")
}

// reusable is net/http's shouldReuseConnection.
func (w *fastResponse) reusable() bool {
	if w.closeAfter || w.werr != nil {
		return false
	}
	if w.req.Method != http.MethodHead && w.cl != -1 && w.bodyAllowed() && w.cl != w.written {
		return false
	}
	return true
}

// Flush sends the head and what the body has so far.
func (w *fastResponse) Flush() { _ = w.FlushError() }

func (w *fastResponse) FlushError() error {
	w.sendHead()
	if w.werr != nil {
		return w.werr
	}
	if err := w.fs.bw.Flush(); err != nil {
		w.werr = err
	}
	return w.werr
}

// SetReadDeadline sets the deadline of the request body's reads while
// the handler runs; after, the deadline is the loop's, and a call (from a
// goroutine still reading the body) does nothing.
func (w *fastResponse) SetReadDeadline(t time.Time) error {
	fs := w.fs
	fs.dlMu.Lock()
	defer fs.dlMu.Unlock()
	if !fs.inHandler {
		return nil
	}
	fs.dlSet = false
	return fs.c.Conn.SetReadDeadline(t)
}

func (w *fastResponse) SetWriteDeadline(t time.Time) error {
	return w.fs.c.Conn.SetWriteDeadline(t)
}

// EnableFullDuplex: the loop reads a request body and writes the
// response independently already; as net/http's, the answer then goes out
// before the rest of the body is read and dropped.
func (w *fastResponse) EnableFullDuplex() error {
	w.fullDuplex = true
	return nil
}

var (
	_ http.ResponseWriter = (*fastResponse)(nil)
	_ http.Flusher        = (*fastResponse)(nil)
	_ net.Conn            = (*h1Conn)(nil)
)
