//go:build !unix

package mitm

// idleOpen cannot peek without blocking here: an idle connection the
// upstream closed is found by the request sent on it (and retried when
// that is safe).
func (uc *h1UpConn) idleOpen() bool { return true }
