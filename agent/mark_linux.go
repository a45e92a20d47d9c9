package agent

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// MarkControl returns a net.Dialer / net.ListenConfig Control function
// that sets SO_MARK to mark on the socket before it connects or binds, so
// the hooks never redirect it (the proxy's upstream dialer uses it). The
// mark exempts a socket only when it is connected from the agent's own
// cgroup (the one Start ran in); selected workloads are refused the mark
// (EPERM, event reason mark_forged).
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set SO_MARK %#x: %w", mark, serr)
		}
		return nil
	}
}
