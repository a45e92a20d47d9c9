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
}

var sysCalls = sync.Pool{New: func() any {
	s := &sysCall{}
	s.read, s.write = s.readFD, s.writeFD
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
	raceWriteStart()
	for s.n < len(s.p) {
		q := s.p[s.n:min(len(s.p), s.n+maxRW)]
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&q[0])), uintptr(len(q)))
		switch e {
		case 0:
			if n == 0 {
				s.stuck = true
				return true
			}
			raceWriteDone(q, int(n))
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
