package policy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// FuzzBodyScan: however a body is cut into pieces, the scanner releases
// exactly as many bytes as it got, and every byte the whole-body scan
// redacts is redacted in the pieces too: splitting never lets a secret
// through.
func FuzzBodyScan(f *testing.F) {
	for _, s := range []string{
		`{"k":"` + awsKeyID + `"}`,
		"api_key=Zx9Qm2Lp8Rt4Vn6Wb1Ks&x=" + githubToken,
		pemKey + "\n" + jwtToken,
		"token: " + openAIKey + " and " + anthKey,
	} {
		f.Add([]byte(s), uint16(7), uint16(3))
	}
	in := Redactor()
	f.Fuzz(func(t *testing.T, body []byte, cut1, cut2 uint16) {
		whole := bytes.Clone(body)
		in.Scan(whole, InBody, true)
		a, b := int(cut1)%(len(body)+1), int(cut2)%(len(body)+1)
		a, b = min(a, b), max(a, b)
		s := in.NewBodyScan(nil)
		var out []byte
		for _, p := range [][]byte{body[:a], body[a:b], body[b:]} {
			r, fb := s.Write(bytes.Clone(p))
			if fb != nil {
				t.Fatalf("block finding from a redactor: %v", fb)
			}
			out = append(out, r...)
		}
		r, _ := s.Close()
		out = append(out, r...)
		if len(out) != len(body) {
			t.Fatalf("released %d bytes of %d", len(out), len(body))
		}
		for i := range body {
			if whole[i] != body[i] && out[i] == body[i] {
				t.Fatalf("byte %d redacted in the whole body but not when cut at %d and %d:\nwhole %q\ncut   %q", i, a, b, whole, out)
			}
		}
	})
}

// FuzzDetectors: no input makes a detector panic, and redaction keeps
// the length.
func FuzzDetectors(f *testing.F) {
	files, _ := filepath.Glob("testdata/content/*.json")
	for _, p := range files {
		b, _ := os.ReadFile(p)
		f.Add(b)
	}
	f.Add([]byte(pemKey))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----"))
	in := Redactor()
	f.Fuzz(func(t *testing.T, b []byte) {
		n := len(b)
		in.Scan(b, InHeaders, true)
		if len(b) != n {
			t.Fatal("length changed")
		}
	})
}

// BenchmarkBodyScan: throughput of the body scanner with every detector
// redacting, over ordinary JSON API traffic (no secret) in reads of 32KiB
// (and 4KiB: the window held back is scanned again by each read).
func BenchmarkBodyScan(b *testing.B) {
	files, _ := filepath.Glob("testdata/content/*.json")
	var corpus []byte
	for _, p := range files {
		c, _ := os.ReadFile(p)
		corpus = append(corpus, c...)
	}
	body := bytes.Repeat(corpus, (1<<20)/len(corpus)+1)[:1<<20]
	in := Redactor()
	for _, read := range []int{32 << 10, 4 << 10} {
		b.Run(fmt.Sprintf("reads=%dKiB", read>>10), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				s := in.NewBodyScan(nil)
				for off := 0; off < len(body); off += read {
					s.Write(body[off:min(len(body), off+read)])
				}
				s.Close()
			}
		})
	}
}
