//go:build !linux

package mitm

import "net"

// sysConn is the raw-system-call connection of sysconn_linux.go; elsewhere
// connections keep net's own reads and writes.
type sysConn struct{ *net.TCPConn }

func newSysConn(c net.Conn) net.Conn { return c }

// holdWrites is sysconn_linux.go's; here writes go out as they come.
func (c *sysConn) holdWrites(bool) {}

// unsent is sysconn_linux.go's; here nothing is ever held.
func (c *sysConn) unsent() bool { return false }
