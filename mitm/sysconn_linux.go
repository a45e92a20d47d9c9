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
type sysConn struct {
	*net.TCPConn
	rc   syscall.RawConn
	r, w sysCall
}

// sysCall is one direction's call in progress: its buffer and result,
// under mu (net.Conn allows a Read and a Write at once, and concurrent
// Reads), and fn, the poller's callback, bound once: a closure per call
// would be three allocations (itself, n, errno).
type sysCall struct {
	mu    sync.Mutex
	p     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

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
	sc := &sysConn{TCPConn: tc, rc: rc}
	sc.r.fn = sc.r.read
	sc.w.fn = sc.w.write
	return sc
}

// maxRW is the most one call reads or writes (as internal/poll's).
const maxRW = 1 << 30

func (c *sysConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r := &c.r
	r.mu.Lock()
	r.p, r.n, r.errno = p[:min(len(p), maxRW)], 0, 0
	err := c.rc.Read(r.fn)
	n, errno := r.n, r.errno
	r.p = nil
	r.mu.Unlock()
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
	w := &c.w
	w.mu.Lock()
	w.p, w.n, w.errno = p, 0, 0
	err := c.rc.Write(w.fn)
	n, errno := w.n, w.errno
	w.p = nil
	w.mu.Unlock()
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno == syscall.EIO: // the kernel took nothing and said nothing
		return n, c.opError("write", io.ErrUnexpectedEOF)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// read is one read of s.p into n or errno; false (wait for the socket)
// while there is nothing to read.
func (s *sysCall) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&s.p[0])), uintptr(len(s.p)))
		switch e {
		case 0:
			s.n = int(n)
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

// write writes s.p from s.n on, counting in s.n; false (wait for room)
// when the socket's buffer is full before the end.
func (s *sysCall) write(fd uintptr) bool {
	for s.n < len(s.p) {
		q := s.p[s.n:min(len(s.p), s.n+maxRW)]
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&q[0])), uintptr(len(q)))
		switch e {
		case 0:
			if n == 0 {
				s.errno = syscall.EIO
				return true
			}
			s.n += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.errno = e
			return true
		}
	}
	return true
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
