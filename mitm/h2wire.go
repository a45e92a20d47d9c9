package mitm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Wire is one HTTP/2 connection's frame reader and the write side
// both of Sluice's HTTP/2 ends share: the upstream client (h2upstream.go)
// and the server for the workload (h2server.go). Frames are written by
// whoever holds the write turn (wturn: the Framer's write side, the HPACK
// encoder and wdl), on that goroutine: a request's or a handler's, not a
// writer goroutine that each frame is handed to. Only the read loop
// reads.
type h2Wire struct {
	conn  net.Conn
	br    *bufio.Reader // what fr reads from
	fr    *http2.Framer
	wturn chan struct{} // capacity 1: held while writing
	henc  *hpack.Encoder
	hbuf  bytes.Buffer
	wdl   time.Time // the write deadline set last
	// stall is how long a write may wait on the peer before it fails
	// (0: forever).
	stall time.Duration
	// What a new Framer is made with (newFramer).
	maxRead, maxHeaderList uint32
	hdec                   *hpack.Decoder
}

// initWire readies w on conn: frames of at most maxRead bytes and header
// lists of at most maxHeaderList (larger ones come Truncated) are read.
func (w *h2Wire) initWire(conn net.Conn, stall time.Duration, maxRead, maxHeaderList uint32) {
	w.conn, w.stall = conn, stall
	w.wturn = make(chan struct{}, 1)
	// A small buffer: a frame header and a short frame come from one read
	// of it; a DATA frame's payload is read past it into the Framer's.
	// Pooled (fastReaders, 4 KiB): one a parked connection let go of
	// (h2park.go) serves a new one, so opening a connection leaves no
	// 4 KiB behind.
	w.br = fastReaders.Get().(*bufio.Reader)
	w.br.Reset(conn)
	w.maxRead, w.maxHeaderList = maxRead, maxHeaderList
	w.hdec = hpack.NewDecoder(4096, nil)
	w.fr = w.newFramer(w.br)
	w.henc = hpack.NewEncoder(&w.hbuf)
}

// newFramer is a Framer on w's connection reading from r, with w's
// limits and HPACK decoder (whose table is the connection's). A new
// one holds no buffer: an old one keeps its largest frame read and
// written. Only between frames, in the write turn.
func (w *h2Wire) newFramer(r io.Reader) *http2.Framer {
	fr := http2.NewFramer(w.conn, r)
	fr.ReadMetaHeaders = w.hdec
	fr.MaxHeaderListSize = w.maxHeaderList
	fr.SetMaxReadFrameSize(w.maxRead)
	fr.SetReuseFrames()
	return fr
}

// lockW takes the write turn and pushes the connection's write deadline
// out to stall (at most once per deadlineSlack: over a coalescing conn
// it is only stored unless a Write waits): a peer that reads nothing for
// that long fails the write, which closes the connection.
func (w *h2Wire) lockW() {
	w.wturn <- struct{}{}
	w.armW()
}

// lockWFor is lockW for one request or stream: it gives up when ctx ends
// or cancel closes (the client left, a timer fired) while another holds
// the turn, and with errResponseHeaderTimeout at headBy (zero: never).
func (w *h2Wire) lockWFor(ctx context.Context, cancel <-chan struct{}, headBy time.Time) error {
	select {
	case <-cancel:
		return errH2Canceled
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case w.wturn <- struct{}{}: // free: no select over three channels
		w.armW()
		return nil
	default:
	}
	var late <-chan time.Time
	if !headBy.IsZero() { // a timer only for a request that waits
		tm := time.NewTimer(time.Until(headBy))
		defer tm.Stop()
		late = tm.C
	}
	select {
	case w.wturn <- struct{}{}:
		w.armW()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-cancel:
		return errH2Canceled
	case <-late:
		return errResponseHeaderTimeout
	}
}

// tryLockW takes the write turn if it is free.
func (w *h2Wire) tryLockW() bool {
	select {
	case w.wturn <- struct{}{}:
		w.armW()
		return true
	default:
		return false
	}
}

func (w *h2Wire) unlockW() { <-w.wturn }

func (w *h2Wire) armW() {
	if w.stall > 0 {
		if t, push := pushDeadline(w.wdl, w.stall); push {
			_ = w.conn.SetWriteDeadline(t)
			w.wdl = t
		}
	}
}

// writeBlock writes a header block as HEADERS and CONTINUATION frames of
// at most maxFrame bytes; in the write turn.
func (w *h2Wire) writeBlock(id uint32, endStream bool, block []byte, maxFrame int) error {
	first := true
	for first || len(block) > 0 {
		chunk := block[:min(len(block), maxFrame)]
		block = block[len(chunk):]
		var err error
		if first {
			err = w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk, EndStream: endStream, EndHeaders: len(block) == 0})
		} else {
			err = w.fr.WriteContinuation(id, len(block) == 0, chunk)
		}
		if err != nil {
			return err
		}
		first = false
	}
	return nil
}

// writeUpdates writes WINDOW_UPDATEs for the connection and stream id (0:
// none); in the write turn.
func (w *h2Wire) writeUpdates(id, streamInc, connInc uint32) error {
	if connInc > 0 {
		if err := w.fr.WriteWindowUpdate(0, connInc); err != nil {
			return err
		}
	}
	if streamInc > 0 {
		return w.fr.WriteWindowUpdate(id, streamInc)
	}
	return nil
}

// h2Peer is what one end (the upstream client's connection, the
// server's) does with the frames its read loop reads.
type h2Peer interface {
	onHeaders(*http2.MetaHeadersFrame) error
	onData(*http2.DataFrame) error
	onReset(*http2.RSTStreamFrame) error
	onSettings(*http2.SettingsFrame) error
	onGoAway(*http2.GoAwayFrame)
	onWindowUpdate(*http2.WindowUpdateFrame) error
	// onStreamError resets the stream a frame was refused on (a
	// malformed head, whose block was decoded whole: HPACK stays in
	// step).
	onStreamError(http2.StreamError) error
	send(func() error) error // frame writes in the write turn
	// awaitFrame is called before a frame is read when nothing is
	// buffered; an error ends the loop with it.
	awaitFrame() error
}

// readFrames reads frames until the connection ends and hands each to
// p; PINGs are answered here. A frame over the size limit, a PUSH_PROMISE
// (push is off on both ends) or an error a handler returns ends the
// loop (a ConnectionError: GOAWAY with its code).
func (w *h2Wire) readFrames(p h2Peer) error {
	for {
		if w.br.Buffered() == 0 {
			if err := p.awaitFrame(); err != nil {
				return err
			}
		}
		f, err := w.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if err := p.onStreamError(se); err != nil {
					return err
				}
				continue
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				return http2.ConnectionError(http2.ErrCodeFrameSize)
			}
			return err
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			err = p.onHeaders(f)
		case *http2.DataFrame:
			err = p.onData(f)
		case *http2.RSTStreamFrame:
			err = p.onReset(f)
		case *http2.SettingsFrame:
			err = p.onSettings(f)
		case *http2.PingFrame:
			if !f.IsAck() {
				data := f.Data
				err = p.send(func() error { return w.fr.WritePing(true, data) })
			}
		case *http2.GoAwayFrame:
			p.onGoAway(f)
		case *http2.WindowUpdateFrame:
			err = p.onWindowUpdate(f)
		case *http2.PriorityFrame:
			if f.StreamDep == f.StreamID { // RFC 9113 5.3.1
				err = p.onStreamError(http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol})
			}
		case *http2.PushPromiseFrame:
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if err != nil {
			return err
		}
	}
}

// ackSettings acknowledges the peer's SETTINGS f, after applying its
// HEADER_TABLE_SIZE to the encoder; in the write turn.
func (w *h2Wire) ackSettings(f *http2.SettingsFrame) error {
	if v, ok := f.Value(http2.SettingHeaderTableSize); ok {
		w.henc.SetMaxDynamicTableSizeLimit(v)
	}
	return w.fr.WriteSettingsAck()
}

// resetEncoder replaces the HPACK encoder with one whose dynamic table is
// empty: what the old one indexed (each second's date, content types,
// upstream fields: about 0.85 KiB under h2load) goes with it. The next
// head tells the peer to empty its copy: a table size update to 0, then
// back to the size the old table had (RFC 7541 4.2), which the peer's
// SETTINGS_HEADER_TABLE_SIZE had already bounded (0 included). In the
// write turn, or with no writer.
func (w *h2Wire) resetEncoder() {
	size := w.henc.MaxDynamicTableSize()
	w.henc = hpack.NewEncoder(&w.hbuf) // its limit, 4096, is not below size
	w.henc.SetMaxDynamicTableSize(0)
	w.henc.SetMaxDynamicTableSize(size)
}

// h2GiveBack is the receive window to give back to the peer now: all
// that was read (or dropped), *unacked, once it reaches half the
// window's size; *window grows by it.
func h2GiveBack(window, unacked *int64, size int64) uint32 {
	if *unacked < size/2 {
		return 0
	}
	inc := *unacked
	*unacked = 0
	*window += inc
	return uint32(inc)
}

// h2Sender is an open stream of either end, as h2ShiftWindows sees it.
type h2Sender interface{ sendWindowOf() *int64 }

func (st *h2SrvStream) sendWindowOf() *int64 { return &st.sendWindow }
func (s *h2UpStream) sendWindowOf() *int64   { return &s.sendWindow }

// h2ShiftWindows is h2Setting's each for one end's open streams: a
// change of INITIAL_WINDOW_SIZE moves every stream's send window by
// delta; false when one goes past 2^31-1.
func h2ShiftWindows[S h2Sender](streams map[uint32]S) func(delta int64) bool {
	return func(delta int64) bool {
		for _, s := range streams {
			w := s.sendWindowOf()
			if *w += delta; *w > h2MaxStreamID {
				return false
			}
		}
		return true
	}
}

// h2Setting applies one of the peer's SETTINGS that both ends read the
// same way to a send side: its windows (the change of INITIAL_WINDOW_SIZE
// goes to every open stream's, through each), MAX_FRAME_SIZE, and
// MAX_HEADER_LIST_SIZE when maxHeaderList is not nil. Values out of
// range are a connection error. The caller holds the lock that guards
// the windows.
func h2Setting(st http2.Setting, initWindow *int64, maxFrame *int, maxHeaderList *uint64, each func(delta int64) bool) error {
	if err := st.Valid(); err != nil {
		return err // MAX_FRAME_SIZE outside 16 KiB-16 MiB, a window over 2^31-1, ENABLE_PUSH not 0 or 1
	}
	switch st.ID {
	case http2.SettingInitialWindowSize:
		delta := int64(st.Val) - *initWindow
		if !each(delta) {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		*initWindow = int64(st.Val)
	case http2.SettingMaxFrameSize:
		*maxFrame = int(st.Val)
	case http2.SettingMaxHeaderListSize:
		if maxHeaderList != nil {
			*maxHeaderList = uint64(st.Val)
		}
	}
	return nil
}
