package mitm

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// sysConn is a TCP connection whose reads and writes are raw system
// calls, made in the poller's callbacks (syscall.RawConn): the socket is
// non-blocking, so a read or write never waits in the kernel, and a
// goroutine with nothing to read, or no room to write, waits in Go's
// poller, deadlines included, as net.TCPConn's would. Errors are the
// ones net.TCPConn's Read and Write return (io.EOF, *net.OpError).
//
// net.TCPConn's Read and Write enter the runtime's system-call state
// around each call. A thread the kernel deschedules inside the call (two
// CPUs shared by clients, the proxy and the upstream) then looks to the
// runtime's monitor (sysmon) like one blocked in it: the monitor takes
// its P and wakes another thread to run it, the first thread finds its P
// gone when the call returns and sleeps, and the monitor, having found
// work, goes on waking every 20 µs instead of backing off to 10 ms.
// Under keep-alive load the monitor's thread alone was 13-17% of the
// proxy's CPU (its ticks in /proc/PID/task), 3-4% with raw calls. A raw
// call keeps its P for the call's few microseconds: the socket never
// blocks it, and a write copies at most the socket's free buffer.
//
// Sockets are wrapped where they enter the proxy: a transparent
// connection in Handle, an explicit one at its accept, an upstream one at
// its dial (Proxy.dialTCP).
type sysConn struct {
	*net.TCPConn
	rc syscall.RawConn
	// held: the bytes written since holdWrites, kept for the next Read
	// to send (sendRead); holding: Writes are kept, not sent; quiet: that
	// Read first checks that the peer sent nothing and did not close.
	// Used by one goroutine at a time, the one that writes a request and
	// then reads its answer (h1Pool.exchange).
	held    []byte
	holding bool
	quiet   bool
}

// maxHeld is the most a held write keeps: more, and what is held goes
// out at once, as any write would. A buffer larger than maxKeptHeld is
// let go once sent.
const (
	maxHeld     = 16 << 10
	maxKeptHeld = 2 << 10
)

// holdWrites keeps the Writes that follow, up to maxHeld bytes, for the
// next Read to send: a request and the wait for its answer in one call
// to the poller, one system call fewer than a write and a read that
// finds nothing yet (sendRead). Only for a read of the answer to what is
// held: bytes the peer sent before it do not wake that Read, the answer
// does. quiet: the Read first peeks at the socket, after the poller's
// reset, so that nothing the peer sends is missed; when the peer has
// sent anything or closed, nothing goes out, what was held is dropped
// and the Read fails with errPeerNotQuiet. Write and ReadFrom keep the
// order with what is held; nothing else that writes may be used while
// holding.
func (c *sysConn) holdWrites(quiet bool) { c.holding, c.quiet = true, quiet }

// unsent reports whether what holdWrites kept is still held: no Read
// reached the socket to send it.
func (c *sysConn) unsent() bool { return c.holding }

// takeHeld ends holding and returns what was held; a buffer larger than
// maxKeptHeld is not kept for the next time (an idle connection keeps
// none).
func (c *sysConn) takeHeld() []byte {
	held := c.held
	c.held, c.holding = held[:0], false
	if cap(held) > maxKeptHeld {
		c.held = nil
	}
	return held
}

// sysCall is one call in progress: its buffer and result, and the
// poller's callbacks, bound once (a closure per call would be three
// allocations: itself, n and errno). Calls take one from sysCalls, so
// that an idle connection keeps none, and a Read and a Write at once
// (which net.Conn allows) each have their own.
type sysCall struct {
	p     []byte
	n     int
	errno syscall.Errno
	stuck bool // a write the kernel took nothing of, with no error
	read  func(fd uintptr) bool
	write func(fd uintptr) bool
	// sendRead's: out is sent before the read (nil once it all went),
	// sent counts it, werrno is the send's error; quiet: peek first,
	// loud: the peek found the peer's bytes or its close.
	out         []byte
	sent        int
	werrno      syscall.Errno
	quiet, loud bool
	sendRead    func(fd uintptr) bool
}

var sysCalls = sync.Pool{New: func() any {
	s := &sysCall{}
	s.read, s.write, s.sendRead = s.readFD, s.writeFD, s.sendReadFD
	return s
}}

// newSysConn is c with raw reads and writes when c is a TCP connection,
// else c.
func newSysConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &sysConn{TCPConn: tc, rc: rc}
}

// maxRW is the most one call reads or writes (as internal/poll's).
const maxRW = 1 << 30

func (c *sysConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return c.TCPConn.Read(p) // no call: what net says of the connection
	}
	if c.holding {
		return c.sendRead(p)
	}
	s := sysCalls.Get().(*sysCall)
	s.p, s.n, s.errno = p[:min(len(p), maxRW)], 0, 0
	err := c.rc.Read(s.read)
	n, errno := s.n, s.errno
	s.p = nil
	sysCalls.Put(s)
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (c *sysConn) Write(p []byte) (int, error) {
	if c.holding {
		if len(c.held)+len(p) <= maxHeld {
			c.held = append(c.held, p...)
			return len(p), nil
		}
		if err := c.releaseHeld(); err != nil {
			return 0, err
		}
	}
	s := sysCalls.Get().(*sysCall)
	s.p, s.n, s.errno, s.stuck = p, 0, 0, false
	err := c.rc.Write(s.write)
	n, errno, stuck := s.n, s.errno, s.stuck
	s.p = nil
	sysCalls.Put(s)
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case stuck:
		return n, c.opError("write", io.ErrUnexpectedEOF)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// ReadFrom is net.TCPConn's (splice, or a copy straight to the socket),
// after what holdWrites kept has gone out: bytes copied in must not
// overtake it (bufio.Writer hands a large body to ReadFrom).
func (c *sysConn) ReadFrom(r io.Reader) (int64, error) {
	if c.holding {
		if err := c.releaseHeld(); err != nil {
			return 0, err
		}
	}
	return c.TCPConn.ReadFrom(r)
}

// releaseHeld ends holding and sends what was held, waiting for room as
// Write does.
func (c *sysConn) releaseHeld() error {
	held := c.takeHeld()
	if len(held) == 0 {
		return nil
	}
	_, err := c.Write(held)
	return err
}

// sendRead sends what holdWrites kept, then reads p, in one call to the
// poller: RawRead resets the socket's readiness before its first
// callback, so the peer's answer, which can only come after the send,
// wakes the wait that follows it; without the send inside, a read that
// finds nothing (EAGAIN) would have to come first. A send the socket
// can't take whole at once is finished as Write finishes one (deadline
// and all), and the read made the usual way.
func (c *sysConn) sendRead(p []byte) (int, error) {
	held := c.takeHeld()
	if len(held) == 0 {
		return c.Read(p)
	}
	s := sysCalls.Get().(*sysCall)
	s.p, s.n, s.errno = p[:min(len(p), maxRW)], 0, 0
	s.out, s.sent, s.werrno, s.quiet, s.loud = held, 0, 0, c.quiet, false
	err := c.rc.Read(s.sendRead)
	n, errno, sent, werrno, loud, tried := s.n, s.errno, s.sent, s.werrno, s.loud, s.out == nil || s.sent > 0
	s.p, s.out = nil, nil
	sysCalls.Put(s)
	switch {
	case loud:
		return 0, c.opError("write", errPeerNotQuiet)
	case werrno != 0:
		return 0, c.opError("write", os.NewSyscallError("write", werrno))
	case err != nil && !tried:
		return 0, c.opError("write", err) // closed, or a deadline past, before anything was sent
	case err != nil:
		return 0, c.opError("read", err)
	case sent < len(held):
		if _, err := c.Write(held[sent:]); err != nil {
			return 0, err
		}
		return c.Read(p)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readFD is one read of s.p into n or errno; false (wait for the
// socket) while there is nothing to read.
func (s *sysCall) readFD(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&s.p[0])), uintptr(len(s.p)))
		switch e {
		case 0:
			s.n = int(n)
			raceReadDone(s.p, s.n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		s.errno = e
		return true
	}
}

// writeFD writes s.p from s.n on, counting in s.n; false (wait for
// room) when the socket's buffer is full before the end.
func (s *sysCall) writeFD(fd uintptr) bool {
	var full bool
	s.n, s.errno, s.stuck, full = writeFrom(fd, s.p, s.n)
	return !full
}

// sendReadFD sends s.out, then, once it all went, waits for s.p's read
// (false) and reads it as readFD does. With quiet, a peek comes first: a
// byte or the end of the stream ends the call (true, loud) with nothing
// sent. A send the socket's buffer cuts short, or that fails, ends the
// call (true) with s.sent and s.werrno for sendRead to finish or report.
func (s *sysCall) sendReadFD(fd uintptr) bool {
	if s.out == nil {
		return s.readFD(fd)
	}
	if s.quiet {
		s.quiet = false
		if !peekEmpty(fd) {
			s.loud = true
			return true
		}
	}
	var full, stuck bool
	s.sent, s.werrno, stuck, full = writeFrom(fd, s.out, s.sent)
	switch {
	case stuck:
		s.werrno = syscall.EPIPE // as Write's io.ErrUnexpectedEOF, but a send's
		return true
	case full || s.werrno != 0:
		return true
	}
	s.out = nil
	return false
}

// writeFrom writes p from n on with raw write calls until the end, the
// socket's buffer is full (full), a call fails (errno) or takes nothing
// without an error (stuck); n counts what went.
func writeFrom(fd uintptr, p []byte, n int) (_ int, errno syscall.Errno, stuck, full bool) {
	raceWriteStart()
	for n < len(p) {
		q := p[n:min(len(p), n+maxRW)]
		w, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&q[0])), uintptr(len(q)))
		switch e {
		case 0:
			if w == 0 {
				return n, 0, true, false
			}
			raceWriteDone(q, int(w))
			n += int(w)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return n, 0, false, true
		default:
			return n, e, false, false
		}
	}
	return n, 0, false, false
}

// opError is err as net.TCPConn's Read and Write give it: a *net.OpError
// naming op, the connection's addresses and the cause (a deadline's
// os.ErrDeadlineExceeded, net.ErrClosed, or the system call's error),
// where RawConn's own names its op "raw-read" or "raw-write".
func (c *sysConn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok { //nolint:errorlint // RawConn's own wrapping, one level
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// peekEmpty reports whether the socket fd is open with nothing to read:
// one non-blocking peek of a byte, a raw call as sysConn's.
func peekEmpty(fd uintptr) bool {
	var b [1]byte
	_, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1, syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return e == syscall.EAGAIN
}
