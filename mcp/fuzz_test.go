package mcp

import (
	"bytes"
	"net/url"
	"strings"
	"testing"
)

// FuzzParse: any body parses or fails without panicking, and a parsed
// tools/call always names its tool.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}`,
		`[{"jsonrpc":"2.0","id":"x","method":"resources/read","params":{"uri":"a://b"}}]`,
		`{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":""}}`,
		`{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"a"}]}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, _, err := Parse(b)
		if err != nil {
			return
		}
		for _, m := range msgs {
			if m.Method == "tools/call" && m.Tool == "" {
				t.Fatalf("tools/call without a tool from %q", b)
			}
			if m.Response {
				_, _, _, _ = FilterTools(b, func(string) bool { return false })
			}
		}
	})
}

// FuzzSSE: the blocks are the same however the stream is split, and
// their lengths add up to the bytes fed up to the last block's end.
func FuzzSSE(f *testing.F) {
	for _, s := range []string{"data: x\n\n", "event: message\r\ndata: {}\r\n\r\n", "\xef\xbb\xbf: c\rdata:a\r\r", "data: a\ndata: b\n\nid: 1\n"} {
		f.Add([]byte(s), uint8(1))
	}
	f.Fuzz(func(t *testing.T, b []byte, split uint8) {
		whole := collect(b, len(b)+1)
		parts := collect(b, int(split)+1)
		if len(whole) != len(parts) {
			t.Fatalf("%d blocks whole, %d split", len(whole), len(parts))
		}
		total := 0
		for i := range whole {
			if whole[i].s != parts[i].s {
				t.Fatalf("block %d: %q whole, %q split", i, whole[i].s, parts[i].s)
			}
			total += whole[i].n
		}
		if total > len(b) {
			t.Fatalf("blocks span %d bytes of %d", total, len(b))
		}
	})
}

type block struct {
	s string
	n int
}

func collect(b []byte, n int) []block {
	s := &SSE{Max: 64}
	var out []block
	for i := 0; i < len(b); i += n {
		s.Feed(b[i:min(i+n, len(b))], func(e *Event) {
			out = append(out, block{e.Type + "\x00" + e.ID + "\x00" + string(bytes.Clone(e.Data)), e.Len})
		})
	}
	return out
}

// FuzzBearerAudience: any Authorization value is read or refused without
// panicking, an audience read is never empty, and a host an audience
// names is one of them or a URL's host.
func FuzzBearerAudience(f *testing.F) {
	for _, s := range []string{
		"Bearer " + jwt(`{"aud":"https://mcp.example.com"}`),
		"Bearer " + jwt(`{"aud":["a","b"]}`),
		"Bearer a.b.c", "Basic x", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJhdWQiOiJ4In0=.c2ln",
	} {
		f.Add(s, "mcp.example.com")
	}
	f.Fuzz(func(t *testing.T, h, host string) {
		aud, ok := BearerAudience(h)
		if ok && len(aud) == 0 {
			t.Fatalf("ok with no audience from %q", h)
		}
		_ = AudienceNames(aud, host)
	})
}

// FuzzParseEndpoint: any endpoint event data parses or fails without
// panicking; a parsed endpoint is a path (and query) a request can carry,
// and parsing it again as a relative reference gives it back.
func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"/messages?sessionId=abc", "messages/?session_id=1", "https://Other.example:8443/m?sessionId=x", "//h/p", "javascript:alert(1)", "/a/../b?x=%zz"} {
		f.Add([]byte(s))
	}
	base, _ := url.Parse("https://mcp.test/v1/sse")
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEndpoint(base, b)
		if err != nil {
			return
		}
		if !strings.HasPrefix(e.RequestURI, "/") {
			t.Fatalf("endpoint %q gives request URI %q", b, e.RequestURI)
		}
		if len(e.RequestURI) > MaxEndpointLen {
			return // escaping lengthened it past what is read
		}
		again, err := ParseEndpoint(base, []byte(e.RequestURI))
		if err != nil || again.RequestURI != e.RequestURI {
			t.Fatalf("endpoint %q: request URI %q reads back as %q, %v", b, e.RequestURI, again.RequestURI, err)
		}
	})
}
