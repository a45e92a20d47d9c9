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
	"net/url"
	"runtime/debug"
	"strconv"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/sluicehq/sluice/audit"
)

// The first request of an explicit connection. Most connections to the
// explicit listener carry one request, a CONNECT, and then its tunnel.
// Served by net/http's server, each took a 4 KiB read and a 4 KiB write
// buffer from net/http's pools, which a hijacked connection never gives
// back, so every tunnel left them, its conn's state and its response's
// 2 KiB buffer behind for the collector (the proxy's resident size is
// its heap's peak while connections are opened: `idle-h2`). A first
// request that is a CONNECT of the plain shape (readConnect) is read
// here with a pooled buffer and served through the same chain; its
// tunnel takes over the socket, and an answer that is not one (403,
// 407, 502) is written here, after which the next request is read here
// the same way (a client answering a 407 with its credentials sends its
// CONNECT again). Anything else goes to net/http's server with every
// byte read (h1Conn.next): health probes, absolute-form requests,
// malformed or unusual heads, which it answers as before. That is known
// at the first line that says so (connectScan on the lines so far), as
// net/http's server answers a malformed line at once.

// acceptLoop accepts the listener's connections for as long as it can,
// giving each its slot and flow (wrap) and serving its first request
// (serveFirst); its end, the listener's error, goes to Accept, and
// loopDone is closed.
func (l *explicitListener) acceptLoop() {
	defer close(l.loopDone)
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if temporaryAccept(err) && l.ctx.Err() == nil {
				// As net/http's Serve: wait and try again (out of
				// descriptors for a moment, an aborted handshake).
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				l.p.errLog.Debug("explicit proxy: accept failed; retrying", audit.KeyError, err.Error())
				select {
				case <-time.After(delay):
					continue
				case <-l.ctx.Done():
				}
			}
			// Not a net.Error: net/http's Serve returns it, not retries.
			l.errc <- fmt.Errorf("accept: %w", err)
			return
		}
		delay = 0
		if hc := l.admit(newSysConn(c)); hc != nil {
			l.wg.Add(1) // the first request's goroutine, done before ServeExplicit returns
			go func() {
				defer l.wg.Done()
				l.serveFirst(hc)
			}()
		}
	}
}

// temporaryAccept reports whether an accept error is one net/http's
// Serve waits out: one that says it is temporary (EMFILE, ENFILE,
// ECONNABORTED, ETIMEDOUT and the like).
func temporaryAccept(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

// Accept is the connections net/http's server serves, in order, and
// then the accept loop's error.
func (l *explicitListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errc:
		l.errc <- err // for the next Accept too
		return nil, err
	}
}

// toStd hands hc to net/http's server.
func (l *explicitListener) toStd(hc *h1Conn) {
	select {
	case l.conns <- hc:
	case <-l.served: // net/http's server has returned
		hc.Close()
	}
}

// serveFirst serves hc's first request when it is a plain CONNECT, and
// hands hc to net/http's server otherwise. A CONNECT answered with the
// connection kept open (a 407 the client answers with its credentials,
// as browsers, Java and .NET do) is followed here too: the next request
// is read the same way once its first byte came, and goes to net/http's
// server only when it is not a plain CONNECT.
func (l *explicitListener) serveFirst(hc *h1Conn) {
	defer func() {
		// As net/http's server: a panic ends the connection, not the
		// process (one in the chain was logged and recorded there).
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler { //nolint:errorlint // sentinel panic value
				l.p.log.Error("panic serving an explicit connection", audit.KeyClient, hc.RemoteAddr().String(),
					audit.KeyPanic, fmt.Sprint(v), audit.KeyStack, string(debug.Stack()))
			}
			hc.Close()
		}
	}()
	for l.serveHead(hc) {
		// As between requests under net/http, the next one has
		// idleTimeout to begin.
		if !l.awaitNext(hc) {
			hc.Close()
			return
		}
	}
}

// serveHead reads a request head of hc (what hc.next holds first, then
// the socket) and serves it when it is a plain CONNECT; else hc goes to
// net/http's server with every byte read. true: the CONNECT was
// answered, not tunneled, and hc stays open, with what the client sent
// after it in hc.next.
func (l *explicitListener) serveHead(hc *h1Conn) (answered bool) {
	br := fastReaders.Get().(*bufio.Reader)
	// Not through hc's framer: it sees what net/http reads (hc.next).
	br.Reset(nextReader{hc})
	release := func() {
		if br != nil {
			br.Reset(nil)
			fastReaders.Put(br)
			br = nil
		}
	}
	defer release()
	stop := context.AfterFunc(l.ctx, func() { hc.Close() })
	_ = hc.Conn.SetReadDeadline(time.Now().Add(l.p.cfg.HandshakeTimeout.D()))
	head, err := peekHead(br, l.p.cfg.MaxHeaderBytes)
	if !stop() {
		return false // closed: the proxy stops
	}
	if err != nil && err != errNotConnect && br.Buffered() == 0 { //nolint:errorlint // our own value
		// Silent or gone before a byte: closed without an answer, as
		// net/http's server does.
		hc.Close()
		return false
	}
	var r *http.Request
	if err == nil {
		r = readConnect(head)
	}
	if r == nil {
		// Not a plain CONNECT (known as soon as a line says so), or
		// too slow or cut short: net/http's server reads it from the
		// start (what br holds, then what hc.next still does), and
		// then the error that ended the wait here (a timeout: its 400
		// to a line cut short, and its record).
		rest, _ := br.Peek(br.Buffered())
		hc.next = append(bytes.Clone(rest), hc.next...)
		if err != nil && err != errNotConnect { //nolint:errorlint // our own value
			hc.nextErr = err
		}
		release()
		_ = hc.Conn.SetReadDeadline(time.Time{})
		l.toStd(hc)
		return false
	}
	_, _ = br.Discard(len(head))
	_ = hc.Conn.SetReadDeadline(time.Time{})
	r.RemoteAddr = hc.RemoteAddr().String()
	r = r.WithContext(context.WithValue(l.ctx, flowKey{}, hc.fl))
	w := &connectWriter{hc: hc, br: br, header: http.Header{}}
	br = nil // the writer's now: back to the pool by Hijack or answer
	if !l.serveConnect(w, r) {
		return false
	}
	if !w.answer(r) {
		hc.Close()
		return false
	}
	return true
}

// nextReader reads what hc.next holds (bytes read off the socket after
// the last request), then the socket itself, past hc's framer.
type nextReader struct{ hc *h1Conn }

func (r nextReader) Read(b []byte) (int, error) {
	if len(r.hc.next) > 0 {
		return r.hc.readNext(b), nil
	}
	return r.hc.Conn.Read(b)
}

// awaitNext waits up to idleTimeout for the first byte of the request
// after an answered CONNECT, unless it came already; false when none
// came (the client closed, or the wait ended). No buffer is held.
func (l *explicitListener) awaitNext(hc *h1Conn) bool {
	if len(hc.next) > 0 {
		return true
	}
	stop := context.AfterFunc(l.ctx, func() { hc.Close() })
	defer stop()
	_ = hc.Conn.SetReadDeadline(time.Now().Add(l.p.cfg.IdleTimeout.D()))
	var one [1]byte
	n, _ := hc.Conn.Read(one[:])
	_ = hc.Conn.SetReadDeadline(time.Time{})
	if n == 0 {
		return false
	}
	hc.next = one[:]
	return l.ctx.Err() == nil
}

// serveConnect runs r through the flow's chain; false when the tunnel
// took the connection (or a panic ended it).
func (l *explicitListener) serveConnect(w *connectWriter, r *http.Request) (answered bool) {
	defer func() {
		if v := recover(); v != nil {
			// flow.ServeHTTP logged and recorded it (and turned it into
			// http.ErrAbortHandler): the connection ends, as under
			// net/http's server.
			w.release()
			w.hc.Close()
			answered = false
		}
	}()
	w.hc.fl.ServeHTTP(w, r)
	return !w.hijacked
}

// connectWriter is the ResponseWriter of a CONNECT served by serveFirst:
// the tunnel hijacks it; an answer is held and written by answer.
type connectWriter struct {
	hc       *h1Conn
	br       *bufio.Reader // the pooled buffer the head was read with, and what followed it
	header   http.Header
	status   int
	body     []byte
	hijacked bool
}

func (w *connectWriter) Header() http.Header { return w.header }

func (w *connectWriter) WriteHeader(code int) {
	if w.status == 0 && !w.hijacked {
		w.status = code
	}
}

func (w *connectWriter) Write(b []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	w.WriteHeader(http.StatusOK)
	w.body = append(w.body, b...)
	return len(b), nil
}

// release puts the pooled buffer back, with nothing left in it.
func (w *connectWriter) release() {
	if w.br != nil {
		w.br.Reset(nil)
		fastReaders.Put(w.br)
		w.br = nil
	}
}

// rest is what the client sent after its CONNECT, read already.
func (w *connectWriter) rest() []byte {
	if w.br == nil || w.br.Buffered() == 0 {
		return nil
	}
	b, _ := w.br.Peek(w.br.Buffered())
	return bytes.Clone(b)
}

// Hijack gives the connection to the tunnel: a reader with the bytes
// that followed the CONNECT, and a small writer for the answer.
func (w *connectWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked || w.status != 0 {
		return nil, nil, errors.New("hijack CONNECT: answered already")
	}
	w.hijacked = true
	rest := w.rest()
	w.release()
	rd := bufio.NewReaderSize(bytes.NewReader(rest), max(16, len(rest)))
	if len(rest) > 0 {
		_, _ = rd.Peek(len(rest)) // buffered, as net/http's reader would hold them
	}
	return w.hc, bufio.NewReadWriter(rd, bufio.NewWriterSize(w.hc, 64)), nil
}

// answer writes the held answer, and reports whether the connection
// stays open for the next request (read from hc.next, which holds the
// bytes after the CONNECT, then the socket).
func (w *connectWriter) answer(r *http.Request) (keep bool) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	h := w.header
	keep = !r.Close && !headerHasToken(h, "Connection", "close")
	if !keep {
		h.Set("Connection", "close")
	}
	h.Set("Content-Length", strconv.Itoa(len(w.body)))
	if _, ok := h["Date"]; !ok {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	var b bytes.Buffer
	b.Write(appendStatusLine(b.AvailableBuffer(), w.status))
	_ = h.Write(&b)
	b.WriteString("\r\n")
	b.Write(w.body)
	w.hc.next = append(w.rest(), w.hc.next...) // br's, then what br did not take of hc.next
	w.release()
	_ = w.hc.Conn.SetWriteDeadline(time.Now().Add(w.hc.fl.p.cfg.HandshakeTimeout.D()))
	_, err := w.hc.Write(b.Bytes())
	_ = w.hc.Conn.SetWriteDeadline(time.Time{})
	return keep && err == nil
}

// peekHead waits for a whole request head at the start of br that may
// be a plain CONNECT, and returns it (in br's buffer, not consumed).
// errNotConnect as soon as the bytes so far can't begin one (another
// method, a malformed line, a TLS ClientHello), or the head is longer
// than limit bytes or br's buffer: net/http's server answers those as
// soon as it reads them, or refuses the length.
func peekHead(br *bufio.Reader, limit int) ([]byte, error) {
	limit = min(limit, br.Size())
	for n := 1; ; n = br.Buffered() + 1 {
		if n > limit {
			return nil, errNotConnect
		}
		if _, err := br.Peek(n); err != nil {
			return nil, err
		}
		b, _ := br.Peek(br.Buffered())
		if e := headEnd(b); e > 0 {
			if e > limit {
				return nil, errNotConnect
			}
			return b[:e], nil
		}
		if !connectScan(b, true) {
			return nil, errNotConnect
		}
	}
}

// errNotConnect: the head is not one serveFirst serves.
var errNotConnect = errors.New("not a plain CONNECT")

// readConnect is the request of head, a whole request head, when it is
// a CONNECT of the plain shape (connectScan) that http.ReadRequest reads
// whole; else nil.
func readConnect(head []byte) *http.Request {
	if !connectScan(head, false) {
		return nil
	}
	r, exact, err := readHead(head)
	if err != nil || !exact {
		return nil
	}
	return r
}

// connectScan reports whether head, a whole request head, is a CONNECT
// of the plain shape, which net/http's server serves as it is: the
// request line "CONNECT target HTTP/1.1" with a target of visible ASCII
// that is a valid host (and port), not a path, with no %-escape (which
// the URL parser would decode into the host), that the URL parser takes
// (a numeric port, a closed IPv6 bracket); field lines with a name
// of token bytes and a value of visible ASCII, spaces and tabs, each
// ended by CRLF; exactly one Host, a valid one; no Content-Length,
// Transfer-Encoding, Expect, Upgrade or Connection field; at most 64
// field lines. partial: head is the start of one, no whole head yet:
// whether what is there can begin such a head (its whole lines are of
// the shape, a Host may be still to come).
func connectScan(head []byte, partial bool) bool {
	const method = "CONNECT "
	if n := min(len(head), len(method)); string(head[:n]) != method[:n] {
		return false
	}
	i := bytes.IndexByte(head, '\n')
	if i < 0 {
		return partial
	}
	if i < 1 || head[i-1] != '\r' || i < len(method) {
		return false
	}
	target, ok := bytes.CutSuffix(head[len(method):i-1], []byte(" HTTP/1.1"))
	// ValidHostHeader takes no space, control, non-ASCII byte or '/'.
	if !ok || len(target) == 0 || bytes.IndexByte(target, '%') >= 0 || !httpguts.ValidHostHeader(string(target)) {
		return false
	}
	if _, err := url.ParseRequestURI("http://" + string(target)); err != nil {
		return false // as http.ReadRequest parses a CONNECT's target: net/http answers 400 at once
	}
	hosts, fields := 0, 0
	for rest := head[i+1:]; ; {
		j := bytes.IndexByte(rest, '\n')
		if j < 0 && partial {
			return true // the rest of a line to come
		}
		if j < 1 || rest[j-1] != '\r' {
			return false
		}
		line := rest[:j-1]
		rest = rest[j+1:]
		if len(line) == 0 {
			return !partial && len(rest) == 0 && hosts == 1
		}
		if fields++; fields > 64 {
			return false
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || !fastValue(value) {
			return false
		}
		for _, c := range name {
			if !httpguts.IsTokenRune(rune(c)) {
				return false
			}
		}
		switch {
		case equalFoldLower(name, "host"):
			if hosts++; hosts > 1 || !httpguts.ValidHostHeader(string(bytes.Trim(value, " \t"))) {
				return false
			}
		case equalFoldLower(name, "content-length"), equalFoldLower(name, "transfer-encoding"),
			equalFoldLower(name, "expect"), equalFoldLower(name, "upgrade"), equalFoldLower(name, "connection"):
			return false
		}
	}
}

var _ io.Writer = (*connectWriter)(nil)
