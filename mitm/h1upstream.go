package mitm

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"
)

// h1Pool is an upstream pool's HTTP/1.1 connections for the requests the
// handler's own goroutine can carry (h1Syncable): it writes the request on
// an idle connection with one flush, reads the response head
// (readResponse: http.ReadResponse's result, its common shape parsed from
// the buffer) and streams the body back itself; the connection goes
// back to the pool once the body has been read to its end and both sides
// allow another request. net/http's Transport costs a writeLoop and a
// readLoop goroutine per connection and two goroutine handoffs per
// request; this path costs none. Everything else (a body of unknown or
// large length, which the upstream may answer before it has all of it;
// protocol upgrades; trailers to send) keeps to the pool's Transport.
//
// A connection taken from the pool is first checked for a close (or any
// byte) the upstream sent after its last response (usable), which
// net/http's readLoop would have noticed; a request that fails on a
// reused connection before any response byte came is sent once more on a
// new connection when it is safe to repeat (idempotent, no body), as
// net/http's Transport does.
type h1Pool struct {
	dial        func(context.Context) (net.Conn, error)
	maxIdle     int
	idleTimeout time.Duration

	mu    sync.Mutex
	idle  []*h1UpConn // oldest first; taken from the end
	sweep *time.Timer // closes connections idle for idleTimeout
}

// h1UpConn is one upstream connection of an h1Pool.
type h1UpConn struct {
	conn   net.Conn
	raw    syscall.RawConn // the TCP socket under conn, for the idle check; nil when there is none
	sys    *sysConn        // the socket, when a request's write may wait for its answer's read (heldSocket)
	peek   func(fd uintptr) bool
	abort  func()        // abortNow, made once
	open   bool          // what peek found
	br     *bufio.Reader // reads through lim
	lim    limitedReader
	bw     *bufio.Writer
	idleAt time.Time
	reused bool // it served a request before
	// deadline: a read deadline may be set, at deadlineAt (the
	// response header timeout of its last request, or the past one of
	// the check for bytes held inside a crypto/tls not over a
	// recordConn). An idle connection keeps it: clearing it costs a call
	// per request, the next request keeps it when it ends late enough
	// (headerSlack), and the checks before reuse clear one that has
	// passed.
	deadline   bool
	deadlineAt time.Time
}

// h1SyncMaxBody is the largest request body (of declared length) sent on
// the handler's goroutine: written whole before the response is read, it
// fits the socket buffers, so an upstream that answers early still gets
// it and its answer is read.
const h1SyncMaxBody = 64 << 10

// h1Syncable reports whether r can be sent on the handler's goroutine: no
// WebSocket upgrade, no trailers, and no body or a short one of declared
// length.
func h1Syncable(r *http.Request, body io.ReadCloser) bool {
	if r.Method == http.MethodConnect || len(r.Trailer) > 0 || wantsWebSocket(r.Header) {
		return false
	}
	return body == nil || (r.ContentLength > 0 && r.ContentLength <= h1SyncMaxBody)
}

// h1Request is a request as the handler's goroutine writes it upstream.
type h1Request struct {
	r    *http.Request // method, URL and header as the chain left them; read, never changed
	host string        // the Host field
	body io.ReadCloser // nil: none
	n    int64         // body's length
}

func newH1Pool(dial func(context.Context) (net.Conn, error), maxIdle int, idleTimeout time.Duration) *h1Pool {
	return &h1Pool{dial: dial, maxIdle: maxIdle, idleTimeout: idleTimeout}
}

// errUnexpected1xx is an upstream's 101 to a request that asked for no
// protocol switch, or more informational answers than net/http allows.
var errUnexpected1xx = errors.New("unexpected informational response")

// errPeerNotQuiet: a pooled connection's upstream sent something or
// closed before a held request went out, which was not sent
// (sysConn.holdWrites): the request may go on another connection,
// whatever its method.
var errPeerNotQuiet = errors.New("upstream sent data or closed before the request")

// errAnsweredUnasked: an answer came from bytes crypto/tls had read
// before a held request went out, which was not sent.
var errAnsweredUnasked = errors.New("upstream answered before the request was sent")

// roundTrip sends req and returns the response head; its body streams
// from the connection, which returns to the pool when the body has been
// read to its end (or is closed when the body is closed before). ctx
// ending aborts the exchange at any point. rht bounds the wait for the
// response head after the request was written (0: no bound); when it
// passes, the error wraps errResponseHeaderTimeout.
func (hp *h1Pool) roundTrip(ctx context.Context, req *h1Request, rht time.Duration) (*http.Response, error) {
	replayable := req.body == nil && idempotent(req.r)
	fresh := false
	for {
		uc, err := hp.get(ctx, fresh, req)
		if err != nil {
			return nil, err
		}
		resp, retry, err := hp.exchange(ctx, uc, req, rht)
		if err == nil {
			return resp, nil
		}
		if errors.Is(err, errPeerNotQuiet) {
			continue // nothing went out, and uc is closed: the next idle connection, or a new one
		}
		if !retry || !uc.reused || !replayable || fresh {
			return nil, err
		}
		fresh = true // the upstream closed it while idle: once more, on a new connection
	}
}

// idempotent is net/http's test for a request it may send again.
func idempotent(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, a := r.Header["Idempotency-Key"]
	_, b := r.Header["X-Idempotency-Key"]
	return a || b
}

// exchange writes req on uc and reads the response head. On an error, uc
// is closed, and retry says whether nothing of a response came and the
// upstream (not a timeout or ctx) ended it.
func (hp *h1Pool) exchange(ctx context.Context, uc *h1UpConn, req *h1Request, rht time.Duration) (*http.Response, bool, error) {
	if uc.abort == nil {
		uc.abort = uc.abortNow
	}
	stop := watchRequest(ctx, req.r, uc.abort)
	fail := func(err error, retry bool) (*http.Response, bool, error) {
		stop()
		uc.conn.Close()
		if ctx.Err() != nil {
			return nil, false, context.Cause(ctx)
		}
		return nil, retry && !isTimeout(err), err
	}
	// The request goes out with the first read of its answer, one
	// system call fewer (sendsHeld), after the check that a pooled
	// connection's upstream is quiet, which usable left to this send.
	held := uc.sendsHeld(req)
	if held {
		uc.sys.holdWrites(uc.reused)
	}
	err := writeH1Request(uc.bw, req)
	if err == nil {
		err = uc.bw.Flush()
	}
	if err != nil {
		return fail(fmt.Errorf("write request: %w", err), true)
	}
	if rht > 0 {
		// The head is awaited until rht after now at least, and no more
		// than headerSlack(rht) later: a deadline already set in that
		// span (the last request's, on a busy connection) is kept.
		want, slack := time.Now().Add(rht), headerSlack(rht)
		if !uc.deadline || uc.deadlineAt.Before(want) || uc.deadlineAt.Sub(want) > slack {
			uc.deadlineAt = want.Add(slack)
			_ = uc.conn.SetReadDeadline(uc.deadlineAt)
			uc.deadline = true
		}
	} else if uc.deadline {
		_ = uc.conn.SetReadDeadline(time.Time{})
		uc.deadline = false
	}
	// An abort that came before the deadline above was overwritten by it:
	// the request's end must still end the wait (it is done before abort
	// runs, so checking after setting the deadline misses none).
	if ctx.Err() != nil {
		return fail(ctx.Err(), false)
	}
	uc.lim.n = maxResponseHeaderBytes // the head (and any 1xx) must fit; lifted below
	if _, err := uc.br.Peek(1); err != nil {
		if isTimeout(err) && ctx.Err() == nil {
			err = fmt.Errorf("%w: %w", errResponseHeaderTimeout, err)
		}
		return fail(fmt.Errorf("read response: %w", err), true)
	}
	if held && uc.sys.unsent() {
		// crypto/tls answered from bytes it held: the request never
		// reached the socket (a fresh connection's upstream that spoke
		// first; a pooled one's held bytes are found by usable).
		return fail(fmt.Errorf("read response: %w", errAnsweredUnasked), false)
	}
	var resp *http.Response
	var hr *h1Response
	for n := 0; ; n++ {
		resp, hr, err = readResponse(uc.br, req.r)
		if err != nil {
			if isTimeout(err) && ctx.Err() == nil {
				err = fmt.Errorf("%w: %w", errResponseHeaderTimeout, err)
			}
			return fail(fmt.Errorf("read response: %w", err), false)
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return fail(fmt.Errorf("read response: %w %d", errUnexpected1xx, resp.StatusCode), false)
		}
		if resp.StatusCode >= 200 {
			break
		}
		// 1xx: dropped, as net/http's Transport does (five at most); the
		// final answer follows.
		if n == 5 {
			return fail(fmt.Errorf("read response: %w %d (the sixth)", errUnexpected1xx, resp.StatusCode), false)
		}
	}
	uc.lim.n = noLimit
	// The header deadline must not cut a body short; a body that is
	// already buffered whole reads nothing more, and the next request
	// sets the deadline anew.
	if uc.deadline && (resp.ContentLength < 0 || int64(uc.br.Buffered()) < resp.ContentLength) {
		_ = uc.conn.SetReadDeadline(time.Time{})
		uc.deadline = false
		if ctx.Err() != nil { // stop's deadline must stay
			return fail(ctx.Err(), false)
		}
	}
	var b *h1Body
	if hr != nil {
		b = &hr.body // allocated with it
	} else {
		b = new(h1Body)
	}
	*b = h1Body{hp: hp, uc: uc, body: resp.Body, stop: stop, keep: !resp.Close}
	if resp.Body == http.NoBody {
		b.release(true)
	} else {
		resp.Body = b
	}
	return resp, false, nil
}

// headerSlack is how much later than the response header timeout rht
// the wait for a response head may end: a read deadline set for one
// request serves those the connection carries in the next headerSlack
// too, so that a busy connection does not set one per request (each
// takes the poller's lock and moves a timer). An eighth of rht, a
// second at most: the 504 for a default 60 s timeout comes within 61 s.
func headerSlack(rht time.Duration) time.Duration { return min(rht/8, time.Second) }

// watchRequest runs abort when the request's context ends, until the
// returned stop, which reports false when abort ran. A request an
// HTTP/1.1 client connection of the proxy's carries, with net/http's
// context for it (no deadline of its own), is watched by that connection
// (h1Conn.watch), which costs no allocation; any other by
// context.AfterFunc.
func watchRequest(ctx context.Context, r *http.Request, abort func()) func() bool {
	if r.ProtoMajor == 1 {
		if f, _ := ctx.Value(flowKey{}).(*flow); f != nil && f.h1 != nil {
			if _, ok := ctx.Deadline(); !ok {
				return f.h1.watch(ctx, abort)
			}
		}
	}
	return context.AfterFunc(ctx, abort)
}

// abortNow ends any read or write on the connection at once (the
// request's context ended); the connection is not reused after.
func (uc *h1UpConn) abortNow() { _ = uc.conn.SetDeadline(aLongTimeAgo) }

// aLongTimeAgo is a deadline in the past: it ends a blocked read or write
// at once.
var aLongTimeAgo = time.Unix(1, 0)

// h1Body is a response body read from a pooled connection: at its end the
// connection goes back to the pool; closed before, the connection is
// closed. Not for concurrent use.
type h1Body struct {
	hp   *h1Pool
	uc   *h1UpConn // nil once released
	body io.ReadCloser
	stop func() bool // ends the watch on the request's context
	keep bool        // the response allows another request
	err  error       // after release: what Read returns
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.uc == nil {
		return 0, b.err
	}
	n, err := b.body.Read(p)
	switch {
	case err == io.EOF:
		b.release(true)
	case err != nil:
		// Cut short (a timeout, the stream's end before the declared
		// length): where the next response would start is not known.
		b.release(false)
		b.err = err
	}
	return n, err
}

// Close ends the body; one not read to its end closes its connection
// (net/http's body would read the rest first).
func (b *h1Body) Close() error {
	if b.uc != nil {
		b.release(false)
	}
	return nil
}

func (b *h1Body) release(atEOF bool) {
	uc := b.uc
	b.uc, b.err = nil, io.EOF
	if !atEOF {
		b.err = errBodyClosed
	}
	// stop is false when the context ended and its deadline is set.
	// Bytes after the response's end are not the answer to any request
	// of ours: the connection can't be trusted with another (those
	// crypto/tls holds are looked for before reuse, in usable).
	if !b.stop() || !atEOF || !b.keep || uc.br.Buffered() > 0 {
		uc.conn.Close()
		return
	}
	b.hp.put(uc)
}

// usable reports whether an idle connection may carry a request: the
// upstream neither closed it nor sent anything since its last response,
// into the socket (idleOpen) or inside crypto/tls (a record that carried
// the body's end and more); quietLater: the socket's part is left to the
// held request's send (sendsHeld). The socket is peeked first: an expired
// deadline fails that peek, so a header deadline that has passed while
// the connection was idle is cleared before.
//
// What crypto/tls holds shows to a read through it that cannot wait: it
// answers from what it holds, else reads the connection under it. The
// recordConn under a connection Sluice dialed answers that read itself
// (probe: errNothingHeld, no system call); under any other (only tests
// dial one: every upstream dial of Sluice's goes through newUpstreamTLS,
// and a dial that did not would lose the midRecord check below), a read
// deadline in the past makes the socket's read time out at once (not
// sticky in crypto/tls or bufio), and the request sets its own deadline
// after. The start of a record crypto/tls read off the socket with the
// body's last record, its rest still to come, shows to neither: the
// recordConn tells it (midRecord; net/http's Transport would read that
// record as the next response).
func (uc *h1UpConn) usable(now time.Time, quietLater bool) bool {
	if uc.deadline && !now.Before(uc.deadlineAt) {
		_ = uc.conn.SetReadDeadline(time.Time{})
		uc.deadline = false
	}
	if !quietLater && !uc.idleOpen() {
		return false
	}
	if _, ok := uc.conn.(*tls.Conn); !ok {
		return true
	}
	if rc := recordsOf(uc.conn); rc != nil {
		rc.probe = true
		_, err := uc.br.Peek(1)
		// probe is still set when crypto/tls answered from what it holds.
		rc.probe = false
		return err == errNothingHeld && !rc.midRecord() //nolint:errorlint // our own value, passed up unwrapped by crypto/tls and bufio
	}
	_ = uc.conn.SetReadDeadline(aLongTimeAgo)
	uc.deadline, uc.deadlineAt = true, aLongTimeAgo
	_, err := uc.br.Peek(1)
	return err != nil && errors.Is(err, os.ErrDeadlineExceeded)
}

var errBodyClosed = errors.New("read on closed response body")

// get returns an idle connection that is still open for req, else a new
// one; fresh: a new one. A connection that will hold req (sendsHeld)
// leaves the socket's own check to the send (exchange), where it is made.
func (hp *h1Pool) get(ctx context.Context, fresh bool, req *h1Request) (*h1UpConn, error) {
	for !fresh {
		hp.mu.Lock()
		n := len(hp.idle)
		if n == 0 {
			hp.mu.Unlock()
			break
		}
		uc := hp.idle[n-1]
		hp.idle[n-1] = nil
		hp.idle = hp.idle[:n-1]
		hp.mu.Unlock()
		if now := time.Now(); now.Sub(uc.idleAt) < hp.idleTimeout && uc.usable(now, uc.sendsHeld(req)) {
			return uc, nil
		}
		uc.conn.Close()
	}
	c, err := hp.dial(ctx)
	if err != nil {
		return nil, err
	}
	uc := &h1UpConn{conn: c, lim: limitedReader{r: c, n: noLimit}, bw: bufio.NewWriterSize(c, 4<<10)}
	uc.br = bufio.NewReaderSize(&uc.lim, 4<<10)
	uc.raw = rawSocketOf(c)
	uc.sys = heldSocket(c)
	return uc, nil
}

// sendsHeld reports whether req goes out held for the read of its answer
// on uc (sysConn.holdWrites): one without a body, on a socket that can
// hold it. A body is read from the client while the request is written,
// too long a wait between the check that the upstream is quiet and the
// send.
func (uc *h1UpConn) sendsHeld(req *h1Request) bool { return uc.sys != nil && req.body == nil }

// heldSocket is the sysConn under c when c is one, or a TLS client over
// one through a recordConn: wrappers whose Reads all reach the socket,
// so that a held request (sysConn.holdWrites) goes out with the first
// read of its answer. Else nil.
func heldSocket(c net.Conn) *sysConn {
	if tc, ok := c.(*tls.Conn); ok {
		rc, ok := tc.NetConn().(*recordConn)
		if !ok {
			return nil
		}
		c = rc.Conn
	}
	sc, _ := c.(*sysConn)
	return sc
}

// put keeps uc for the next request, or closes it when the pool is full.
func (hp *h1Pool) put(uc *h1UpConn) {
	uc.reused = true
	uc.idleAt = time.Now()
	hp.mu.Lock()
	if len(hp.idle) >= hp.maxIdle {
		hp.mu.Unlock()
		uc.conn.Close()
		return
	}
	hp.idle = append(hp.idle, uc)
	if hp.sweep == nil {
		hp.sweep = time.AfterFunc(hp.idleTimeout, hp.sweepIdle)
	}
	hp.mu.Unlock()
}

// sweepIdle closes the connections idle for idleTimeout and sets itself
// for the next one to expire.
func (hp *h1Pool) sweepIdle() {
	now := time.Now()
	hp.mu.Lock()
	i := 0
	for i < len(hp.idle) && now.Sub(hp.idle[i].idleAt) >= hp.idleTimeout {
		i++
	}
	stale := make([]*h1UpConn, i)
	copy(stale, hp.idle)
	n := copy(hp.idle, hp.idle[i:])
	clear(hp.idle[n:])
	hp.idle = hp.idle[:n]
	if n > 0 {
		hp.sweep.Reset(hp.idle[0].idleAt.Add(hp.idleTimeout).Sub(now))
	} else {
		hp.sweep = nil
	}
	hp.mu.Unlock()
	for _, uc := range stale {
		uc.conn.Close()
	}
}

// closeIdle closes the idle connections; those in use return to the pool
// as usual.
func (hp *h1Pool) closeIdle() {
	hp.mu.Lock()
	idle := hp.idle
	hp.idle = nil
	if hp.sweep != nil {
		hp.sweep.Stop()
		hp.sweep = nil
	}
	hp.mu.Unlock()
	for _, uc := range idle {
		uc.conn.Close()
	}
}

// maxResponseHeaderBytes bounds a response head (with its 1xx answers),
// as the Transport's MaxResponseHeaderBytes does on the other path: an
// upstream sending an endless header line would otherwise grow the
// proxy's memory until the header timeout.
const maxResponseHeaderBytes = 1 << 20

const noLimit = math.MaxInt64

// limitedReader reads from r until n bytes have been read, then fails
// with errResponseHeaderTooLarge; n is noLimit outside a response head.
type limitedReader struct {
	r io.Reader
	n int64
}

var errResponseHeaderTooLarge = fmt.Errorf("upstream response header over %d bytes", maxResponseHeaderBytes)

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errResponseHeaderTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	if l.n != noLimit {
		l.n -= int64(n)
	}
	return n, err
}
