//go:build !unix

package mitm

import "syscall"

// idleOpen cannot peek without blocking here: an idle connection the
// upstream closed is found by the request sent on it (and retried when
// that is safe).
func idleOpen(syscall.RawConn) bool { return true }
