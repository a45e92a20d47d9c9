package mitm

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
)

// targetSplitHostPortRef is splitHostPort as it was before its fast path
// for a host without a port: net.SplitHostPort on every host.
func targetSplitHostPortRef(h string) (string, uint16) {
	if host, p, err := net.SplitHostPort(h); err == nil {
		if n, err := strconv.ParseUint(p, 10, 16); err == nil {
			return strings.ToLower(host), uint16(n)
		}
		var n uint16
		if _, err := fmt.Sscanf(p, "%d", &n); err == nil {
			return strings.ToLower(host), n
		}
		return strings.ToLower(host), 0
	}
	return strings.ToLower(strings.Trim(h, "[]")), 0
}

func TestTargetSplitHostPort(t *testing.T) {
	for _, h := range []string{"", "api.test", "API.Test", "api.test:8443", "198.19.254.2", "198.19.254.2:443",
		"[::1]", "[::1]:443", "::1", "[fe80::1%eth0]:80", "api.test:", "api.test:+80", "api.test:99999", "[api.test]"} {
		host, port := splitHostPort(h)
		wantHost, wantPort := targetSplitHostPortRef(h)
		if host != wantHost || port != wantPort {
			t.Errorf("splitHostPort(%q) = %q, %d; want %q, %d", h, host, port, wantHost, wantPort)
		}
	}
	// The usual Host header, without a port, costs no allocation.
	if n := testing.AllocsPerRun(100, func() { splitHostPort("198.19.254.2") }); n != 0 {
		t.Errorf("splitHostPort of a host without a port: %v allocations, want 0", n)
	}
}

func FuzzTargetSplitHostPort(f *testing.F) {
	for _, h := range []string{"api.test", "api.test:8443", "[::1]:443", "[::1]", "A.B:0x10", "x:"} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, h string) {
		host, port := splitHostPort(h)
		wantHost, wantPort := targetSplitHostPortRef(h)
		if host != wantHost || port != wantPort {
			t.Errorf("splitHostPort(%q) = %q, %d; want %q, %d", h, host, port, wantHost, wantPort)
		}
	})
}
