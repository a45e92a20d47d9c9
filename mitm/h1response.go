package mitm

import (
	"bufio"
	"bytes"
	"io"
	"net/http"

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

// maxFastHeaderLines bounds the field lines parseResponse takes; a head
// with more goes to http.ReadResponse.
const maxFastHeaderLines = 64

// parseResponse parses the response head at the start of br's buffer
// when it has the shape readResponse describes, consuming it; else it
// returns nil and consumes nothing.
func parseResponse(br *bufio.Reader, req *http.Request) *h1Response {
	if req != nil && req.Method == http.MethodHead {
		return nil // a declared length and no body: net/http's
	}
	p, _ := br.Peek(br.Buffered())
	// The head's end: the first empty line, every line ending in CRLF
	// (a bare LF ends a line for net/http: not this shape).
	end, lines := 0, 0
	for {
		i := indexLF(p[end:])
		if i < 1 || p[end+i-1] != '\r' {
			return nil
		}
		if i == 1 {
			end += 2
			break
		}
		end += i + 1
		lines++
		if lines > maxFastHeaderLines+1 {
			return nil
		}
	}
	lines-- // the status line
	if lines < 1 {
		return nil // no Content-Length
	}
	hr := &h1Response{br: br}
	head := string(p[:end]) // every string of the response is a part of it
	resp := &hr.resp

	// Status line: "HTTP/1.1 ddd" and a reason of visible ASCII, if any.
	i := indexLF(p) - 1
	line := head[:i]
	if len(line) < 12 || line[:9] != "HTTP/1.1 " || (len(line) > 12 && line[12] != ' ') {
		return nil
	}
	code := 0
	for _, c := range []byte(line[9:12]) {
		if c < '0' || c > '9' {
			return nil
		}
		code = code*10 + int(c-'0')
	}
	// 1xx (and 101), 204 and 304 have their own rules in net/http.
	if code < 200 || code > 599 || code == http.StatusNoContent || code == http.StatusNotModified {
		return nil
	}
	for j := 12; j < len(line); j++ {
		if !fastValueByte(line[j]) {
			return nil
		}
	}
	resp.Status, resp.StatusCode = line[9:], code
	resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1

	h := make(http.Header, lines)
	n := int64(-1)
	var key [64]byte
	nv := 0
	for pos := i + 2; pos < end-2; {
		j := pos + indexLF(p[pos:]) - 1 // the CR
		line := head[pos:j]
		pos = j + 2
		// Name: token bytes up to the colon (a blank before it, a
		// leading blank (folding) or an empty name: not this shape).
		k := 0
		for k < len(line) && line[k] != ':' {
			if !validHeaderFieldByte(line[k]) || k == len(key) {
				return nil
			}
			k++
		}
		if k == 0 || k == len(line) {
			return nil
		}
		// Value: visible ASCII, blanks and tabs, those around it trimmed.
		v := line[k+1:]
		for j := 0; j < len(v); j++ {
			if !fastValueByte(v[j]) {
				return nil
			}
		}
		v = trimBlank(v)
		name := canonicalKey(key[:k], line[:k])
		switch name {
		case "Transfer-Encoding", "Trailer":
			return nil
		case "Content-Length":
			if n >= 0 {
				return nil // duplicates: net/http's rules
			}
			if n = parseDigits(v); n < 0 {
				return nil
			}
		}
		vv := h[name]
		switch {
		case vv == nil && nv < len(hr.strs):
			hr.strs[nv] = v
			vv = hr.strs[nv : nv+1 : nv+1]
			nv++
		default:
			vv = append(vv, v)
		}
		h[name] = vv
	}
	if n < 0 {
		return nil
	}
	// As http.ReadResponse: Pragma's Cache-Control, and a Connection
	// field that closes is taken out.
	if hp, ok := h["Pragma"]; ok && len(hp) > 0 && hp[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	if httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
		delete(h, "Connection")
		resp.Close = true
	}
	resp.Header = h
	resp.ContentLength = n
	resp.Request = req
	hr.n = n
	resp.Body = hr
	if n == 0 {
		resp.Body = http.NoBody
	}
	_, _ = br.Discard(end)
	return hr
}

func indexLF(p []byte) int { return bytes.IndexByte(p, '\n') }

// fastValueByte reports whether c may be in a field value or reason
// phrase parseResponse takes: a tab or visible ASCII and space (net/http
// takes obs-text too; such a head goes to it).
func fastValueByte(c byte) bool { return c == '\t' || (c >= ' ' && c < 0x7f) }

// validHeaderFieldByte reports whether c is a token byte (RFC 9110 5.6.2),
// as net/textproto's check of the same name.
func validHeaderFieldByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

func trimBlank(s string) string {
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
func parseDigits(s string) int64 {
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
// only), built in buf: a common field's name without an allocation, the
// others as a new string.
func canonicalKey(buf []byte, name string) string {
	upper := true
	for i := 0; i < len(name); i++ {
		c := name[i]
		if upper && 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		} else if !upper && 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
		upper = c == '-'
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
		"Content-Security-Policy", "Content-Type", "Date", "Etag", "Expires", "Keep-Alive",
		"Last-Modified", "Link", "Location", "Pragma", "Referrer-Policy", "Retry-After", "Server",
		"Set-Cookie", "Strict-Transport-Security", "Vary", "Via", "Www-Authenticate",
		"X-Content-Type-Options", "X-Frame-Options", "X-Request-Id", "X-Xss-Protection",
	} {
		m[k] = k
	}
	return m
}()
