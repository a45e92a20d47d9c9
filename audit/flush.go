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
// most the interval after it was written, or at once when flushBytes
// are waiting; a crash loses at most that much. Each Write is kept whole, so
// lines written one per Write (JSONLog, CombinedLog) never split or
// interleave. Close writes what is left; writes after Close go straight
// through, and Flush and Close return once what was written before them
// is in the file.
//
// One goroutine at a time writes to the file, and without mu: the others
// go on filling the next buffer (the writer takes it too when it has
// grown to flushBytes meanwhile). They wait only when flushHold bytes wait
// behind a write under way (a file that has stopped taking writes).
type FlushWriter struct {
	mu      sync.Mutex
	done    sync.Cond // a write to w ended (L: &mu)
	w       io.Writer
	every   time.Duration
	buf     []byte
	spare   []byte // a written buffer, for the next one
	timer   *time.Timer
	armed   bool // the timer will flush buf
	writing bool // a goroutine writes to w: the only one, so writes keep their order
	closed  bool
}

const (
	// flushBytes is how much a FlushWriter holds before writing at once:
	// about 900 of the audit log's lines (590 bytes each), as many lines
	// as nginx's access_log buffer=64k holds of its own (75). Each write
	// is a system call in which the kernel may take the thread off the
	// CPU; Go's monitor (sysmon) then hands the thread's P to another
	// thread and wakes every 20 µs for a while after. At 64 KiB, one
	// write per 110 lines, the monitor's thread was 3% of the proxy's
	// CPU under keep-alive load at 32 connections, at 512 KiB 1-2%.
	flushBytes = 512 << 10
	// flushHold is how much may wait behind a write under way.
	flushHold = 16 * flushBytes
)

// NewFlushWriter buffers writes to w for up to every (> 0).
func NewFlushWriter(w io.Writer, every time.Duration) *FlushWriter {
	f := &FlushWriter{w: w, every: every}
	f.done.L = &f.mu
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
	for f.writing && (f.closed || len(f.buf) >= flushHold) {
		f.done.Wait()
	}
	if f.closed {
		f.buf = append(f.buf, p...) // empty before: Close wrote it all
		return len(p), f.writeOut(true)
	}
	f.buf = append(f.buf, p...)
	if len(f.buf) >= flushBytes && !f.writing {
		return len(p), f.writeOut(false)
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
	for f.writing {
		f.done.Wait()
	}
	return f.writeOut(true)
}

// writeOut writes buf to the file as the one writer, and again while
// what piled up meanwhile is flushBytes or more (all: anything); mu held on
// entry, not writing, let go on return.
func (f *FlushWriter) writeOut(all bool) error {
	f.armed = false
	var err error
	for len(f.buf) > 0 && (all || len(f.buf) >= flushBytes) {
		b := f.buf
		f.buf, f.spare = f.spare, nil
		f.writing = true
		f.mu.Unlock()
		_, werr := f.w.Write(b)
		f.mu.Lock()
		if err == nil {
			err = werr
		}
		if f.spare == nil && cap(b) <= 4*flushBytes { // a large logged body: don't keep its room
			f.spare = b[:0]
		}
	}
	f.writing = false
	f.done.Broadcast()
	if len(f.buf) > 0 && !f.closed { // less than flushBytes came meanwhile: the timer's
		f.armed = true
		f.timer.Reset(f.every)
	}
	f.mu.Unlock()
	return err
}

// Close writes what is held and stops holding; it does not close the
// writer underneath.
func (f *FlushWriter) Close() error {
	f.mu.Lock()
	f.closed = true
	f.timer.Stop()
	for f.writing { // a flush under way ends before the file may be closed
		f.done.Wait()
	}
	return f.writeOut(true)
}
