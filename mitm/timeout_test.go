package mitm

import (
	"errors"
	"net"
	"os"
	"testing"
)

// isTimeout tells a read's deadline from other errors, and a deadline's
// error (net/http ends the background read of every request with one)
// costs no allocation.
func TestIsTimeout(t *testing.T) {
	deadline := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{deadline, true},
		{&net.DNSError{Err: "i/o timeout", IsTimeout: true}, true},
		{&net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}, false},
		{errors.New("EOF"), false},
	} {
		if got := isTimeout(tt.err); got != tt.want {
			t.Errorf("isTimeout(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { isTimeout(deadline) }); n != 0 {
		t.Errorf("isTimeout of a deadline allocates %v times", n)
	}
}
