package mitm

import (
	"bufio"
	"bytes"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// throughTransport is what the Transport path sends for the request in
// raw: transportRequest's header changes, written by Request.Write.
func throughTransport(t *testing.T, raw string) ([]byte, bool) {
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		return nil, false
	}
	out := r.Clone(r.Context())
	out.Body = r.Body
	out.RequestURI = ""
	out.Close = false
	if removeHopHeaders(out.Header, true) != "" {
		return nil, false // a WebSocket upgrade never takes the handler's path
	}
	out.Header.Del("Expect")
	out.Header.Del("Trailer")
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header.Set("User-Agent", "")
	}
	if r.ContentLength == 0 {
		out.Body = nil
	}
	var b bytes.Buffer
	if err := out.Write(&b); err != nil {
		t.Fatalf("Request.Write: %v", err)
	}
	return b.Bytes(), true
}

// throughH1 is what writeH1Request sends for it, and whether the request
// takes that path at all.
func throughH1(t *testing.T, raw string) ([]byte, bool) {
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		return nil, false
	}
	var body io.ReadCloser
	if r.ContentLength != 0 {
		body = r.Body
	}
	if !h1Syncable(r, body) {
		return nil, false
	}
	req := &h1Request{r: r, host: r.Host, body: body}
	if body != nil {
		req.n = r.ContentLength
	}
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	if err := writeH1Request(bw, req); err != nil {
		t.Fatalf("writeH1Request: %v", err)
	}
	bw.Flush()
	return b.Bytes(), true
}

// sameRequest parses both and compares what an upstream sees: request
// line, Host, the fields (each field's values in order; fields in any
// order) and the body.
func sameRequest(t *testing.T, want, got []byte) {
	t.Helper()
	parse := func(b []byte) (*http.Request, []byte) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
		if err != nil {
			t.Fatalf("upstream can't parse %q: %v", b, err)
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Fatalf("upstream can't read the body of %q: %v", b, err)
		}
		return r, body
	}
	w, wb := parse(want)
	g, gb := parse(got)
	if w.Method != g.Method || w.RequestURI != g.RequestURI || w.Host != g.Host || w.ContentLength != g.ContentLength ||
		!maps.EqualFunc(w.Header, g.Header, slices.Equal) || !bytes.Equal(wb, gb) {
		t.Fatalf("the upstream sees another request:\nTransport:  %q\nhandler's:  %q", want, got)
	}
}

func TestWriteH1Request(t *testing.T) {
	for _, raw := range []string{
		"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"GET /a%20b/c?q=1&r=%2F HTTP/1.1\r\nHost: api.test:8443\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
		"GET /x HTTP/1.1\r\nHost: api.test\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nProxy-Authorization: Basic eA==\r\nProxy-Foo: 1\r\nTe: trailers, gzip\r\nExpect: 100-continue\r\nUpgrade: h2c\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: te\r\nTe: trailers\r\n\r\n",
		"POST /u HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
		"POST /empty HTTP/1.1\r\nHost: api.test\r\nContent-Length: 0\r\n\r\n",
		"DELETE /d HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"HEAD /h HTTP/1.1\r\nHost: [fe80::1%25eth0]:443\r\nX-Multi: a\r\nX-Multi: b\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"GET http://api.test/abs?x HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"GET /ua HTTP/1.1\r\nHost: api.test\r\nUser-Agent: \r\nUser-Agent: second\r\n\r\n",
	} {
		want, ok := throughTransport(t, raw)
		if !ok {
			t.Fatalf("not a request: %q", raw)
		}
		got, ok := throughH1(t, raw)
		if !ok {
			t.Fatalf("not sent on the handler's goroutine: %q", raw)
		}
		sameRequest(t, want, got)
	}
}

// TestWriteH1RequestRefusesInjection: a header a stage set with a line
// break in it does not become a second field (or request) upstream.
func TestWriteH1RequestRefusesInjection(t *testing.T) {
	r, _ := http.NewRequest("GET", "http://api.test/", nil)
	r.Header.Set("X-Key", "secret\r\nX-Injected: 1")
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	err := writeH1Request(bw, &h1Request{r: r, host: "api.test"})
	bw.Flush()
	if err == nil || strings.Contains(b.String(), "X-Injected") {
		t.Fatalf("error %v, wrote %q", err, b.String())
	}
}

// TestWriteH1RequestRefusesMethodWithTarget: a method that is not a
// token (an HTTP/2 client's :method "GET /admin HTTP/1.1") is not written:
// the upstream would read a target the policy never judged.
func TestWriteH1RequestRefusesMethodWithTarget(t *testing.T) {
	r, _ := http.NewRequest("GET", "http://api.test/public", nil)
	r.Method = "GET /admin HTTP/1.1"
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	err := writeH1Request(bw, &h1Request{r: r, host: "api.test"})
	bw.Flush()
	if err == nil || strings.Contains(b.String(), "/admin") {
		t.Fatalf("error %v, wrote %q", err, b.String())
	}
}

// FuzzWriteH1Request: for any request the server parses, the handler's
// writer and the Transport send the same request.
func FuzzWriteH1Request(f *testing.F) {
	f.Add("GET", "/p?q", "X-A: 1\r\nConnection: x-a\r\n", "")
	f.Add("POST", "/u", "Content-Type: a/b\r\nTe: trailers\r\n", "body")
	f.Add("PUT", "/", "User-Agent: a\r\nProxy-Connection: close\r\n", "")
	f.Fuzz(func(t *testing.T, method, target, fields, body string) {
		if strings.ContainsAny(method+target, " \r\n") || strings.Contains(fields, "\r\n\r\n") || len(body) > h1SyncMaxBody {
			return
		}
		if fields != "" && !strings.HasSuffix(fields, "\r\n") {
			fields += "\r\n"
		}
		raw := method + " " + target + " HTTP/1.1\r\nHost: api.test\r\n" + fields
		if body != "" && !strings.Contains(strings.ToLower(fields), "content-length") && !strings.Contains(strings.ToLower(fields), "transfer-encoding") {
			raw += "Content-Length: " + strconv.Itoa(len(body)) + "\r\n"
		}
		raw += "\r\n" + body
		got, ok := throughH1(t, raw)
		if !ok {
			return
		}
		want, ok := throughTransport(t, raw)
		if !ok {
			t.Fatalf("the handler's path took a request the Transport would upgrade: %q", raw)
		}
		sameRequest(t, want, got)
	})
}
