package ca

import (
	"net/netip"
	"testing"
)

// FuzzNormalizeName checks that any name either fails or normalizes to
// a fixed point that is an IP literal or a lower-case ASCII hostname.
func FuzzNormalizeName(f *testing.F) {
	for _, c := range leafCases {
		f.Add(c.name)
	}
	f.Add("*.example.com")
	f.Add("xn--bcher-kva.example")
	f.Add("fe80::1%eth0")
	f.Fuzz(func(t *testing.T, name string) {
		n, err := NormalizeName(name)
		if err != nil {
			return
		}
		again, err := NormalizeName(n)
		if err != nil || again != n {
			t.Fatalf("NormalizeName(%q) = %q, but NormalizeName(%q) = %q, %v", name, n, n, again, err)
		}
		if _, err := netip.ParseAddr(n); err == nil {
			return
		}
		if len(n) == 0 || len(n) > 253 {
			t.Fatalf("NormalizeName(%q) = %q: bad length", name, n)
		}
		for i := 0; i < len(n); i++ {
			c := n[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
				t.Fatalf("NormalizeName(%q) = %q: byte %q", name, n, c)
			}
		}
	})
}
