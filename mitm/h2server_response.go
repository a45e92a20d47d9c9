package mitm

import (
	"fmt"
	"net/http"
	"net/textproto"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// A stream's response on the HTTP/2 server (h2server_stream.go has the
// stream and its request): the http.ResponseWriter, Flusher and what
// http.ResponseController asks for, on the handler's goroutine only;
// the head encoded as x/net's server encodes it, the body within the
// client's windows, the end of the stream.

func (st *h2SrvStream) Header() http.Header { return st.h }

// adoptHeader makes h the response's header map (headerAdopter), while
// the response has none of its own yet.
func (st *h2SrvStream) adoptHeader(h http.Header) bool {
	if st.wroteHeader || len(st.h) > 0 || h == nil {
		return false
	}
	st.h = h
	return true
}

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
			closeConn = closeConn || hasToken(headerGet(h, "Connection"), "close")
			return true
		}
		return slices.Contains(announced, k)
	})
	if cl >= 0 && (allowed || st.status == http.StatusNotModified) { // a 304's is the representation's
		_ = c.henc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(cl, 10)})
	}
	if allowed && len(sniff) > 0 && len(h["Content-Type"]) == 0 && headerGet(h, "Content-Encoding") == "" {
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
