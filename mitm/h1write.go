package mitm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// writeH1Request writes req to bw as net/http's Request.Write writes the
// request forward gives the Transport (transportRequest: hop-by-hop
// fields and the ones they name removed, TE kept only as "trailers", no
// Expect or Trailer, no default User-Agent, Content-Length by the
// Transport's rules), without copying the header first. Fields go out in
// map order. A field name or value that could not be sent as it is is an
// error, as it is for the Transport. The body, if any, is copied and
// closed; bw is not flushed.
func writeH1Request(bw *bufio.Writer, req *h1Request) (err error) {
	if req.body != nil {
		defer func() {
			if cerr := req.body.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("close request body: %w", cerr)
			}
		}()
	}
	r := req.r
	host, err := httpguts.PunycodeHostPort(req.host)
	if err != nil {
		return fmt.Errorf("host %q: %w", req.host, err)
	}
	if !httpguts.ValidHostHeader(host) {
		host = "" // as net/http does: an empty Host rather than a smuggled one
	}
	if !validMethod(r.Method) { // as net/http's Transport: a method with a space would be read as more
		return fmt.Errorf("invalid method %q", r.Method)
	}
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	if err := writeRequestURI(bw, r.URL); err != nil {
		return err
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(removeZone(host))
	bw.WriteString("\r\n")
	h := r.Header
	if ua := h["User-Agent"]; len(ua) > 0 && ua[0] != "" {
		if err := writeField(bw, "User-Agent", ua[0]); err != nil {
			return err
		}
	}
	conn := h["Connection"]
	te := false
	for k, vs := range h {
		switch {
		case namedBy(conn, k):
			continue
		case k == "Te":
			te = headerHasToken(h, "Te", "trailers")
			continue
		case h1Dropped(k):
			continue
		}
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("invalid header field name %q", k)
		}
		for _, v := range vs {
			if err := writeField(bw, k, v); err != nil {
				return err
			}
		}
	}
	if te {
		bw.WriteString("Te: trailers\r\n")
	}
	switch m := r.Method; {
	case req.n > 0:
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), req.n, 10))
		bw.WriteString("\r\n")
	case m == http.MethodPost || m == http.MethodPut || m == http.MethodPatch:
		bw.WriteString("Content-Length: 0\r\n") // many servers want one for these
	}
	if _, err := bw.WriteString("\r\n"); err != nil {
		return err
	}
	if req.body == nil {
		return nil
	}
	n, err := io.CopyN(bw, req.body, req.n)
	if err == nil {
		// The rest, to the body's end: its wrappers finish there.
		var extra int64
		extra, err = io.Copy(io.Discard, req.body)
		n += extra
	}
	switch {
	case errors.Is(err, io.EOF) || (err == nil && n != req.n):
		return fmt.Errorf("request body of %d bytes, Content-Length %d", n, req.n)
	case err != nil:
		return err
	}
	return nil
}

// writeField writes "k: v" with v's surrounding blanks trimmed, as
// net/http does; a value with a line break or other control byte is an
// error.
func writeField(bw *bufio.Writer, k, v string) error {
	if !httpguts.ValidHeaderFieldValue(v) {
		return fmt.Errorf("invalid header field value for %q", k)
	}
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(textproto.TrimString(v))
	_, err := bw.WriteString("\r\n")
	return err
}

// h1Dropped reports whether a request field is not forwarded as it is:
// hop-by-hop fields (RFC 9110 7.6.1) and the proxy-only ones, what the
// request line and writeH1Request write themselves, Expect (the proxy
// answers 100-continue itself) and Trailer (no trailers go out).
func h1Dropped(k string) bool {
	switch k {
	case "Host", "User-Agent", "Content-Length", "Expect", "Trailer":
		return true
	}
	return isHopHeader(k) || hasProxyPrefix(k)
}

// namedBy reports whether the Connection field values conn name k.
func namedBy(conn []string, k string) bool {
	for _, v := range conn {
		for v != "" {
			var name string
			name, v, _ = strings.Cut(v, ",")
			if name = textproto.TrimString(name); name != "" && strings.EqualFold(name, k) {
				return true
			}
		}
	}
	return false
}

// writeRequestURI writes u.RequestURI() without building it, refusing
// control bytes as net/http does.
func writeRequestURI(bw *bufio.Writer, u *url.URL) error {
	if u.Opaque != "" {
		uri := u.RequestURI()
		if hasCTL(uri) {
			return errors.New("can't write control character in request URL")
		}
		bw.WriteString(uri)
		return nil
	}
	p := u.EscapedPath()
	if p == "" {
		p = "/"
	}
	if hasCTL(p) || hasCTL(u.RawQuery) {
		return errors.New("can't write control character in request URL")
	}
	bw.WriteString(p)
	if u.ForceQuery || u.RawQuery != "" {
		bw.WriteByte('?')
		bw.WriteString(u.RawQuery)
	}
	return nil
}

func hasCTL(s string) bool {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < ' ' || b == 0x7f {
			return true
		}
	}
	return false
}

// removeZone removes an IPv6 zone from a Host value (RFC 6874): what
// net/http does before it writes one.
func removeZone(host string) string {
	if !strings.HasPrefix(host, "[") {
		return host
	}
	i := strings.LastIndex(host, "]")
	if i < 0 {
		return host
	}
	j := strings.LastIndex(host[:i], "%")
	if j < 0 {
		return host
	}
	return host[:j] + host[i:]
}

// validMethod reports whether m is a method HTTP/1.1 can carry: a token.
func validMethod(m string) bool {
	return m != "" && strings.IndexFunc(m, func(r rune) bool { return !httpguts.IsTokenRune(r) }) < 0
}
