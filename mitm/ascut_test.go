package mitm

import (
	"fmt"
	"io"
	"testing"
)

// asCut finds a size limit's cut through wrapping, and the end of a body
// (every response's) costs no allocation.
func TestAsCut(t *testing.T) {
	cut := &Cut{Reason: "r"}
	if got := asCut(fmt.Errorf("read body: %w", cut)); got != cut {
		t.Errorf("asCut(wrapped cut) = %v, want the cut", got)
	}
	if got := asCut(io.ErrUnexpectedEOF); got != nil {
		t.Errorf("asCut(unexpected EOF) = %v, want nil", got)
	}
	if n := testing.AllocsPerRun(100, func() { asCut(io.EOF) }); n != 0 {
		t.Errorf("asCut(io.EOF) allocates %v times", n)
	}
}
