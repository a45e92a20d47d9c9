package mitm

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// readResponse reads a response head from br as http.ReadResponse does,
// with its result and its errors. The common shape (HTTP/1.1, a final
// status with a body, one Content-Length of plain digits, no
// Transfer-Encoding or Trailer, every line ending in CRLF with no folding,
// field names of token bytes and values of visible ASCII, the whole head
// already buffered) is parsed here from the buffer, without
// http.ReadResponse's textproto.Reader, a string per value and its body
// wrappers; anything else, valid or not, goes to http.ReadResponse on
// the same bytes, nothing consumed. The shape taken here is one that
// net/http reads the same way byte for byte (FuzzReadResponse holds them
// to it), so the two can't disagree on where the response ends.
//
// A response parsed here comes with the h1Response that holds it (else
// nil).
func readResponse(br *bufio.Reader, req *http.Request) (*http.Response, *h1Response, error) {
	if hr := parseResponse(br, req); hr != nil {
		return &hr.resp, hr, nil
	}
	resp, err := http.ReadResponse(br, req)
	return resp, nil, err
}

// h1Response is a response head read by parseResponse, its body, and
// the wrapper exchange puts around that body, in one allocation. The
// body (Read) is the next n bytes of br, as net/http's body of declared
// length reads them.
type h1Response struct {
	resp http.Response
	body h1Body // exchange's wrapper around this body
	br   *bufio.Reader
	n    int64     // the body's bytes not yet read
	strs [8]string // the header's first values, while they last
}

// Read reads the body as net/http's body of declared length does: a
// read that brings the last byte reports io.EOF with it, and the
// stream's end before the last byte is io.ErrUnexpectedEOF.
func (hr *h1Response) Read(p []byte) (int, error) {
	if hr.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > hr.n {
		p = p[:hr.n]
	}
	n, err := hr.br.Read(p)
	hr.n -= int64(n)
	switch {
	case err == io.EOF:
		if hr.n > 0 {
			err = io.ErrUnexpectedEOF
		}
	case err == nil && n > 0 && hr.n == 0:
		err = io.EOF
	}
	return n, err
}

// Close does nothing: the body's connection is the wrapper's (h1Body).
func (hr *h1Response) Close() error { return nil }

// maxFastHeaderLines and maxFastName bound the field lines and the
// name's length parseResponse takes; a head with more goes to
// http.ReadResponse.
const (
	maxFastHeaderLines = 64
	maxFastName        = 64
)

// parseResponse parses the response head at the start of br's buffer
// when it has the shape readResponse describes, consuming it; else it
// returns nil, having consumed and allocated nothing.
func parseResponse(br *bufio.Reader, req *http.Request) *h1Response {
	if req != nil && req.Method == http.MethodHead {
		return nil // a declared length and no body: net/http's
	}
	p, _ := br.Peek(br.Buffered())

	// Status line: "HTTP/1.1 ddd" and a reason of visible ASCII, if any.
	i := indexLF(p)
	if i < 13 || p[i-1] != '\r' {
		return nil
	}
	line := p[:i-1]
	if string(line[:9]) != "HTTP/1.1 " || (len(line) > 12 && line[12] != ' ') {
		return nil
	}
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return nil
		}
		code = code*10 + int(c-'0')
	}
	// 1xx (and 101), 204 and 304 have their own rules in net/http.
	if code < 200 || code > 599 || code == http.StatusNoContent || code == http.StatusNotModified {
		return nil
	}
	if !fastValue(line[12:]) {
		return nil
	}

	// Field lines up to the first empty one, every line ending in CRLF
	// (a bare LF ends a line for net/http: not this shape). Checked whole
	// before anything is allocated: a head net/http has to read costs
	// nothing here.
	end, fields := i+1, 0
	n := int64(-1)
	for {
		j := indexLF(p[end:])
		if j < 1 || p[end+j-1] != '\r' {
			return nil
		}
		if j == 1 {
			end += 2
			break
		}
		line := p[end : end+j-1]
		end += j + 1
		// Name: token bytes up to the colon (a blank before it, a
		// leading blank (folding) or an empty name: not this shape).
		k := 0
		for k < len(line) && line[k] != ':' {
			if !httpguts.IsTokenRune(rune(line[k])) || k == maxFastName {
				return nil
			}
			k++
		}
		if k == 0 || k == len(line) || !fastValue(line[k+1:]) {
			return nil
		}
		switch name := line[:k]; {
		case equalFoldLower(name, "content-length"):
			if n >= 0 {
				return nil // duplicates: net/http's rules
			}
			if n = parseDigits(trimBlank(line[k+1:])); n < 0 {
				return nil
			}
		case equalFoldLower(name, "transfer-encoding"), equalFoldLower(name, "trailer"):
			return nil
		}
		if fields++; fields > maxFastHeaderLines {
			return nil
		}
	}
	if n < 0 {
		return nil // read to the close: net/http's
	}

	hr := &h1Response{br: br, n: n}
	head := string(p[:end]) // every string of the response is a part of it
	resp := &hr.resp
	resp.Status, resp.StatusCode = head[9:i-1], code
	resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	h := make(http.Header, fields)
	var key [maxFastName]byte
	nv := 0
	for pos := i + 1; pos < end-2; {
		j := pos + strings.IndexByte(head[pos:], '\n') - 1 // the CR
		line := head[pos:j]
		pos = j + 2
		k := strings.IndexByte(line, ':')
		name := canonicalKey(key[:k], line[:k])
		v := trimBlank(line[k+1:])
		vv := h[name]
		if vv == nil && nv < len(hr.strs) {
			hr.strs[nv] = v
			vv = hr.strs[nv : nv+1 : nv+1]
			nv++
		} else {
			vv = append(vv, v)
		}
		h[name] = vv
	}
	// As http.ReadResponse: Pragma's Cache-Control, and a Connection
	// field that closes is taken out.
	fixPragma(h)
	if httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
		delete(h, "Connection")
		resp.Close = true
	}
	resp.Header = h
	resp.ContentLength = n
	resp.Request = req
	resp.Body = hr
	if n == 0 {
		resp.Body = http.NoBody
	}
	_, _ = br.Discard(end)
	return hr
}

func indexLF(p []byte) int { return bytes.IndexByte(p, '\n') }

// fastValue reports whether v may be a field value or reason phrase
// parseResponse takes: tabs and visible ASCII and spaces (net/http takes
// obs-text too; such a head goes to it).
func fastValue(v []byte) bool {
	for _, c := range v {
		if c != '\t' && (c < ' ' || c >= 0x7f) {
			return false
		}
	}
	return true
}

// equalFoldLower reports whether name (token bytes) is lower, a lower-case
// name, in any case.
func equalFoldLower(name []byte, lower string) bool {
	if len(name) != len(lower) {
		return false
	}
	for i, c := range name {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// trimBlank trims the blanks and tabs around s, as textproto does
// around a field value.
func trimBlank[T string | []byte](s T) T {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// parseDigits is a Content-Length of 1 to 18 decimal digits (no sign, no
// blank; what strconv.ParseUint(s, 10, 63) takes, short of its limit), or
// -1.
func parseDigits(s []byte) int64 {
	if len(s) == 0 || len(s) > 18 {
		return -1
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// canonicalKey is textproto.CanonicalMIMEHeaderKey of name (token bytes
// only): name itself when it is canonical already (a part of the head's
// string, as the values are: no allocation and no map lookup, the case
// of most servers), else built in buf, a common field's name without an
// allocation, the others as a new string.
func canonicalKey(buf []byte, name string) string {
	if canonicalInto(buf, name) {
		return name
	}
	if s, ok := commonResponseKeys[string(buf)]; ok {
		return s
	}
	return string(buf)
}

// commonResponseKeys interns the response fields seen most.
var commonResponseKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{
		"Accept-Ranges", "Access-Control-Allow-Credentials", "Access-Control-Allow-Headers",
		"Access-Control-Allow-Methods", "Access-Control-Allow-Origin", "Access-Control-Expose-Headers",
		"Access-Control-Max-Age", "Age", "Alt-Svc", "Cache-Control", "Connection", "Content-Disposition",
		"Content-Encoding", "Content-Language", "Content-Length", "Content-Location", "Content-Range",
		"Content-Security-Policy", "Content-Type", "Date", "Etag", "Expires",
		"Grpc-Encoding", "Grpc-Message", "Grpc-Status", "Keep-Alive",
		"Last-Modified", "Link", "Location", "Pragma", "Referrer-Policy", "Retry-After", "Server",
		"Set-Cookie", "Strict-Transport-Security", "Trailer", "Vary", "Via", "Www-Authenticate",
		"X-Content-Type-Options", "X-Frame-Options", "X-Request-Id", "X-Xss-Protection",
	} {
		m[k] = k
	}
	return m
}()

// fixPragma gives a head with "Pragma: no-cache" and no Cache-Control
// the Cache-Control net/http's readers give it (fixPragmaCacheControl),
// for the request and the response parsers alike.
func fixPragma(h http.Header) {
	if hp, ok := h["Pragma"]; ok && len(hp) > 0 && hp[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
}

// canonicalInto writes textproto.CanonicalMIMEHeaderKey of name (token
// bytes only) into buf, as long as name, and reports whether it is name
// itself: the request and response parsers' one canonicalization.
func canonicalInto(buf []byte, name string) (same bool) {
	upper, same := true, true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		same = same && c == name[i]
		buf[i] = c
		upper = c == '-'
	}
	return same
}
