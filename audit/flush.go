package audit

import (
	"io"
	"sync"
	"time"
)

// FlushWriter holds what is written to it for up to an interval and
// writes it to the file underneath in one write: the audit log's
// audit.flushInterval, the trade nginx's access_log buffer= flush= and
// Envoy's access-log flush interval make. A record reaches the file at
// most the interval after it was written, or at once when 64 KiB are
// waiting; a crash loses at most that much. Each Write is kept whole, so
// lines written one per Write (JSONLog, CombinedLog) never split or
// interleave. Close writes what is left; writes after Close go straight
// through.
type FlushWriter struct {
	mu     sync.Mutex
	w      io.Writer
	every  time.Duration
	buf    []byte
	timer  *time.Timer
	armed  bool // the timer will flush buf
	closed bool
}

// flushBytes is how much a FlushWriter holds before writing at once.
const flushBytes = 64 << 10

// NewFlushWriter buffers writes to w for up to every (> 0).
func NewFlushWriter(w io.Writer, every time.Duration) *FlushWriter {
	f := &FlushWriter{w: w, every: every}
	f.timer = time.AfterFunc(time.Hour, func() { _ = f.Flush() })
	f.timer.Stop()
	return f
}

// Write keeps p whole for the next flush; it returns the error of a flush
// it had to do at once.
func (f *FlushWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return f.w.Write(p)
	}
	f.buf = append(f.buf, p...)
	if len(f.buf) >= flushBytes {
		return len(p), f.flushLocked()
	}
	if !f.armed {
		f.armed = true
		f.timer.Reset(f.every)
	}
	return len(p), nil
}

// Flush writes what is held now.
func (f *FlushWriter) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.flushLocked()
}

func (f *FlushWriter) flushLocked() error {
	f.armed = false
	if len(f.buf) == 0 {
		return nil
	}
	_, err := f.w.Write(f.buf)
	if cap(f.buf) > 4*flushBytes { // a large logged body: don't keep its room
		f.buf = nil
	} else {
		f.buf = f.buf[:0]
	}
	return err
}

// Close writes what is held and stops holding; it does not close the
// writer underneath.
func (f *FlushWriter) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	f.timer.Stop()
	return f.flushLocked()
}
