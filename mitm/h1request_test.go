package mitm

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"unsafe"
)

// reqCtxKey marks the context the tests give requests, so that a request
// with another context (or none) does not compare equal.
type reqCtxKey struct{}

var reqCtx = context.WithValue(context.Background(), reqCtxKey{}, "req")

// reqView is a parsed request as the server, the stages and the upstream
// write see it: the whole Request, its context (an unexported field)
// included, with the URL followed and the body left out (the loop puts
// its own). err is the parse's error, if any.
type reqView struct {
	req   http.Request
	url   any
	exact bool
	err   string
}

func reqViewOf(req *http.Request, exact bool, err error) reqView {
	if err != nil {
		return reqView{err: err.Error()}
	}
	v := reqView{req: *req, exact: exact}
	if req.URL != nil {
		v.url = *req.URL
	}
	v.req.URL, v.req.Body = nil, nil
	return v
}

// reqStdParse is what the loop did before parseHead had a path of its
// own: http.ReadRequest on the head, then WithContext.
func reqStdParse(head []byte) reqView {
	req, exact, err := readHead(head)
	if err == nil {
		req = req.WithContext(reqCtx)
	}
	return reqViewOf(req, exact, err)
}

// reqSame compares parseHead with http.ReadRequest on head, and
// scanRequest's partial check with ReadRequest on the whole lines of
// head ended there. It reports whether the fast path took head.
func reqSame(t *testing.T, head []byte) bool {
	t.Helper()
	want := reqStdParse(head)
	got := reqViewOf(parseHead(reqCtx, head))
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("%q:\nnet/http: %+v\nours:     %+v", head, want, got)
	}
	sc, taken := scanRequest(head, false)
	if taken {
		req := buildRequest(newReqTemplate(reqCtx), head, &sc)
		if taken = req != nil; !taken && sc.plainPath {
			t.Fatalf("%q: a plain path refused", head)
		}
		if taken && (want.err != "" || !want.exact) {
			t.Fatalf("%q: taken, but net/http: %q (exact %v)", head, want.err, want.exact)
		}
		if taken && (req.Context() != reqCtx || req.Body != http.NoBody) {
			t.Fatalf("%q: context or body not as set", head)
		}
		// What the scan noted must give fastServable the answer that
		// walking the header gives, on this request and on net/http's
		// (no head reaches the loop with a field it would refuse).
		if taken {
			std, _, _ := readHead(head)
			built := fastReqScanBuilt(sc)
			if a, b, c := fastServable(req, &built), fastServable(req, &reqScan{}), fastServable(std, &reqScan{}); a != b || a != c {
				t.Fatalf("%q: fastServable %v with the scan's notes, %v walking the header, %v on net/http's", head, a, b, c)
			}
		}
	}
	// The loop skips the header walk only for a head the scan took.
	var notes, wantNotes reqScan
	if taken {
		wantNotes = fastReqScanBuilt(sc)
	}
	if parseHeadScan(newReqTemplate(reqCtx), head, &notes); notes != wantNotes {
		t.Fatalf("%q: parseHeadScan's notes %+v, want %+v", head, notes, wantNotes)
	}
	// The head in parts, cut after any of its lines: whole lines that
	// partialOK passes without net/http must be ones ReadRequest reads,
	// ended by an empty line.
	for i, c := range head {
		if c != '\n' {
			continue
		}
		lines := head[:i+1]
		if sc, ok := scanRequest(lines, true); ok && sc.plainPath {
			ended := append(bytes.Clone(lines), "\r\n"...)
			if _, _, err := readHead(ended); err != nil {
				t.Fatalf("%q: partial lines passed, but net/http: %v", lines, err)
			}
		}
	}
	return taken
}

// fastReqScanBuilt is sc as parseHeadScan leaves it when buildRequest made
// the request.
func fastReqScanBuilt(sc reqScan) reqScan {
	sc.built = true
	return sc
}

// reqSeeds are request heads of every kind that matters to framing and
// to the request's fields, the smuggling shapes among them.
var reqSeeds = []string{
	// Common clients.
	"GET / HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n\r\n",
	"GET /v1/items?limit=10 HTTP/1.1\r\nHost: api.test\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
	"GET /x HTTP/1.1\r\nHost: api.test\r\nUser-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
	"POST /v1/items HTTP/1.1\r\nHost: api.test\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 13\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\n\r\n",
	"GET /get HTTP/1.1\r\nHost: api.test\r\nUser-Agent: python-requests/2.31.0\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
	"GET /get HTTP/1.1\r\nHost: api.test\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nConnection: keep-alive\r\nUser-Agent: python-httpx/0.27.0\r\n\r\n",
	"POST /v1/items HTTP/1.1\r\nhost: api.test\r\nconnection: keep-alive\r\ncontent-type: application/json\r\naccept: */*\r\naccept-language: *\r\nsec-fetch-mode: cors\r\nuser-agent: node\r\naccept-encoding: gzip, deflate\r\ncontent-length: 13\r\n\r\n",
	"GET /a HTTP/1.1\r\nAccept: application/json, text/plain, */*\r\nUser-Agent: axios/1.6.8\r\nAccept-Encoding: gzip, compress, deflate, br\r\nHost: api.test\r\nConnection: keep-alive\r\n\r\n",
	"GET /a HTTP/1.1\r\nHost: api.test\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 8\r\nI: 9\r\nJ: 10\r\nA: 11\r\n\r\n",
	// Targets and their URL fields.
	"GET /a%20b?x=%zz HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET /a%zzb HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET /a!b'(c)*?q HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET /a!b HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET /a#frag HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET /a?b#frag?c HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET /a? HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET /a?? HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET /? HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET //evil.test/x HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET ///x HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET /a/../b/./c HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET http://api.test/x HTTP/1.1\r\nHost: other.test\r\n\r\n",
	"GET http://api.test/x HTTP/1.1\r\n\r\n",
	"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n",
	"CONNECT /rpc HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"OPTIONS * HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
	"GET  / HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET / HTTP/1.1 \r\nHost: api.test\r\n\r\n",
	"GET /\tHTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET / HTTP/1.2\r\nHost: api.test\r\n\r\n",
	"GET / HTTP/2.0\r\nHost: api.test\r\n\r\n",
	"GET / http/1.1\r\nHost: api.test\r\n\r\n",
	"G(T / HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"get / HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"\r\nGET / HTTP/1.1\r\nHost: api.test\r\n\r\n",
	// Content-Length and Transfer-Encoding.
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length:5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: \t5 \t\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 005\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: +5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: -5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5,5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5 5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 0x5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1_0\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: \r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 9223372036854775807\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 9223372036854775808\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\ncontent-length:  5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: Chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: identity\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding : chunked\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\n Transfer-Encoding: chunked\r\n\r\n",
	"POST / HTTP/1.0\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nTrailer: X-A\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length : 5\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n",
	// Line ends, folding, bytes.
	"GET / HTTP/1.1\nHost: api.test\n\n",
	"GET / HTTP/1.1\r\nHost: api.test\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: 1\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: 1\r\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: a\rb\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: a\r\n b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: a\r\n\tb\r\n\r\n",
	"GET / HTTP/1.1\r\n Host: api.test\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: a\x00b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: a\x7fb\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: a\x01b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: caf\xc3\xa9\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A:\t a \t\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A:\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: a:b: c\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX A: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A : 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\n: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-\x00: 1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nno colon\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nx-a-b: 1\r\nX-A-B: 2\r\nX-a-B: 3\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nuser-agent: u\r\nACCEPT: a\r\nx-Custom-thing: c\r\n1st-field: 1\r\n!#$%&'*+-.^_`|~: t\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-" + strings.Repeat("a", 70) + ": v\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: " + strings.Repeat("v", 5000) + "\r\n\r\n",
	"GET /" + strings.Repeat("p", 5000) + " HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\n" + strings.Repeat("X-A: 1\r\n", 70) + "\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n\r\n",
	// Host.
	"GET / HTTP/1.1\r\n\r\n",
	"GET / HTTP/1.1\r\nHost:\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a.test\r\nhost: b.test\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a.test, b.test\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a.test/x\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n",
	"GET / HTTP/1.1\r\nHOST:   a.test  \r\n\r\n",
	// Versions, Connection, Pragma.
	"GET / HTTP/1.0\r\n\r\n",
	"GET / HTTP/1.0\r\nHost: api.test\r\n\r\n",
	"GET / HTTP/1.0\r\nHost: api.test\r\nConnection: keep-alive\r\n\r\n",
	"GET / HTTP/1.0\r\nHost: api.test\r\nConnection: Keep-Alive, close\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: keep-alive, CLOSE\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: closed\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
	// Fields the fast loop refuses by name, in any case (fastServable).
	"GET / HTTP/1.1\r\nHost: api.test\r\nEXPECT: 100-continue\r\n\r\n",
	"GET / HTTP/1.1\r\nhost: api.test\r\nupgrade: h2c\r\nconnection: Upgrade, HTTP2-Settings\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nHTTP2-Settings: x\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nuPGRADE: websocket\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: ,Keep-Alive ,\t\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: keep-alive\r\nConnection: te\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nExpects: x\r\nUpgrades: y\r\nConnections: z\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: \r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
	"CONNECT /x HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"PRI /x HTTP/1.1\r\nHost: api.test\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nPragma: no-cache\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nPragma: no-cache\r\nCache-Control: max-age=0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nPragma: No-Cache\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: api.test\r\nPragma: x\r\nPragma: no-cache\r\n\r\n",
}

func TestReadRequestMatchesNetHTTP(t *testing.T) {
	for _, s := range reqSeeds {
		reqSame(t, []byte(s))
	}
}

// TestReadRequestFastShape: the common shapes are parsed here (else the
// comparison above would only have compared net/http with itself), and a
// head left to net/http costs the scan no allocation.
func TestReadRequestFastShape(t *testing.T) {
	taken := []string{
		reqSeeds[0], reqSeeds[1], reqSeeds[2], reqSeeds[3], reqSeeds[4], reqSeeds[5], reqSeeds[6], reqSeeds[7], reqSeeds[8],
		"GET /a? HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"GET /a%20b HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"GET //evil.test/x HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 005\r\n\r\n",
		"GET / HTTP/1.0\r\nHost: api.test\r\nConnection: keep-alive\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: api.test\r\nPragma: no-cache\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: api.test\r\nuser-agent: u\r\nACCEPT: a\r\nx-Custom-thing: c\r\n1st-field: 1\r\n!#$%&'*+-.^_`|~: t\r\n\r\n",
	}
	for _, s := range taken {
		if !reqSame(t, []byte(s)) {
			t.Errorf("%q: the fast path did not take it", s)
		}
	}
	for _, s := range []string{
		"GET / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
		"GET http://api.test/x HTTP/1.1\r\nHost: other.test\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: api.test\r\n\r\n",
		"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: +5\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: api.test\r\nTrailer: X-A\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: a\r\n b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: api.test\n\r\n",
		"GET / HTTP/1.1\r\nHost: api.test\r\nX-A: caf\xc3\xa9\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: api.test\r\nX A: 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n\r\n",
	} {
		if reqSame(t, []byte(s)) {
			t.Errorf("%q: the fast path took it", s)
		}
		head := []byte(s)
		if a := testing.AllocsPerRun(10, func() { scanRequest(head, false) }); a != 0 {
			t.Errorf("%q: %v allocations before handing it to net/http", s, a)
		}
	}
	// A common request is one string, the Request with its URL, the
	// header map, the values' slice and the Host: no string per field
	// (the loop makes its template once: newReqTemplate).
	head := []byte(reqSeeds[6])
	tmpl := newReqTemplate(reqCtx)
	var sc reqScan
	if a := testing.AllocsPerRun(100, func() { parseHeadScan(tmpl, head, &sc) }); a > 6 {
		t.Errorf("%v allocations for %q", a, head)
	}
}

// TestReadRequestShares: the strings of a request parsed here are parts
// of one copy of the head, not of the buffer it was read from (which
// the loop reuses).
func TestReadRequestShares(t *testing.T) {
	head := []byte("GET /a?b HTTP/1.1\r\nHost: api.test\r\nX-A: v\r\n\r\n")
	req, _, err := parseHead(reqCtx, head)
	if err != nil {
		t.Fatal(err)
	}
	for i := range head {
		head[i] = 'z'
	}
	if req.Method != "GET" || req.URL.Path != "/a" || req.URL.RawQuery != "b" || req.Host != "api.test" || req.Header.Get("X-A") != "v" {
		t.Fatalf("the request changed with the buffer: %+v", req)
	}
}

// TestReadRequestHostOwnString: the method and the Host, which tables
// that outlive the request keep (a flow's targets, name bindings,
// metrics' series), are strings of their own, not parts of the head's
// copy: a remembered host must not keep a 4 KiB head.
func TestReadRequestHostOwnString(t *testing.T) {
	for _, method := range []string{"GET", "PROPFIND"} {
		head := []byte(method + " /a HTTP/1.1\r\nHost: api.test\r\nCookie: " + strings.Repeat("c", 3000) + "\r\n\r\n")
		req, _, err := parseHead(reqCtx, head)
		if err != nil || req.Method != method {
			t.Fatalf("%s: %v %v", method, req, err)
		}
		// The head's copy: where the Cookie value, a part of it, sits.
		cookie := req.Header.Get("Cookie")
		base := uintptr(unsafe.Pointer(unsafe.StringData(cookie))) - uintptr(bytes.Index(head, []byte(cookie)))
		within := func(s string) bool {
			p := uintptr(unsafe.Pointer(unsafe.StringData(s)))
			return p >= base && p < base+uintptr(len(head))
		}
		if !within(cookie) || !within(req.URL.Path) {
			t.Fatalf("%s: the check does not find the head's copy", method)
		}
		if within(req.Host) {
			t.Errorf("%s: the Host is part of the head's copy", method)
		}
		if within(req.Method) {
			t.Errorf("%s: the method is part of the head's copy", method)
		}
	}
}

// FuzzReadRequest holds parseHead to http.ReadRequest (then WithContext)
// on any bytes: the same request in every field, or the same error; and
// the partial check to what ReadRequest reads.
func FuzzReadRequest(f *testing.F) {
	for _, s := range reqSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		reqSame(t, data)
	})
}

// BenchmarkReqParseHead is the loop's parse of a head, from the buffer
// to a request with its context: net-http is how the loop did it before
// it had a parser of its own (http.ReadRequest, then WithContext).
func BenchmarkReqParseHead(b *testing.B) {
	ctx := context.Background()
	tmpl := newReqTemplate(ctx) // once per run of the loop, as serveFast does
	var sc reqScan
	for _, c := range []struct{ name, head string }{
		{"wrk", reqSeeds[0]},
		{"curl", reqSeeds[1]},
		{"undici", reqSeeds[6]},
	} {
		for _, p := range []struct {
			name  string
			parse func([]byte) (*http.Request, bool, error)
		}{
			{"net-http", func(head []byte) (*http.Request, bool, error) {
				req, exact, err := readHead(head)
				if err == nil {
					req = req.WithContext(ctx)
				}
				return req, exact, err
			}},
			{"ours", func(head []byte) (*http.Request, bool, error) { return parseHeadScan(tmpl, head, &sc) }},
		} {
			b.Run(c.name+"/"+p.name, func(b *testing.B) {
				head := []byte(c.head)
				b.ReportAllocs()
				for range b.N {
					if _, exact, err := p.parse(head); err != nil || !exact {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkFastServable is the loop's check of a parsed head before it
// serves it: "walk" goes over every field of the header (as for a
// head net/http parsed), "scanned" reads what the scan noted.
func BenchmarkFastServable(b *testing.B) {
	for _, c := range []struct{ name, head string }{
		{"wrk", reqSeeds[0]},
		{"curl", reqSeeds[1]},
		{"undici", reqSeeds[6]},
	} {
		var sc reqScan
		req, _, err := parseHeadScan(newReqTemplate(reqCtx), []byte(c.head), &sc)
		if err != nil || !sc.built {
			b.Fatalf("%q: not scanned (%v)", c.head, err)
		}
		for _, m := range []struct {
			name string
			sc   *reqScan
		}{{"walk", &reqScan{}}, {"scanned", &sc}} {
			b.Run(c.name+"/"+m.name, func(b *testing.B) {
				for range b.N {
					if !fastServable(req, m.sc) {
						b.Fatal("not servable")
					}
				}
			})
		}
	}
}

// TestReadRequestGenerated compares parseHead with http.ReadRequest on
// heads put together from the parts that matter (methods, targets,
// versions, names in every case, values, Content-Length and
// Transfer-Encoding forms, line ends), mostly of the common shape with
// one part changed: byte mutations (FuzzReadRequest) seldom build a
// whole valid head that differs from one in one field.
func TestReadRequestGenerated(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	// pick is mostly the first (common) part, else any.
	pick := func(s ...string) string {
		if rng.IntN(8) > 0 {
			return s[0]
		}
		return s[rng.IntN(len(s))]
	}
	n := 20000
	if testing.Short() {
		n = 2000
	}
	taken := 0
	for range n {
		var b strings.Builder
		b.WriteString(pick("GET", "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "PRI", "get", "M-SEARCH", "G\x00T", "GET "))
		b.WriteString(pick(" ", " ", " ", "  ", "\t"))
		b.WriteString(pick("/", "/a/b", "/a?b=c", "/a?", "/?", "/a??b", "//x/y", "/a%20b", "/a%zz", "/a%2", "/a!b", "/a#f", "/a?b#f",
			"/a b", "*", "http://h.test/a", "h.test:443", "/\x7f", "/\xc3\xa9", "/a;b=c/d:e@f", "/~u/$&+,=", ""))
		b.WriteString(pick(" HTTP/1.1", " HTTP/1.1", " HTTP/1.0", " HTTP/1.1 ", " HTTP/1.2", " HTTP/1.10", " http/1.1", " HTTP/01.1", ""))
		eol := func() string {
			return pick("\r\n", "\r\n", "\r\n", "\r\n", "\r\n", "\r\n", "\r\n", "\r\n", "\n", "\r", "\r\r\n")
		}
		b.WriteString(eol())
		hosts := 1
		if rng.IntN(8) == 0 {
			hosts = rng.IntN(4)
		}
		fields := rng.IntN(8)
		for i := range fields + hosts {
			if i < hosts {
				b.WriteString(pick("Host", "host", "HOST", "Host ", " Host"))
				b.WriteString(":" + pick(" h.test", " h.test:8443", "", " [::1]", "h.test ", " a b", " a\x00b"))
				b.WriteString(eol())
				continue
			}
			switch rng.IntN(4) {
			case 0:
				b.WriteString(pick("Content-Length", "content-length", "CONTENT-LENGTH", "Content-Length ", "Content_Length"))
				b.WriteString(":" + pick(" 5", "5", " 0", " 05", " +5", " -5", " 5,5", " 5 5", " ", " 9223372036854775807", " 9223372036854775808", " 123456789012345678", " 1234567890123456789", "\t5\t", " 0x5"))
			case 1:
				b.WriteString(pick("Transfer-Encoding", "transfer-encoding", "Trailer", "Connection", "connection", "Pragma", "Cache-Control", "Expect", "Upgrade"))
				b.WriteString(":" + pick(" chunked", " identity", " close", " keep-alive", " Keep-Alive, close", " no-cache", " No-Cache", " 100-continue", " x", ""))
			default:
				b.WriteString(pick("X-A", "x-a", "X-a-B", "Accept", "accept", "user-agent", "Sec-Fetch-Mode", "1st", "A_B", "!#$%&'*+-.^_`|~", "X A", "", "X-\x80", strings.Repeat("k", 65)))
				b.WriteString(":" + pick(" v", "v", " v ", "\tv\t", "", " a:b", " caf\xc3\xa9", " a\x7fb", " a\x01b", " a\rb", " \"q\"", " a,b"))
			}
			b.WriteString(eol())
			if rng.IntN(20) == 0 {
				b.WriteString(pick(" folded", "\tfolded") + eol())
			}
		}
		b.WriteString(pick("\r\n", "\r\n", "\r\n", "\n", ""))
		if reqSame(t, []byte(b.String())) {
			taken++
		}
	}
	t.Logf("%d of %d heads taken by the fast path", taken, n)
	if taken < n/10 {
		t.Errorf("only %d of %d heads taken: the comparison hardly tests the fast path", taken, n)
	}
}

// parseHead is parseHeadScan of one head with ctx as its context (which
// must not be nil), without the scan's notes.
func parseHead(ctx context.Context, head []byte) (req *http.Request, exact bool, err error) {
	var sc reqScan
	return parseHeadScan(newReqTemplate(ctx), head, &sc)
}

// The loop makes its request template anew for every run, which starts
// again for a connection that wakes from parking (250 ms idle): an agent
// whose calls come seconds apart pays for it on each request, so it must
// cost no more than the allocation it saves on later ones.
func TestReqTemplateOneAllocation(t *testing.T) {
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() { _ = newReqTemplate(ctx) }); n > 1 {
		t.Errorf("newReqTemplate: %v allocations, want 1", n)
	}
}

// FuzzPlainTarget holds plainTarget to its promise: a target it calls
// plain is one url.ParseRequestURI parses into exactly the path and
// query the HTTP/2 server fills in without it.
func FuzzPlainTarget(f *testing.F) {
	for _, s := range []string{"/", "/v1/chat?x=1", "/a?", "/a%20b", "/a b", "/é", "/a#b", "/a?b#c", "*", "//x", "/a/../b", "/@:$&+,;=~"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		if !plainTarget(target) {
			return
		}
		u, err := url.ParseRequestURI(target)
		if err != nil {
			t.Fatalf("plainTarget(%q), but ParseRequestURI: %v", target, err)
		}
		p, q, hasQuery := strings.Cut(target, "?")
		want := url.URL{Path: p, RawQuery: q, ForceQuery: hasQuery && q == ""}
		if *u != want {
			t.Fatalf("plainTarget(%q): ParseRequestURI gives %#v, the server fills %#v", target, *u, want)
		}
	})
}
