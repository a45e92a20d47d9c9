package agent

import (
	"testing"
	"time"
)

// The first warning goes out; the others within the interval are held
// back and counted on the next one that goes out.
func TestLogLimitHoldsBackAndCounts(t *testing.T) {
	l := logLimit{every: time.Second}
	t0 := time.Unix(1_700_000_000, 0)
	if held, ok := l.allow(t0); !ok || held != 0 {
		t.Fatalf("first: ok %v held %d, want true 0", ok, held)
	}
	for i := range 999 {
		if _, ok := l.allow(t0.Add(time.Duration(i) * time.Millisecond)); ok {
			t.Fatalf("warning %d within the second let through", i+2)
		}
	}
	if held, ok := l.allow(t0.Add(time.Second)); !ok || held != 999 {
		t.Fatalf("after a second: ok %v held %d, want true 999", ok, held)
	}
	if held, ok := l.allow(t0.Add(3 * time.Second)); !ok || held != 0 {
		t.Fatalf("after a quiet spell: ok %v held %d, want true 0", ok, held)
	}
}
