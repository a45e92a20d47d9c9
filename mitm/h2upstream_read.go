package mitm

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/http2"
)

// The HTTP/2 upstream client's read side (h2upstream.go has the
// transport and its connections, h2upstream_stream.go a request's
// stream): one loop per connection reads every frame and hands each to
// its handler here.

// readLoop reads frames until the connection ends, then closes it.
func (c *h2UpConn) readLoop() {
	err := c.readFrames(c)
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		c.sendSoon(func() error { return c.fr.WriteGoAway(0, http2.ErrCode(ce), nil) })
	}
	c.close(fmt.Errorf("read from upstream: %w", err))
}

// onStreamError resets the stream a frame was refused on.
func (c *h2UpConn) onStreamError(se http2.StreamError) error {
	c.resetStream(se.StreamID, se.Code, fmt.Errorf("upstream HTTP/2 stream: %w", se))
	return nil
}

// stream is the open stream id, nil for one that ended or that we reset
// (or that was never opened: a connection error when id is one we never
// used).
func (c *h2UpConn) stream(id uint32) (*h2UpStream, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.streams[id]; s != nil {
		if s.reset {
			return nil, nil // its RST_STREAM is on its way
		}
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
	if s != nil {
		s.failLocked(err)
		s.releaseBufLocked()
	}
	c.mu.Unlock()
	if s != nil {
		s.closeBody()
	}
	_ = c.send(func() error { return c.writeReset(s, id, code) })
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
	vals := make([]string, len(fields)) // each field's first value: one allocation for all
	var trailer http.Header
	for i, hf := range fields {
		key := canonicalH2Key(hf.Name)
		if slices.Contains(h2ConnFields[:], key) {
			continue // dropped
		}
		if key == "Trailer" {
			if trailer == nil {
				trailer = http.Header{}
			}
			for v := range strings.SplitSeq(hf.Value, ",") {
				if v = textproto.TrimString(v); v != "" {
					trailer[http.CanonicalHeaderKey(v)] = nil
				}
			}
			continue
		}
		if vs, ok := header[key]; ok {
			header[key] = append(vs, hf.Value)
		} else {
			vals[i] = hf.Value
			header[key] = vals[i : i+1 : i+1]
		}
	}
	var st string
	if code < len(h2StatusLines) {
		st = h2StatusLines[code]
	}
	if st == "" {
		st = status + " " + http.StatusText(code)
	}
	resp := &http.Response{
		Status: st, StatusCode: code,
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

// h2StatusLines is Response.Status ("200 OK") for each final status
// below 600, made once rather than per response.
var h2StatusLines = func() (s [600]string) {
	for code := 200; code < len(s); code++ {
		s[code] = strconv.Itoa(code) + " " + http.StatusText(code)
	}
	return s
}()

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
	if s != nil && s.reset { // ours, its RST_STREAM on its way: as a closed stream's
		s = nil
	}
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
	if c.closed {
		return 0
	}
	return h2GiveBack(&c.recvWindow, &c.unacked, h2ConnWindow)
}

// sendUpdates sends WINDOW_UPDATEs (writeUpdates) in the write turn.
func (c *h2UpConn) sendUpdates(id, streamInc, connInc uint32) error {
	if streamInc == 0 && connInc == 0 {
		return nil
	}
	return c.send(func() error { return c.writeUpdates(id, streamInc, connInc) })
}

func (c *h2UpConn) onReset(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if s == nil {
		return nil
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
	return nil
}

func (c *h2UpConn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		if st.ID == http2.SettingMaxConcurrentStreams {
			c.maxStreams = min(st.Val, h2StreamsPerConn)
		}
		return h2Setting(st, &c.initWindow, &c.maxFrame, &c.maxHeaderList, h2ShiftWindows(c.streams))
	})
	c.noteRoomLocked() // the stream limit may have changed
	c.cond.Broadcast()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	c.t.signalRoom() // the stream limit may have risen
	return c.send(func() error { return c.ackSettings(f) })
}

// awaitFrame: an upstream connection waits for its frames in the read
// loop.
func (c *h2UpConn) awaitFrame() error { return nil }

func (c *h2UpConn) onGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goAway = true
	c.noteRoomLocked()
	for id, s := range c.streams {
		if id > f.LastStreamID {
			s.failLocked(fmt.Errorf("%w: GOAWAY (%v)", errH2Unprocessed, f.ErrCode))
			c.dropLocked(s)
		}
	}
	c.idleLocked()
	c.mu.Unlock()
	c.t.remove(c) // after goAway is set: a request with an older t.live can't reserve on c
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
