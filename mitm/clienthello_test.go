package mitm

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// captureClientHello returns the bytes crypto/tls sends first for cfg.
func captureClientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		c := tls.Client(a, cfg)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_ = c.Handshake()
	}()
	_ = b.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReaderSize(b, peekBufferSize)
	if _, err := peekClientHello(br); err != nil {
		t.Fatalf("peek: %v", err)
	}
	out, _ := br.Peek(br.Buffered())
	return append([]byte(nil), out...)
}

// splitRecords re-frames one ClientHello record as records of at most n
// bytes of handshake data each.
func splitRecords(rec []byte, n int) []byte {
	body := rec[5:]
	var out []byte
	for len(body) > 0 {
		k := min(n, len(body))
		out = append(out, 0x16, rec[1], rec[2], byte(k>>8), byte(k))
		out = append(out, body[:k]...)
		body = body[k:]
	}
	return out
}

type helloCase struct {
	name string
	cfg  *tls.Config
	want clientHello
}

var helloCases = []helloCase{
	{"sni-alpn-h2", &tls.Config{ServerName: "API.Example.com", NextProtos: []string{"h2", "http/1.1"}}, clientHello{SNI: "api.example.com", ALPN: []string{"h2", "http/1.1"}}},
	{"sni-only", &tls.Config{ServerName: "x.test"}, clientHello{SNI: "x.test"}},
	{"ip-no-sni", &tls.Config{ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}}, clientHello{ALPN: []string{"http/1.1"}}},
	{"tls12-only", &tls.Config{ServerName: "old.test", MaxVersion: tls.VersionTLS12, NextProtos: []string{"acme-tls/1"}}, clientHello{SNI: "old.test", ALPN: []string{"acme-tls/1"}}},
}

func TestParseClientHelloFromCryptoTLS(t *testing.T) {
	for _, tc := range helloCases {
		t.Run(tc.name, func(t *testing.T) {
			b := captureClientHello(t, tc.cfg)
			for _, in := range [][]byte{b, splitRecords(b, 100), splitRecords(b, 1)} {
				got, need, err := parseClientHello(in)
				if err != nil || need != 0 {
					t.Fatalf("parse: need %d, %v", need, err)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("got %+v, want %+v", got, tc.want)
				}
				// Every strict prefix asks for more bytes.
				for _, cut := range []int{0, 3, 5, len(in) / 2, len(in) - 1} {
					if _, need, err := parseClientHello(in[:cut]); !errors.Is(err, errNeedMore) || need <= cut {
						t.Fatalf("prefix %d: need %d err %v", cut, need, err)
					}
				}
			}
		})
	}
}

func TestParseClientHelloRejects(t *testing.T) {
	good := captureClientHello(t, &tls.Config{ServerName: "a.test"})
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"not handshake", []byte{0x17, 3, 1, 0, 1, 0}, "not handshake"},
		{"not tls version", []byte{0x16, 2, 0, 0, 1, 0}, "is not TLS"},
		{"zero length", []byte{0x16, 3, 1, 0, 0}, "out of range"},
		{"huge record", []byte{0x16, 3, 1, 0xff, 0xff}, "out of range"},
		{"server hello", []byte{0x16, 3, 1, 0, 4, 2, 0, 0, 0}, "not ClientHello"},
		{"empty body", []byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0}, "truncated"},
		{"garbage body", []byte{0x16, 3, 1, 0, 8, 1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef}, "truncated"},
		{"bad sni byte", bytes.Replace(good, []byte("a.test"), []byte("a\x00test"), 1), "invalid byte"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parseClientHello(tc.in)
			if err == nil || errors.Is(err, errNeedMore) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one containing %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "parse client hello: ") {
				t.Fatalf("err %q lacks the action prefix", err)
			}
		})
	}
}

func FuzzParseClientHello(f *testing.F) {
	for _, tc := range helloCases {
		b := captureClientHello(f, tc.cfg)
		f.Add(b)
		f.Add(splitRecords(b, 50))
	}
	f.Add([]byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Add(rawHello(10, 0x0a0a, 63, 64, 10))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, need, err := parseClientHello(b)
		if errors.Is(err, errNeedMore) {
			if need <= len(b) {
				t.Fatalf("need %d with %d bytes in hand", need, len(b))
			}
			return
		}
		if err != nil {
			return
		}
		if h.SNI != strings.ToLower(h.SNI) || strings.HasSuffix(h.SNI, ".") || len(h.SNI) > 253 {
			t.Fatalf("SNI %q not normalized", h.SNI)
		}
		for _, p := range h.ALPN {
			if p == "" {
				t.Fatal("empty ALPN protocol")
			}
		}
		// Extra bytes after a complete hello change nothing.
		h2, _, err2 := parseClientHello(append(append([]byte(nil), b...), 0x17, 3, 3))
		if err2 != nil || !reflect.DeepEqual(h, h2) {
			t.Fatalf("trailing bytes changed the result: %+v %v", h2, err2)
		}
	})
}

func FuzzFramer(f *testing.F) {
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"), 7)
	f.Add([]byte("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), 1)
	f.Add([]byte("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"), 3)
	f.Add([]byte("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"), 5)
	f.Add([]byte("GET / HTTP/1.1\r\nExpect: foo\r\n\r\nPOST / HTTP/1.1\r\nexpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"), 4)
	f.Fuzz(func(t *testing.T, b []byte, step int) {
		if step <= 0 {
			step = 1
		}
		// Feeding in pieces gives the same heads as feeding at once.
		whole, parts := newFramer(), newFramer()
		whole.feed(b)
		for i := 0; i < len(b); i += step {
			parts.feed(b[i:min(i+step, len(b))])
		}
		if !reflect.DeepEqual(whole.heads, parts.heads) || whole.state != parts.state {
			t.Fatalf("split feeding differs: %+v vs %+v", whole.heads, parts.heads)
		}
		if len(whole.heads) > 64 || len(whole.line) > maxTrackedLine {
			t.Fatal("framer grew past its bounds")
		}
	})
}

func TestFramer(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    string
		heads []headInfo
	}{
		{"two requests with a body", "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
			[]headInfo{{size: 39, method: "POST", target: "/a"}, {size: 28, method: "GET", target: "/b"}}},
		{"chunked then next", "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\nGET /d HTTP/1.1\r\n\r\n",
			[]headInfo{{size: 48, method: "POST", target: "/c"}, {size: 19, method: "GET", target: "/d"}}},
		{"both", "POST /e HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			[]headInfo{{size: 67, both: true, method: "POST", target: "/e"}}},
		{"upgrade stops", "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
			[]headInfo{{size: 40, method: "GET", target: "/ws"}}},
		{"HTTP/1.0 with Transfer-Encoding: faulty framing, stops", "POST /f HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /g HTTP/1.1\r\n\r\n",
			[]headInfo{{size: 48, te10: true, method: "POST", target: "/f"}}},
		{"HTTP/1.0 with Content-Length", "POST /h HTTP/1.0\r\nContent-Length: 3\r\n\r\nabcGET /i HTTP/1.0\r\n\r\n",
			[]headInfo{{size: 39, method: "POST", target: "/h"}, {size: 19, method: "GET", target: "/i"}}},
		{"an expectation net/http answers 417: the first Expect field's, trimmed", "GET /j HTTP/1.1\r\nexpect:  foo \t\r\nExpect: 100-continue\r\n\r\n",
			[]headInfo{{size: 57, expect: "foo", method: "GET", target: "/j"}}},
		{"100-continue in any case, among others: none", "POST /k HTTP/1.1\r\nExpect: bar, 100-CONTINUE\r\nContent-Length: 0\r\n\r\n",
			[]headInfo{{size: 66, method: "POST", target: "/k"}}},
		{"a first Expect field that is empty: none", "GET /l HTTP/1.1\r\nExpect:\r\nExpect: foo\r\n\r\n",
			[]headInfo{{size: 41, method: "GET", target: "/l"}}},
		{"Accept, as long a name, is not Expect", "GET /m HTTP/1.1\r\nAccept: foo\r\n\r\n",
			[]headInfo{{size: 32, method: "GET", target: "/m"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFramer()
			f.feed([]byte(tc.in))
			if !reflect.DeepEqual(f.heads, tc.heads) {
				t.Fatalf("heads %+v, want %+v", f.heads, tc.heads)
			}
		})
	}
}

// TestWriteFuzzCorpus regenerates testdata/fuzz/FuzzParseClientHello from
// crypto/tls when SLUICE_UPDATE_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("SLUICE_UPDATE_CORPUS") != "1" {
		t.Skip("set SLUICE_UPDATE_CORPUS=1 to regenerate the corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParseClientHello")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) {
		s := "go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range helloCases {
		b := captureClientHello(t, tc.cfg)
		write(tc.name, b)
		write(tc.name+"-split", splitRecords(b, 64))
		write(tc.name+"-truncated", b[:len(b)/2])
	}
	write("garbage-body", []byte{0x16, 3, 1, 0, 8, 1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef})
	write("http", []byte("GET / HTTP/1.1\r\n\r\n"))
	fdir := filepath.Join("testdata", "fuzz", "FuzzFramer")
	if err := os.MkdirAll(fdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range []string{
		"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
		"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
	} {
		c := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\nint(%d)\n", strconv.Quote(s), i+1)
		if err := os.WriteFile(filepath.Join(fdir, fmt.Sprintf("seed-%d", i)), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// rawHello is one ClientHello record whose extensions have the given
// types, each with empty data.
func rawHello(types ...int) []byte {
	body := []byte{3, 3}
	body = append(body, make([]byte, 32)...) // random
	body = append(body, 0, 0, 2, 0x13, 0x01) // no session id; one suite
	body = append(body, 1, 0)                // null compression
	var exts []byte
	for _, t := range types {
		exts = append(exts, byte(t>>8), byte(t), 0, 0)
	}
	body = append(body, byte(len(exts)>>8), byte(len(exts)))
	body = append(body, exts...)
	msg := append([]byte{handshakeClientHello, 0, byte(len(body) >> 8), byte(len(body))}, body...)
	return append([]byte{recordTypeHandshake, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
}

// TestParseClientHelloDuplicateExtension: an extension type twice is
// refused (RFC 8446 section 4.2), whether a registered one or a GREASE or
// private one, and distinct types are not mistaken for duplicates.
func TestParseClientHelloDuplicateExtension(t *testing.T) {
	for _, tc := range []struct {
		name  string
		types []int
		dup   int // -1: none
	}{
		{"distinct", []int{10, 13, 43, 51, 63, 64, 0x0a0a, 0xfe0d}, -1},
		{"supported_groups twice", []int{10, 13, 10}, 10},
		{"type 63 twice", []int{63, 64, 63}, 63},
		{"type 64 twice", []int{63, 64, 64}, 64},
		{"GREASE twice", []int{0x0a0a, 10, 0x0a0a}, 0x0a0a},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, need, err := parseClientHello(rawHello(tc.types...))
			if tc.dup < 0 {
				if err != nil || need != 0 {
					t.Fatalf("need %d, err %v; want a parsed hello", need, err)
				}
				return
			}
			if want := fmt.Sprintf("duplicate extension %d", tc.dup); err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("err %v, want one containing %q", err, want)
			}
		})
	}
}
