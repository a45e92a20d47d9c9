//go:build unix && !linux

package mitm

import (
	"errors"
	"syscall"
)

// peekEmpty reports whether the socket fd is open with nothing to read:
// one non-blocking peek of a byte (Linux makes it a raw call, in
// sysconn_linux.go).
func peekEmpty(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK)
}
