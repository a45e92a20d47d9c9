package policy

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"
)

// naiveHits searches each keyword on its own, as the detectors did
// before the prefilter.
func naiveHits(b []byte) []hit {
	var out []hit
	for i := range b {
		for k, kw := range anchors.kws {
			if bytes.HasPrefix(b[i:], kw) {
				out = append(out, hit{pos: int32(i), kw: uint8(k), det: anchors.det[k], n: uint8(len(kw))})
			}
		}
	}
	return out
}

// TestAnchorsFindEveryKeyword: the one pass finds each keyword at every
// offset, next to any other, as a search per keyword does.
func TestAnchorsFindEveryKeyword(t *testing.T) {
	longest := 0
	for _, kw := range anchors.kws {
		longest = max(longest, len(kw))
	}
	if longest != maxKeyword {
		t.Fatalf("the longest keyword has %d bytes, maxKeyword says %d", longest, maxKeyword)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, kw := range anchors.kws {
		for off := range 5 {
			b := append(bytes.Repeat([]byte("x"), off), kw...)
			b = append(b, anchors.kws[rng.IntN(len(anchors.kws))]...)
			if got, want := anchors.find(b, 0, nil), naiveHits(b); !slices.Equal(got, want) {
				t.Fatalf("%q: hits %v, want %v", b, got, want)
			}
		}
	}
}

// FuzzAnchors: on any input, the pass finds what a search per keyword
// finds, and resuming from any offset finds the rest.
func FuzzAnchors(f *testing.F) {
	f.Add([]byte("ghp_gho_xoxAKIAkeyKEYpasswPRIVATE KEY-----eyJ"), uint16(5))
	f.Add([]byte("tokentokenTokensecretSecretglpat-sk-ant-"), uint16(0))
	f.Fuzz(func(t *testing.T, b []byte, from uint16) {
		want := naiveHits(b)
		if got := anchors.find(b, 0, nil); !slices.Equal(got, want) {
			t.Fatalf("hits %v, want %v", got, want)
		}
		n := int(from) % (len(b) + 1)
		var rest []hit
		for _, h := range want {
			if int(h.pos) >= n {
				rest = append(rest, h)
			}
		}
		if got := anchors.find(b, n, nil); !slices.Equal(got, rest) {
			t.Fatalf("from %d: hits %v, want %v", n, got, rest)
		}
	})
}
