//go:build unix

package mitm

// idleOpen reports whether an idle upstream connection is still open and
// has nothing to read: an HTTP/1.1 upstream sends nothing unasked, so a
// byte (a TLS close_notify, say) or the end of the stream means it
// closed the connection while it was idle. One non-blocking peek at the
// socket, no wait. Without a socket it reports true.
func (uc *h1UpConn) idleOpen() bool {
	if uc.raw == nil {
		return true
	}
	if uc.peek == nil {
		uc.peek = uc.peekFD
	}
	uc.open = false
	err := uc.raw.Read(uc.peek)
	return err == nil && uc.open
}

func (uc *h1UpConn) peekFD(fd uintptr) bool {
	uc.open = peekEmpty(fd)
	return true // never wait
}
