package mitm

import (
	"bufio"
	"errors"
	"fmt"
	"strings"
)

// clientHello is what the proxy needs from a TLS ClientHello.
type clientHello struct {
	// SNI is the server_name (host_name) in lower case without a trailing
	// dot; empty when the client sent none.
	SNI string
	// ALPN is the client's protocol list in its order; nil when absent.
	ALPN []string
}

const (
	recordTypeHandshake    = 0x16
	handshakeClientHello   = 1
	maxRecordLen           = 16384 + 2048 // TLSCiphertext bound (RFC 8446 5.2)
	maxClientHelloLen      = 32 << 10     // bound on a ClientHello spread over records
	extServerName          = 0
	extALPN                = 16
	sniHostName            = 0
	errPrefix              = "parse client hello: "
	peekBufferSize         = maxClientHelloLen + 5*8 // the records' headers
	minTLSRecordHeaderSize = 5
)

var errNeedMore = errors.New("need more bytes")

// parseClientHello parses a ClientHello from b, the first bytes a client
// sent: one or more TLS handshake records. When b holds a valid prefix but
// not the whole message it returns need > len(b), the number of bytes to
// read before calling again. It never reads past b and never panics.
func parseClientHello(b []byte) (h clientHello, need int, err error) {
	var msg []byte // the handshake message bytes gathered from records
	off := 0
	for {
		if len(b)-off < minTLSRecordHeaderSize {
			return h, off + minTLSRecordHeaderSize, errNeedMore
		}
		if b[off] != recordTypeHandshake {
			return h, 0, fmt.Errorf(errPrefix+"record type %d is not handshake", b[off])
		}
		if b[off+1] != 3 {
			return h, 0, fmt.Errorf(errPrefix+"record version %d.%d is not TLS", b[off+1], b[off+2])
		}
		n := int(b[off+3])<<8 | int(b[off+4])
		if n == 0 || n > maxRecordLen {
			return h, 0, fmt.Errorf(errPrefix+"record length %d out of range", n)
		}
		end := off + minTLSRecordHeaderSize + n
		if end > len(b) {
			return h, end, errNeedMore
		}
		if msg == nil {
			// The common case, one record: its body, not a copy.
			msg = b[off+minTLSRecordHeaderSize : end : end]
		} else {
			msg = append(msg, b[off+minTLSRecordHeaderSize:end]...)
		}
		off = end
		if len(msg) < 4 {
			continue
		}
		if msg[0] != handshakeClientHello {
			return h, 0, fmt.Errorf(errPrefix+"handshake type %d is not ClientHello", msg[0])
		}
		mlen := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
		if mlen > maxClientHelloLen {
			return h, 0, fmt.Errorf(errPrefix+"message length %d exceeds %d", mlen, maxClientHelloLen)
		}
		if len(msg) >= 4+mlen {
			h, err = parseClientHelloBody(msg[4 : 4+mlen])
			return h, 0, err
		}
		if off >= peekBufferSize {
			return h, 0, errors.New(errPrefix + "message spread over too many records")
		}
	}
}

// cursor reads big-endian fields and length-prefixed vectors from a byte
// slice; once a read fails every later read fails too.
type cursor struct {
	b   []byte
	bad bool
}

func (c *cursor) bytes(n int) []byte {
	if c.bad || n < 0 || n > len(c.b) {
		c.bad = true
		return nil
	}
	v := c.b[:n]
	c.b = c.b[n:]
	return v
}

func (c *cursor) u8() int {
	v := c.bytes(1)
	if v == nil {
		return 0
	}
	return int(v[0])
}

func (c *cursor) u16() int {
	v := c.bytes(2)
	if v == nil {
		return 0
	}
	return int(v[0])<<8 | int(v[1])
}

// vec8 and vec16 read a vector with a one- or two-byte length prefix.
func (c *cursor) vec8() cursor  { return cursor{b: c.bytes(c.u8()), bad: c.bad} }
func (c *cursor) vec16() cursor { return cursor{b: c.bytes(c.u16()), bad: c.bad} }

func parseClientHelloBody(body []byte) (clientHello, error) {
	var h clientHello
	c := cursor{b: body}
	c.bytes(2)  // legacy_version
	c.bytes(32) // random
	if sid := c.vec8(); len(sid.b) > 32 {
		return h, errors.New(errPrefix + "session id longer than 32 bytes")
	}
	suites := c.vec16()
	if !suites.bad && (len(suites.b) == 0 || len(suites.b)%2 != 0) {
		return h, errors.New(errPrefix + "bad cipher suite list")
	}
	if comp := c.vec8(); !comp.bad && len(comp.b) == 0 {
		return h, errors.New(errPrefix + "empty compression method list")
	}
	if c.bad {
		return h, errors.New(errPrefix + "truncated")
	}
	if len(c.b) == 0 {
		return h, nil // no extensions (SSLv3-era hello): no SNI, no ALPN
	}
	exts := c.vec16()
	if exts.bad || len(c.b) != 0 {
		return h, errors.New(errPrefix + "bad extensions length")
	}
	var seen extSet
	for len(exts.b) > 0 {
		typ := exts.u16()
		data := exts.vec16()
		if exts.bad {
			return h, errors.New(errPrefix + "truncated extension")
		}
		if !seen.add(typ) {
			return h, fmt.Errorf(errPrefix+"duplicate extension %d", typ)
		}
		var err error
		switch typ {
		case extServerName:
			h.SNI, err = parseSNI(data)
		case extALPN:
			h.ALPN, err = parseALPN(data)
		}
		if err != nil {
			return h, err
		}
	}
	return h, nil
}

// extSet is the extension types seen in one ClientHello: a bit per type
// below 64 (the registered ones a hello carries), a map for the rest
// (GREASE values, private ones), made only when one comes.
type extSet struct {
	low  uint64
	high map[int]bool
}

// add adds typ and reports whether it was new.
func (s *extSet) add(typ int) bool {
	if typ < 64 {
		bit := uint64(1) << typ
		if s.low&bit != 0 {
			return false
		}
		s.low |= bit
		return true
	}
	if s.high[typ] {
		return false
	}
	if s.high == nil {
		s.high = map[int]bool{}
	}
	s.high[typ] = true
	return true
}

func parseSNI(c cursor) (string, error) {
	list := c.vec16()
	if list.bad || len(c.b) != 0 || len(list.b) == 0 {
		return "", errors.New(errPrefix + "bad server_name extension")
	}
	var name string
	for len(list.b) > 0 {
		typ := list.u8()
		v := list.vec16()
		if list.bad {
			return "", errors.New(errPrefix + "truncated server_name")
		}
		if typ != sniHostName {
			continue
		}
		if name != "" {
			return "", errors.New(errPrefix + "two host names in server_name")
		}
		n, err := validHostName(v.b)
		if err != nil {
			return "", err
		}
		name = n
	}
	return name, nil
}

// validHostName accepts an ASCII host name (IDNA A-labels) of letters,
// digits, '-', '_', '.' and ':', at most 253 bytes, and returns it lower-cased
// without a trailing dot.
func validHostName(b []byte) (string, error) {
	s := strings.TrimSuffix(string(b), ".")
	if s == "" || len(s) > 253 {
		return "", errors.New(errPrefix + "server name empty or longer than 253 bytes")
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9', ch == '-', ch == '_', ch == '.',
			ch == ':': // an IPv6 literal, which RFC 6066 forbids but some clients send
		default:
			return "", fmt.Errorf(errPrefix+"server name has invalid byte 0x%02x", ch)
		}
	}
	if strings.Contains(s, "..") || s[0] == '.' {
		return "", errors.New(errPrefix + "server name has an empty label")
	}
	return strings.ToLower(s), nil
}

func parseALPN(c cursor) ([]string, error) {
	list := c.vec16()
	if list.bad || len(c.b) != 0 || len(list.b) == 0 {
		return nil, errors.New(errPrefix + "bad ALPN extension")
	}
	var out []string
	for len(list.b) > 0 {
		p := list.vec8()
		if list.bad || len(p.b) == 0 {
			return nil, errors.New(errPrefix + "bad ALPN protocol name")
		}
		out = append(out, string(p.b))
	}
	return out, nil
}

// peeker looks at bytes without consuming them (*peekedConn,
// *bufio.Reader).
type peeker interface {
	Peek(n int) ([]byte, error)
}

// peekClientHello reads (without consuming) a ClientHello from br, which
// must be able to peek peekBufferSize bytes. The caller bounds the time.
func peekClientHello(br peeker) (clientHello, error) {
	n := minTLSRecordHeaderSize
	for {
		b, err := br.Peek(n)
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return clientHello{}, errors.New(errPrefix + "too large")
			}
			return clientHello{}, fmt.Errorf(errPrefix+"read: %w", err)
		}
		h, need, err := parseClientHello(b)
		if !errors.Is(err, errNeedMore) {
			return h, err
		}
		if need <= n {
			return h, errors.New(errPrefix + "internal: no progress")
		}
		n = need
	}
}
