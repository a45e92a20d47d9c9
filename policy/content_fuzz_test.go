package policy

import (
	"bytes"
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
// redacting, over ordinary JSON API traffic in 32KiB reads.
func BenchmarkBodyScan(b *testing.B) {
	files, _ := filepath.Glob("testdata/content/*.json")
	var corpus []byte
	for _, p := range files {
		c, _ := os.ReadFile(p)
		corpus = append(corpus, c...)
	}
	body := bytes.Repeat(corpus, (1<<20)/len(corpus)+1)[:1<<20]
	in := Redactor()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		s := in.NewBodyScan(nil)
		for off := 0; off < len(body); off += 32 << 10 {
			s.Write(body[off:min(len(body), off+32<<10)])
		}
		s.Close()
	}
}

// FuzzBodyScanFlush: a body cut into pieces, with a pause (Flush) after
// each, is released whole and redacted wherever the whole body's scan
// redacts it: a pause never lets out a byte that a later scan finds in
// a secret.
func FuzzBodyScanFlush(f *testing.F) {
	for _, s := range []string{
		`{"k":"` + awsKeyID + `"}`,
		"api_key=Zx9Qm2Lp8Rt4Vn6Wb1Ks&x=" + githubToken,
		pemKey + "\n" + jwtToken,
		"token: " + openAIKey + " and " + anthKey,
		`{"client_secret"  :  "Zx9Qm2Lp8Rt4Vn6Wb1Ks", "AccountName=acct01;AccountKey=` + azureKey + `"}`,
		"aws_secret_access_key = " + awsSecret + "\nxoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
	} {
		f.Add([]byte(s), uint16(7), uint16(20))
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
			r, _ := s.Write(bytes.Clone(p))
			out = append(out, r...)
			r, _ = s.Flush()
			out = append(out, r...)
		}
		r, _ := s.Close()
		out = append(out, r...)
		if len(out) != len(body) {
			t.Fatalf("released %d bytes of %d", len(out), len(body))
		}
		for i := range body {
			if whole[i] != body[i] && out[i] == body[i] {
				t.Fatalf("byte %d redacted in the whole body but not with pauses at %d and %d:\nwhole %q\npaused %q", i, a, b, whole, out)
			}
		}
	})
}
