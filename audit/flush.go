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
// through, and Flush and Close return once what was written before them
// is in the file.
//
// The write to the file happens after mu is let go (wmu keeps the
// writes in their order): other writers fill the next buffer meanwhile
// instead of waiting out the system call.
type FlushWriter struct {
	mu     sync.Mutex
	wmu    sync.Mutex // the writes to w, one at a time, in order
	w      io.Writer
	every  time.Duration
	buf    []byte
	spare  []byte // a written buffer, for the next one
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

// writesWhole tells JSONLog that each Write is kept whole here, so it
// needs no lock of its own around it.
func (f *FlushWriter) writesWhole() {}

// Write keeps p whole for the next flush; it returns the error of a flush
// it had to do at once.
func (f *FlushWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		f.wmu.Lock()
		defer f.wmu.Unlock()
		return f.w.Write(p)
	}
	f.buf = append(f.buf, p...)
	if len(f.buf) >= flushBytes {
		return len(p), f.flushUnlock()
	}
	if !f.armed {
		f.armed = true
		f.timer.Reset(f.every)
	}
	f.mu.Unlock()
	return len(p), nil
}

// Flush writes what is held now, and returns once what was written to
// f before it is in the file.
func (f *FlushWriter) Flush() error {
	f.mu.Lock()
	err := f.flushUnlock()
	f.waitWrites()
	return err
}

// waitWrites returns once a write to the file under way has ended.
func (f *FlushWriter) waitWrites() {
	f.wmu.Lock()
	//lint:ignore SA2001 an empty critical section: waiting for the holder is the point
	f.wmu.Unlock()
}

// flushUnlock takes what is held, lets mu go and writes it; mu held on
// entry. wmu is taken before mu goes, so writes keep the order of the
// buffers.
func (f *FlushWriter) flushUnlock() error {
	f.armed = false
	b := f.buf
	if len(b) == 0 {
		f.mu.Unlock()
		return nil
	}
	f.buf, f.spare = f.spare, nil
	f.wmu.Lock()
	f.mu.Unlock()
	_, err := f.w.Write(b)
	f.wmu.Unlock()
	if cap(b) <= 4*flushBytes { // a large logged body: don't keep its room
		f.mu.Lock()
		if f.spare == nil {
			f.spare = b[:0]
		}
		f.mu.Unlock()
	}
	return err
}

// Close writes what is held and stops holding; it does not close the
// writer underneath.
func (f *FlushWriter) Close() error {
	f.mu.Lock()
	f.closed = true
	f.timer.Stop()
	err := f.flushUnlock()
	f.waitWrites() // a flush under way ends before the file may be closed
	return err
}
