package mitm

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
)

// parseHeadScan parses head, a whole request head as headEnd found it,
// as http.ReadRequest does, and gives the request tmpl's context (as
// req.WithContext would; tmpl is newReqTemplate's); exact: the parse
// read all of head, no more and no less. The common shape (reqScan) is
// parsed here from the buffer, without ReadRequest's textproto.Reader, a
// string per value, url.ParseRequestURI and the second Request of
// WithContext; anything else, valid or not, goes to http.ReadRequest on
// the same bytes, so a request the loop does not take is read and
// answered by net/http as before. The shape taken here is one net/http
// reads the same way byte for byte (FuzzReadRequest holds the two to
// it), so the loop and net/http can't disagree on where a request ends.
// sc is left with what scanRequest found in head when buildRequest made
// req of it (sc.built), else zero: net/http parsed it. fastServable
// reads it.
//
// The request's Body is http.NoBody or ReadRequest's, which reads a
// pooled reader reused once parseHeadScan returns: the caller must
// replace it.
func parseHeadScan(tmpl *http.Request, head []byte, sc *reqScan) (req *http.Request, exact bool, err error) {
	if *sc, exact = scanRequest(head, false); exact {
		if req := buildRequest(tmpl, head, sc); req != nil {
			sc.built = true
			return req, true, nil
		}
	}
	*sc = reqScan{}
	req, exact, err = readHead(head)
	if err == nil {
		req = req.WithContext(tmpl.Context())
	}
	return req, exact, err
}

// newReqTemplate is the Request buildRequest copies for each request
// with the context ctx: what http.NewRequestWithContext(ctx, "GET", "",
// nil) gives, without a URL or a Header, which each copy gets of its
// own. One allocation (WithContext's copy; no URL, map or parse of ""),
// made once per run of the loop, which starts anew for a connection
// that wakes from parking. A nil ctx panics, as WithContext does.
func newReqTemplate(ctx context.Context) *http.Request {
	return (&http.Request{Method: http.MethodGet, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}).WithContext(ctx)
}

// fastRefused are the fields (lower case) of a request the fast loop
// leaves to net/http: an expectation and upgrades to another protocol
// (WebSocket, h2c). scanRequest notes them as it reads a head, and
// fastServable looks for them in a head net/http parsed: one list, so
// the two ways can't differ.
var fastRefused = [...]string{"expect", "upgrade", "http2-settings"}

// fastRefusedName reports whether name is one of fastRefused, in any
// case.
func fastRefusedName(name []byte) bool {
	for _, f := range fastRefused {
		if equalFoldLower(name, f) {
			return true
		}
	}
	return false
}

// builtRequest is a Request buildRequest makes and its URL, in one
// allocation.
type builtRequest struct {
	req http.Request
	url url.URL
}

// headParser parses a copy of a head: a bufio.Reader (of a buffer as
// large as the loop's) over a bytes.Reader, taken per request.
type headParser struct {
	src bytes.Reader
	br  *bufio.Reader
}

var headParsers = sync.Pool{New: func() any {
	hp := &headParser{}
	hp.br = bufio.NewReaderSize(&hp.src, h1FastBuf)
	return hp
}}

// readHead parses head with http.ReadRequest; exact: it read all of
// head, no more and no less.
func readHead(head []byte) (req *http.Request, exact bool, err error) {
	hp := headParsers.Get().(*headParser)
	hp.src.Reset(head)
	hp.br.Reset(&hp.src)
	req, err = http.ReadRequest(hp.br)
	exact = hp.src.Len() == 0 && hp.br.Buffered() == 0
	hp.src.Reset(nil)
	hp.br.Reset(&hp.src)
	headParsers.Put(hp)
	return req, exact, err
}

// reqScan is what scanRequest found in a head of the common shape.
type reqScan struct {
	method    int   // the method is head[:method]
	target    int   // the request-target is head[method+1:target]
	minor     int   // HTTP/1.minor: 0 or 1
	line      int   // the request line's length, CRLF included
	fields    int   // field lines
	hosts     int   // Host fields
	n         int64 // the Content-Length, or -1 without one
	plainPath bool  // the target's path is one url.ParseRequestURI keeps as it is
	// refused: an Expect, Upgrade or HTTP2-Settings field, which the
	// fast loop leaves to net/http; conn: a Connection field, whose
	// tokens it looks at (fastServable).
	refused, conn bool
	built         bool // buildRequest made the request of this head (parseHeadScan)
}

// scanRequest checks that head has the shape parseHead takes, allocating
// nothing: a request line "token SP /target SP HTTP/1.1" (or 1.0) with a
// target of visible ASCII in origin form; field lines with a name of
// token bytes (64 at most) and a value of visible ASCII, spaces and
// tabs; every line ended by CRLF (a bare LF ends a line for net/http,
// and a CR alone is not the end of one: not this shape), no folding;
// exactly one Host, at most one Content-Length of 1 to 18 digits (more,
// even equal ones, have net/http's rules), no Transfer-Encoding or
// Trailer; at most 64 field lines; and the empty line that ends the head
// at its very end.
//
// partial: head is the whole lines so far of a head still in parts; they
// are checked as above, a Host may be still to come, and no empty line
// may be among them.
func scanRequest(head []byte, partial bool) (sc reqScan, ok bool) {
	sc.n = -1
	// Request line: the method's token bytes up to a space, the target
	// up to the next space, then the version and CRLF. Cut as
	// parseRequestLine does: at the first two spaces.
	i := indexLF(head)
	if i < 1 || head[i-1] != '\r' {
		return sc, false
	}
	line := head[:i-1]
	k := 0
	for k < len(line) && line[k] != ' ' {
		if !httpguts.IsTokenRune(rune(line[k])) {
			return sc, false
		}
		k++
	}
	if k == 0 || k+1 >= len(line) || line[k+1] != '/' {
		return sc, false
	}
	sc.method = k
	sc.plainPath = true
	inQuery := false
	for k++; k < len(line) && line[k] != ' '; k++ {
		c := line[k]
		if c <= ' ' || c >= 0x7f {
			return sc, false
		}
		if c == '?' {
			inQuery = true
		} else if !inQuery && !plainPathByte(c) {
			sc.plainPath = false
		}
	}
	sc.target = k
	switch string(line[min(k+1, len(line)):]) {
	case "HTTP/1.1":
		sc.minor = 1
	case "HTTP/1.0":
		sc.minor = 0
	default:
		return sc, false // no space after the target, or another version
	}
	sc.line = i + 1

	// Field lines up to the first empty one.
	end := i + 1
	for end < len(head) {
		j := indexLF(head[end:])
		if j < 1 || head[end+j-1] != '\r' {
			return sc, false
		}
		if j == 1 {
			// The empty line: the head's end, and the buffer's.
			if partial || end+2 != len(head) || (sc.hosts != 1) {
				return sc, false
			}
			return sc, true
		}
		line := head[end : end+j-1]
		end += j + 1
		k := 0
		for k < len(line) && line[k] != ':' {
			if !httpguts.IsTokenRune(rune(line[k])) || k == maxFastName {
				return sc, false
			}
			k++
		}
		if k == 0 || k == len(line) || !fastValue(line[k+1:]) {
			return sc, false
		}
		switch name := line[:k]; {
		case equalFoldLower(name, "host"):
			if sc.hosts++; sc.hosts > 1 {
				return sc, false // net/http's error
			}
		case equalFoldLower(name, "content-length"):
			if sc.n >= 0 {
				return sc, false // duplicates: net/http's rules
			}
			if sc.n = parseDigits(trimBlank(line[k+1:])); sc.n < 0 {
				return sc, false
			}
		case equalFoldLower(name, "transfer-encoding"), equalFoldLower(name, "trailer"):
			return sc, false
		case equalFoldLower(name, "connection"):
			sc.conn = true
		default:
			if fastRefusedName(name) {
				sc.refused = true
			}
		}
		if sc.fields++; sc.fields > maxFastHeaderLines {
			return sc, false
		}
	}
	return sc, partial // without its empty line, a whole head is not this shape
}

// plainTarget reports whether target (an origin-form request target:
// a path and a query) is one url.ParseRequestURI keeps as it is: a path
// of plainPathByte bytes, a query of any visible ASCII.
func plainTarget(target string) bool {
	if target == "" || target[0] != '/' {
		return false
	}
	inQuery := false
	for i := 0; i < len(target); i++ {
		c := target[i]
		switch {
		case c <= ' ' || c >= 0x7f:
			return false
		case c == '?':
			inQuery = true
		case !inQuery && !plainPathByte(c):
			return false
		}
	}
	return true
}

// plainPathByte reports whether c in a request's path is kept as it is
// by url.ParseRequestURI: no unescaping (no '%') and no escaping of the
// path back (the unreserved bytes and the reserved ones a path keeps),
// so that Path is the path and RawPath is empty.
func plainPathByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '_', '.', '~', '$', '&', '+', ',', '/', ':', ';', '=', '@':
		return true
	}
	return false
}

// buildRequest builds the request scanRequest found in head, as
// http.ReadRequest and WithContext(tmpl.Context()) would, or returns nil
// when the target is one url.ParseRequestURI refuses.
//
// Allocations: the Request and its URL are one (a copy of tmpl, which
// holds the context: newReqTemplate), its Header map another, where
// http.NewRequestWithContext took three and a parse of ""; every string
// (target, path, query, field names as sent in canonical form, values)
// is a part of one copy of the head, so a request costs one string
// however many fields it has; a name sent in another case is
// canonicalized on the stack and interned when common
// (commonRequestKeys), else it is a string of its own; and one slice
// holds the first value of each field. The head's copy
// (at most the loop's buffer, 4 KiB) lives as long as the request or a
// value taken from it. The method and the Host get strings of their own:
// tables that outlive the request keep them (a flow's targets, the name
// bindings, metrics' series, the flows table), and a few bytes kept must
// not keep the head. Whatever else keeps a value past the request
// clones it (the cache's Vary values do).
func buildRequest(tmpl *http.Request, head []byte, sc *reqScan) *http.Request {
	s := string(head)
	// The template's copy is what http.NewRequestWithContext(ctx,
	// method, "", nil) gives (the method's token bytes are checked by
	// the scan), with the URL next to the Request.
	built := &builtRequest{req: *tmpl}
	req := &built.req
	req.Method, req.URL = methodString(head[:sc.method]), &built.url
	target := s[sc.method+1 : sc.target]
	if sc.plainPath {
		// As url.parse does for a target in origin form: the query
		// after the first '?', and a lone '?' at the end forces an
		// empty one.
		path, query, hasQuery := strings.Cut(target, "?")
		u := req.URL
		u.Path, u.RawQuery, u.ForceQuery = path, query, hasQuery && query == ""
	} else {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return nil
		}
		*req.URL = *u
	}
	req.RequestURI = target
	if sc.minor == 0 {
		req.Proto, req.ProtoMinor = "HTTP/1.0", 0
	}

	var h http.Header
	if n := sc.fields - sc.hosts; n > 8 {
		h = make(http.Header, n) // past a small map's size
	} else {
		h = make(http.Header)
	}
	req.Header = h
	var strs []string
	if n := sc.fields - sc.hosts; n > 0 {
		strs = make([]string, n)
	}
	var buf [maxFastName]byte
	for pos := sc.line; pos < len(s)-2; {
		j := pos + strings.IndexByte(s[pos:], '\n') - 1 // the CR
		line := s[pos:j]
		pos = j + 2
		k := strings.IndexByte(line, ':')
		name := requestKey(&buf, line[:k])
		v := trimBlank(line[k+1:])
		if name == "Host" {
			// ReadRequest takes the one Host out of the header, as
			// the request's Host (its target has none).
			req.Host = strings.Clone(v)
			continue
		}
		vv := h[name]
		if vv == nil && len(strs) > 0 {
			vv, strs = strs[:1:1], strs[1:]
			vv[0] = v
		} else {
			vv = append(vv, v)
		}
		h[name] = vv
	}
	// As ReadRequest: Pragma's Cache-Control, Close from the version and
	// the Connection field, the body's length.
	fixPragma(h)
	conn := h["Connection"]
	req.Close = httpguts.HeaderValuesContainsToken(conn, "close")
	if sc.minor == 0 && !req.Close {
		req.Close = !httpguts.HeaderValuesContainsToken(conn, "keep-alive")
	}
	req.ContentLength = max(sc.n, 0)
	req.Body = http.NoBody
	return req
}

// requestKey is textproto.CanonicalMIMEHeaderKey of name (token bytes,
// at most maxFastName): name itself when it is canonical already (a
// part of the head's string: no allocation), else built in buf and
// interned when common.
func requestKey(buf *[maxFastName]byte, name string) string {
	if canonicalInto(buf[:len(name)], name) {
		return name
	}
	if s, ok := commonRequestKeys[string(buf[:len(name)])]; ok {
		return s
	}
	return string(buf[:len(name)])
}

// commonRequestKeys interns the request fields seen most (clients that
// send names in lower case: Node's undici, HTTP/2-minded libraries).
var commonRequestKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{
		"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Anthropic-Version",
		"Authorization", "Baggage", "Cache-Control", "Connection", "Content-Encoding", "Content-Length",
		"Content-Type", "Cookie", "Dnt", "Host", "If-Match", "If-Modified-Since", "If-None-Match",
		"Keep-Alive", "Openai-Organization", "Origin", "Pragma", "Priority", "Range", "Referer",
		"Sec-Ch-Ua", "Sec-Ch-Ua-Mobile", "Sec-Ch-Ua-Platform", "Sec-Fetch-Dest", "Sec-Fetch-Mode",
		"Sec-Fetch-Site", "Sec-Fetch-User", "Te", "Traceparent", "Tracestate", "Upgrade-Insecure-Requests",
		"User-Agent", "X-Amz-Content-Sha256", "X-Amz-Date", "X-Api-Key", "X-Forwarded-For",
		"X-Forwarded-Proto", "X-Request-Id", "X-Requested-With",
	} {
		m[k] = k
	}
	return m
}()

// methodString is method as a string not part of the head's copy: the
// common methods' constants, else a copy.
func methodString(method []byte) string {
	for _, m := range commonMethods {
		if string(method) == m {
			return m
		}
	}
	return string(method)
}

var commonMethods = [...]string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch,
	http.MethodDelete, http.MethodHead, http.MethodOptions}
