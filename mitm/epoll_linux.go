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
