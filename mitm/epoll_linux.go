package mitm

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The proxy's epoll sets (parked connections, park_linux.go; connections
// watched for the client's close while a request is served, gone_linux.go)
// are waited on in Go's netpoller, not on a blocked thread: the set's own
// descriptor is non-blocking and registered with the runtime, and a wait
// is a read of it. Their connections are registered under a token, not
// their descriptor, which may be reused once closed.

// epollSet is what the parked and the watched connection sets keep of
// their epoll instance, under their own lock: it is opened when the first
// connection comes (after a failure, not again before pause) and closed
// by the set's goroutine when it has had none for a while.
type epollSet struct {
	name  string   // in errors: "parked connections"
	ep    *os.File // nil while closed
	epfd  int      // ep's descriptor, valid while ep is open
	token uint64   // of the last connection added
	err   error    // why the set could not be opened last time
	pause time.Time
}

// open opens the set unless the last attempt failed less than
// h1AcceptIdle ago (a process out of descriptors: its connections do
// without it a while), and returns the raw conn its goroutine waits on.
func (e *epollSet) open() (syscall.RawConn, bool) {
	if e.err != nil && time.Now().Before(e.pause) {
		return nil, false
	}
	ep, rc, epfd, err := openEpoll(e.name)
	if err != nil {
		e.err, e.pause = err, time.Now().Add(h1AcceptIdle)
		return nil, false
	}
	e.ep, e.epfd, e.err = ep, epfd, nil
	return rc, true
}

// add registers sock for events under a new token; false when it can't
// be (closed meanwhile, or not a pollable socket).
func (e *epollSet) add(sock syscall.RawConn, events uint32) (uint64, bool) {
	e.token++
	tok := e.token
	ev := tokenEvent(events, tok)
	var cerr error
	if err := sock.Control(func(fd uintptr) { cerr = unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev) }); err != nil || cerr != nil {
		return 0, false
	}
	return tok, true
}

// del takes sock out of the set. Closed sockets leave an epoll set by
// themselves; an open one must leave it to be added again. Control fails
// once it is closed, so a descriptor number reused meanwhile is never
// touched.
func (e *epollSet) del(sock syscall.RawConn) {
	_ = sock.Control(func(fd uintptr) { _ = unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
}

// close closes ep, the instance its goroutine waited on, and forgets it
// unless a newer one replaced it.
func (e *epollSet) close(ep *os.File) {
	if e.ep == ep {
		e.ep, e.epfd = nil, -1
	}
	ep.Close()
}

// openEpoll creates an epoll set, named name in errors, registered with
// the netpoller: the file (its read deadline bounds a wait), its raw
// conn for epollWait, and its descriptor for epoll_ctl.
func openEpoll(name string) (*os.File, syscall.RawConn, int, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("create epoll set of %s: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, nil, 0, fmt.Errorf("set epoll set of %s non-blocking: %w", name, err)
	}
	// Non-blocking: os.NewFile registers it with the runtime's netpoller.
	ep := os.NewFile(uintptr(fd), name)
	rc, err := ep.SyscallConn()
	if err == nil {
		err = ep.SetReadDeadline(time.Time{}) // fails unless the netpoller took it
	}
	if err != nil {
		ep.Close()
		return nil, nil, 0, fmt.Errorf("watch epoll set of %s: %w", name, err)
	}
	return ep, rc, fd, nil
}

// epollWait waits, parked in the netpoller, until the set behind rc has
// events, and fills events with them (n of them). The error is the set
// file's read deadline passing (os.ErrDeadlineExceeded) or a failed wait.
func epollWait(rc syscall.RawConn, events []unix.EpollEvent, name string) (n int, err error) {
	var werr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, werr = unix.EpollWait(int(fd), events, 0)
			if werr != unix.EINTR {
				return n > 0 || werr != nil
			}
		}
	})
	if err == nil && werr != nil {
		err = fmt.Errorf("wait for %s: %w", name, werr)
	}
	return max(n, 0), err
}

// tokenEvent is an epoll registration for events, carrying tok.
func tokenEvent(events uint32, tok uint64) unix.EpollEvent {
	return unix.EpollEvent{Events: events, Fd: int32(uint32(tok)), Pad: int32(uint32(tok >> 32))}
}

// eventToken is the token ev was registered with (tokenEvent).
func eventToken(ev unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
