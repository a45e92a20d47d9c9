//go:build unix

package mitm

import (
	"errors"
	"syscall"
)

// idleOpen reports whether an idle upstream socket is still open and has
// nothing to read: an HTTP/1.1 upstream sends nothing unasked, so a byte
// (a TLS close_notify, say) or the end of the stream means it closed the
// connection while it was idle. One non-blocking peek, no wait. Without a
// socket (raw is nil) it reports true.
func idleOpen(raw syscall.RawConn) bool {
	if raw == nil {
		return true
	}
	open := false
	err := raw.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		open = errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK)
		return true // never wait
	})
	return err == nil && open
}
