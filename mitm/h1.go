package mitm

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/audit"
)

// net/http's server accepts a request carrying both Content-Length and
// Transfer-Encoding (it drops Content-Length), answers some malformed
// requests itself, and hides header sizes from handlers. The proxy wants
// a 400 for the first (request smuggling), an audit record for the
// second and its own header limit, so h1Conn watches the client's bytes
// with a small HTTP/1.1 framing tracker and recognizes the server's own
// error answers on the way out.

// headInfo is what the tracker learned about one request head.
type headInfo struct {
	size int  // bytes of the request line and header fields
	both bool // Content-Length and Transfer-Encoding both present
	// te10: Transfer-Encoding in a request of a version before
	// HTTP/1.1, whose framing RFC 9112 6.1 calls faulty (net/http
	// ignores the field and frames by Content-Length).
	te10 bool
	// expect is the value of the head's first Expect field when it asks
	// for something other than 100-continue: net/http's server answers
	// such a request 417 itself, without a handler (expectationFailed).
	expect string
	method string
	target string
}

// faultyFraming says what makes the head's framing one Sluice refuses
// (request smuggling), or "" when nothing does.
func (h headInfo) faultyFraming() string {
	switch {
	case h.both:
		return "request has both Content-Length and Transfer-Encoding"
	case h.te10:
		return "request of a version before HTTP/1.1 has Transfer-Encoding"
	}
	return ""
}

const (
	stHead = iota
	stBody
	stChunkSize
	stChunkData
	stChunkCRLF
	stTrailer
	stDone // lost track, upgraded or tunnelled: stop looking
)

const maxTrackedLine = 512

// framer follows HTTP/1.1 request framing on a byte stream. It never
// buffers more than one line prefix, and gives up (stDone) on anything it
// does not understand; net/http then has the last word.
type framer struct {
	state  int
	line   []byte // current line, first maxTrackedLine bytes
	remain int64
	cur    headInfo
	first  bool // next line is a request line
	cl, te bool
	clVal  string
	teVal  string
	upg    bool
	// expectVal is the first Expect field's value; expectSeen: there
	// was one (net/http reads the first alone).
	expectVal  string
	expectSeen bool
	// before11: the request line names a version before HTTP/1.1
	// (its Transfer-Encoding: headInfo.te10).
	before11 bool
	heads    []headInfo
}

func newFramer() *framer { return &framer{first: true} }

func (f *framer) feed(p []byte) {
	for len(p) > 0 && f.state != stDone {
		switch f.state {
		case stBody, stChunkData:
			n := int64(len(p))
			if n > f.remain {
				n = f.remain
			}
			f.remain -= n
			p = p[n:]
			if f.remain == 0 {
				if f.state == stBody {
					f.state = stHead
				} else {
					f.state = stChunkCRLF
				}
			}
			continue
		}
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if room := maxTrackedLine - len(f.line); room > 0 {
			if len(chunk) < room {
				room = len(chunk)
			}
			f.line = append(f.line, chunk[:room]...)
		}
		if f.state == stHead {
			f.cur.size += len(chunk)
		}
		if i < 0 {
			return
		}
		if f.state == stHead {
			f.cur.size++
		}
		p = p[i+1:]
		f.endLineBytes(bytes.TrimSuffix(f.line, []byte("\r")))
		f.line = f.line[:0]
	}
}

// endLineBytes is endLine(string(line)), without making a string of the
// header fields endLine would ignore anyway: a line without a colon, or
// an ASCII field name whose length is none of the tracked names' (ASCII
// keeps its length when lower-cased).
func (f *framer) endLineBytes(line []byte) {
	if f.state == stHead && !f.first && len(line) > 0 {
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return
		}
		switch len(name) {
		case len("content-length"), len("transfer-encoding"), len("upgrade"):
		case len("expect"): // as long as Accept, Cookie or Origin, ignored here
			if isASCII(name) && !bytes.EqualFold(name, []byte("expect")) {
				return
			}
		default:
			if isASCII(name) {
				return
			}
		}
	}
	f.endLine(string(line))
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

func (f *framer) endLine(line string) {
	switch f.state {
	case stHead:
		if f.first {
			if line == "" {
				f.cur.size = 0
				return // blank lines before a request line are ignored
			}
			f.first = false
			// The first two space-separated fields (strings.SplitN(line,
			// " ", 3)[:2]), without the slice.
			method, rest, ok := strings.Cut(line, " ")
			f.cur.method = method
			if ok {
				var version string
				f.cur.target, version, _ = strings.Cut(rest, " ")
				if major, minor, ok := http.ParseHTTPVersion(version); ok && (major < 1 || major == 1 && minor < 1) {
					f.before11 = true
				}
			}
			return
		}
		if line != "" {
			name, raw, ok := strings.Cut(line, ":")
			if !ok {
				return
			}
			val := strings.TrimSpace(raw)
			switch strings.ToLower(name) {
			case "content-length":
				f.cl, f.clVal = true, val
			case "transfer-encoding":
				if f.before11 {
					f.cur.te10 = true
				} else {
					f.te = true
					f.teVal = strings.ToLower(val)
				}
			case "upgrade":
				f.upg = true
			case "expect":
				if !f.expectSeen { // trimmed as net/textproto trims a value
					f.expectSeen, f.expectVal = true, strings.Trim(raw, " \t")
				}
			}
			return
		}
		f.cur.both = f.cl && f.te
		if f.expectVal != "" && !expectsContinue(f.expectVal) {
			f.cur.expect = f.expectVal
		}
		// net/http answers "OPTIONS *" itself; no handler takes its head.
		if len(f.heads) < 64 && (f.cur.method != "OPTIONS" || f.cur.target != "*") {
			f.heads = append(f.heads, f.cur)
		}
		f.startBody()
	case stChunkSize:
		s, _, _ := strings.Cut(line, ";")
		n, err := strconv.ParseInt(strings.TrimSpace(s), 16, 64)
		if err != nil || n < 0 {
			f.state = stDone
			return
		}
		if n == 0 {
			f.state = stTrailer
			return
		}
		f.state, f.remain = stChunkData, n
	case stChunkCRLF:
		if line != "" {
			f.state = stDone
			return
		}
		f.state = stChunkSize
	case stTrailer:
		if line == "" {
			f.reset()
		}
	}
}

func (f *framer) startBody() {
	method := f.cur.method
	switch {
	case method == "CONNECT" || f.upg || f.cur.te10:
		// te10: the framing stage refuses it and the connection
		// closes; what follows is not tracked.
		f.state = stDone
		return
	case f.te:
		codings := strings.Split(f.teVal, ",")
		if strings.TrimSpace(codings[len(codings)-1]) != "chunked" {
			f.state = stDone
			return
		}
		f.resetHead()
		f.state = stChunkSize
		return
	case f.cl:
		n, err := strconv.ParseInt(f.clVal, 10, 64)
		if err != nil || n < 0 {
			f.state = stDone
			return
		}
		f.resetHead()
		if n > 0 {
			f.state, f.remain = stBody, n
		}
		return
	}
	f.resetHead()
}

func (f *framer) resetHead() {
	f.cur = headInfo{}
	f.first = true
	f.cl, f.te, f.upg, f.before11, f.expectSeen = false, false, false, false, false
	f.clVal, f.teVal, f.expectVal = "", "", ""
	f.state = stHead
}

func (f *framer) reset() { f.resetHead() }

// release drops the line and head buffers of a framer at a request
// boundary (its connection is parked); they grow again when needed.
func (f *framer) release() {
	f.line, f.heads = nil, nil
}

// h1Conn is the client connection as net/http's HTTP/1.1 server sees it.
type h1Conn struct {
	net.Conn
	fl *flow

	mu sync.Mutex
	fr *framer

	closeOnce sync.Once
	onClose   func() // run once, after the first Close
	// stuck: a write timed out (the client stopped reading). Close then
	// closes the socket under TLS at once: crypto/tls's Close would wait
	// up to 5 s more to write a close_notify alert into the full socket.
	stuck atomic.Bool

	// Parking (see h1Server, park.go): at a request boundary, net/http's
	// read for the next request of an idle keep-alive connection gets EOF
	// instead, so its serve loop ends and its buffers go back to its
	// pools; Close then leaves the connection open and parks it until its
	// next byte, and it is handed over again.
	srv     *h1Server   // nil: never parked (the explicit listener's)
	idle    atomic.Bool // net/http holds it idle (http.StateIdle)
	parking atomic.Bool // the EOF was ours: Close parks
	next    []byte      // what park read, returned first
	// nextErr is returned once after next, before the socket is read
	// again: the timeout that ended the explicit listener's wait for a
	// first head (explicit_first.go).
	nextErr error
	// idleSince is when net/http began waiting for the next request.
	idleSince time.Time
	pk        parkLinks // while in the server's parkSet

	up upWatch // the upstream exchange of the request being served

	// The fast loop's (h1fast.go).
	gw      goneWatch
	baseCtx context.Context // of its requests, made per run (nil while parked)
	remote  string          // RemoteAddr of its requests
}

// upWatch aborts the upstream exchange of the request a handler serves
// when the client's connection fails meanwhile (h1Pool.exchange), as a
// context.AfterFunc on the request's context would, without one per
// request. net/http cancels a request's context when its background read
// of the client's connection fails (the client left, or the flow's end
// closed the connection) and when the handler returns; the handler's own
// goroutine sees the rest. A read error of the client's connection
// arrives here just before net/http cancels the context: the abort waits
// for that, so whoever sees the aborted exchange sees the context ended.
type upWatch struct {
	mu     sync.Mutex
	ctx    context.Context // the watched exchange's request context; nil: none
	abort  func()
	fired  bool // abort ran for the watched exchange
	failed bool // a read of the client's connection failed (sticky)
	stop   func() bool
	// flowStop ends the connection's one context.AfterFunc on its flow's
	// context (set at its first watch, ended when it closes): the flow's
	// end (the proxy stopping, the tunnel ending) aborts the watched
	// exchange even when no read of the client's connection fails, as
	// with a pipelined request waiting in net/http's buffer.
	flowStop func() bool
}

// watch starts watching the exchange that abort ends, for the request of
// context ctx; stop (c.up.stop) ends it and reports false when abort ran.
func (c *h1Conn) watch(ctx context.Context, abort func()) func() bool {
	w := &c.up
	w.mu.Lock()
	w.ctx, w.abort, w.fired = ctx, abort, false
	failed := w.failed
	if w.stop == nil {
		w.stop = c.unwatch
		w.flowStop = context.AfterFunc(c.fl.ctx, c.flowEnded)
	}
	w.mu.Unlock()
	if failed {
		go c.abortWhenDone(ctx)
	}
	return w.stop
}

// unwatch ends the watch; false: abort ran.
func (c *h1Conn) unwatch() bool {
	w := &c.up
	w.mu.Lock()
	defer w.mu.Unlock()
	fired := w.fired
	w.ctx, w.abort, w.fired = nil, nil, false
	return !fired
}

// readFailed notes a failed read of the client's connection. A deadline
// (net/http's end of its background read, a header or idle timeout) is
// not a failure.
func (c *h1Conn) readFailed(err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return
	}
	w := &c.up
	w.mu.Lock()
	w.failed = true
	ctx := w.ctx
	w.mu.Unlock()
	if ctx != nil {
		go c.abortWhenDone(ctx)
	}
}

// flowEnded aborts the watched exchange: its request's context derives
// from the flow's, which has ended.
func (c *h1Conn) flowEnded() {
	w := &c.up
	w.mu.Lock()
	ctx := w.ctx
	w.mu.Unlock()
	if ctx != nil {
		c.abortWhenDone(ctx)
	}
}

// abortWhenDone aborts the exchange watched for ctx once ctx ends (at
// the latest when the handler returns, and then nothing is watched).
func (c *h1Conn) abortWhenDone(ctx context.Context) {
	<-ctx.Done()
	w := &c.up
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx == ctx && !w.fired {
		w.fired = true
		w.abort()
	}
}

func newH1Conn(c net.Conn, fl *flow) *h1Conn {
	return &h1Conn{Conn: c, fl: fl, fr: newFramer()}
}

func (c *h1Conn) Read(b []byte) (int, error) {
	if len(c.next) > 0 {
		n := c.readNext(b)
		c.mu.Lock()
		c.fr.feed(b[:n])
		c.mu.Unlock()
		return n, nil
	}
	if err := c.nextErr; err != nil {
		c.nextErr = nil
		return 0, err
	}
	if c.srv != nil && c.idle.Load() && c.atBoundary() {
		return c.idleRead(b)
	}
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.mu.Lock()
		c.fr.feed(b[:n])
		c.mu.Unlock()
	}
	if err != nil {
		c.readFailed(err)
	}
	return n, err
}

// readNext moves what c.next holds into b, as much as fits.
func (c *h1Conn) readNext(b []byte) int {
	n := copy(b, c.next)
	c.next = c.next[n:]
	return n
}

// goErrorHeaders is what net/http's server writes after the status line
// of the answers it gives without calling a handler.
const goErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

func (c *h1Conn) Write(b []byte) (int, error) {
	if len(b) > 13 && string(b[:9]) == "HTTP/1.1 " {
		// The headers must follow the status line directly, so they can
		// only start at the first line end: look there, not through the
		// whole response.
		if i := bytes.IndexByte(b, '\n') - 1; i > 0 && bytes.HasPrefix(b[i:], []byte(goErrorHeaders)) {
			if code, err := strconv.Atoi(string(b[9:12])); err == nil {
				c.parserError(code, string(b[i+len(goErrorHeaders):]))
			}
		} else if bytes.HasPrefix(b, []byte(goExpectationFailed)) {
			c.expectationFailed()
		}
	}
	n, err := c.Conn.Write(b)
	if err != nil && isTimeout(err) {
		c.stuck.Store(true)
	}
	return n, err
}

// goExpectationFailed is how net/http's server begins the answer it gives,
// without a handler, to a request whose Expect field asks for more than
// 100-continue.
const goExpectationFailed = "HTTP/1.1 417 Expectation Failed\r\nConnection: close\r\nDate: "

// parserError records an answer net/http's server gave on its own, with
// the method and path of the request it answered, as the tracker saw
// them: the oldest whole head no handler took (net/http reads a request
// only once the handlers before it are done, and rejects a malformed
// field once the head has ended), else the head still coming (too
// large, or answered at a malformed line before its end).
func (c *h1Conn) parserError(code int, text string) {
	c.mu.Lock()
	var cur headInfo
	switch {
	case len(c.fr.heads) > 0:
		cur = c.fr.heads[0]
	case c.fr.state == stHead:
		cur = c.fr.cur // stale once the tracker stopped (a CONNECT, an upgrade)
	}
	c.mu.Unlock()
	reason := audit.ReasonMalformed
	if code == http.StatusRequestHeaderFieldsTooLarge {
		reason = audit.ReasonHeaderTooLarge
	}
	c.recordOwnAnswer(cur, code, reason, text)
}

// expectationFailed records the 417 net/http's server gave on its own to
// the oldest whole head no handler took, when that head's Expect field
// asked for more than 100-continue. A 417 of a handler (the size stage's,
// an upstream's) is recorded by its exchange: its request's head was
// taken.
func (c *h1Conn) expectationFailed() {
	c.mu.Lock()
	var cur headInfo
	if len(c.fr.heads) > 0 {
		cur = c.fr.heads[0]
	}
	c.mu.Unlock()
	if cur.expect == "" {
		return
	}
	c.recordOwnAnswer(cur, http.StatusExpectationFailed, audit.ReasonExpectation,
		fmt.Sprintf("Expect %q: only 100-continue is supported", cur.expect))
}

// recordOwnAnswer records an answer net/http's server gave without a
// handler: to the request of head h, with status code, reason and the
// detail text.
func (c *h1Conn) recordOwnAnswer(h headInfo, code int, reason, text string) {
	f := c.fl
	f.requests.Add(1) // answered, and recorded here
	rec := f.record(audit.KindHTTP, time.Now())
	rec.Proto = "HTTP/1.1"
	rec.Method = h.method
	rec.Path = pathOf(h.target)
	rec.Status = code
	rec.Source = audit.SourceSluice
	rec.Decision = audit.DecisionError
	rec.Reason = reason
	rec.Error = text
	f.p.emit(rec)
}

// expectsContinue reports whether an Expect field's value v names
// 100-continue, as net/http's server decides it (a token between
// spaces, tabs or commas, in any case): a request whose first Expect
// field is not empty and does not is answered 417 without a handler.
// Not hasToken, which splits a list at commas only: "100-continue foo"
// names it for net/http (FuzzFramerExpectMatchesNetHTTP holds the two
// together).
func expectsContinue(v string) bool {
	const token = "100-continue"
	boundary := func(b byte) bool { return b == ' ' || b == ',' || b == '\t' }
	for i := 0; i+len(token) <= len(v); i++ {
		if (i == 0 || boundary(v[i-1])) && (i+len(token) == len(v) || boundary(v[i+len(token)])) &&
			strings.EqualFold(v[i:i+len(token)], token) {
			return true
		}
	}
	return false
}

// nextHead returns the tracker's record of the request a handler is about
// to serve; ok is false once the tracker has stopped.
func (c *h1Conn) nextHead() (headInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.fr.heads) == 0 {
		return headInfo{}, false
	}
	h := c.fr.heads[0]
	if len(c.fr.heads) == 1 {
		// Empty again: append from the start of the array, instead
		// of reslicing it away one request at a time.
		c.fr.heads = c.fr.heads[:0]
	} else {
		c.fr.heads = c.fr.heads[1:]
	}
	return h, true
}

// partialHead reports whether the client has sent part of a request head
// that no handler took.
func (c *h1Conn) partialHead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fr.state == stHead && (c.fr.cur.size > 0 || len(c.fr.line) > 0)
}

// atBoundary reports whether every byte read so far belongs to requests
// a handler has taken: nothing net/http may still hold unparsed.
func (c *h1Conn) atBoundary() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	fr := c.fr
	return fr.state == stHead && fr.first && fr.cur.size == 0 && len(fr.line) == 0 && len(fr.heads) == 0
}

// h1ParkAfter is how long net/http holds an idle keep-alive connection
// before it is parked: a client's next request within it costs no
// handover. Meanwhile the connection holds net/http's goroutine and its
// 4 KiB read and write buffers, so it is short: a burst of new
// connections that go idle (a client opening its pool) holds them for
// this long, and the heap the proxy grows to with it. With 1s, 5000 idle
// connections opened at once cost 25-30 KiB of RSS each three seconds
// later; with 250ms or 100ms, 20 (sluice proxy, manual runs). Clients
// sending back to back never wait this long.
const h1ParkAfter = 250 * time.Millisecond

// idleRead is net/http's read for the next request of an idle connection:
// the client's next bytes if they come within h1ParkAfter, else EOF that
// ends net/http's serve loop, and Close parks the connection.
func (c *h1Conn) idleRead(b []byte) (int, error) {
	c.idleSince = time.Now()
	_ = c.Conn.SetReadDeadline(c.idleSince.Add(min(h1ParkAfter, c.srv.idleTimeout)))
	n, err := c.Conn.Read(b)
	if n == 0 && isTimeout(err) && c.fl.ctx.Err() == nil {
		c.parking.Store(true)
		return 0, io.EOF
	}
	// net/http sets the deadline of the request it reads next.
	_ = c.Conn.SetReadDeadline(c.idleSince.Add(c.srv.idleTimeout))
	if n > 0 {
		c.mu.Lock()
		c.fr.feed(b[:n])
		c.mu.Unlock()
	}
	return n, err
}

func (c *h1Conn) Close() error {
	if c.parking.Load() {
		c.park()
		return nil
	}
	var err error
	if c.stuck.Load() {
		err = closeUnderTLS(c.Conn)
	} else {
		err = c.Conn.Close()
	}
	c.closeOnce.Do(func() {
		c.unhook()
		if c.onClose != nil {
			c.onClose()
		}
	})
	return err
}

// unhook ends what watches c for its flow: the gone watch and the
// AfterFunc on the flow's context (which would keep c alive as long as
// that context).
func (c *h1Conn) unhook() {
	c.goneRemove()
	c.up.mu.Lock()
	if c.up.flowStop != nil {
		c.up.flowStop()
	}
	c.up.mu.Unlock()
}

// closeUnderTLS closes the connection under c's TLS session, with no
// close_notify alert; c when it has none.
func closeUnderTLS(c net.Conn) error {
	for {
		switch v := c.(type) {
		case *tls.Conn:
			return v.NetConn().Close()
		case *peekedConn:
			c = v.Conn
		case interface{ NetConn() net.Conn }: // a capture's tap
			c = v.NetConn()
		default:
			return c.Close()
		}
	}
}

// CloseWrite half-closes the underlying connection when it can.
func (c *h1Conn) CloseWrite() error { return closeWrite(c.Conn) }

func pathOf(target string) string {
	if i := strings.Index(target, "://"); i >= 0 {
		rest := target[i+3:]
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			target = rest[j:]
		} else {
			target = "/"
		}
	}
	if i := strings.IndexByte(target, '?'); i >= 0 {
		target = target[:i]
	}
	return target
}
