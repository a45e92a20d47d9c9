package agent

import "testing"

func comm(s string) (c [16]int8) {
	for i := range min(len(s), 15) {
		c[i] = int8(s[i])
	}
	return c
}

// An event's comm is interned: the same bytes give the same name, and the
// names held stay bounded.
func TestCommNames(t *testing.T) {
	m := commNames{}
	if got := m.name(comm("python3")); got != "python3" {
		t.Fatalf("name %q, want python3", got)
	}
	if got := m.name(comm("curl")); got != "curl" || len(m) != 2 {
		t.Fatalf("name %q with %d held, want curl and 2", got, len(m))
	}
	for i := range maxCommNames + 10 {
		c := comm("w")
		c[1], c[2] = int8('a'+i%26), int8('a'+i/26%26)
		c[3] = int8('a' + i/676)
		m.name(c)
	}
	if len(m) > maxCommNames {
		t.Errorf("%d names held, want at most %d", len(m), maxCommNames)
	}
	if got := m.name(comm("python3")); got != "python3" {
		t.Errorf("name after clearing %q, want python3", got)
	}
}
