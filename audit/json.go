package audit

import (
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// JSONLog writes one JSON object per line for every record. The message
// is always MsgAudit ("audit"); the keys are those of keys.go, rendered by
// AppendAttrs. The bytes are those log/slog's JSON handler writes for the
// same attributes (the tests compare them byte for byte); JSONLog encodes
// them itself into a pooled buffer, without slog's per-record handler
// state, as this runs once per proxied request.
type JSONLog struct {
	mu sync.Mutex // one Write per line, lines never interleaved
	w  io.Writer
}

// NewJSONLog writes records to w, one Write per line.
func NewJSONLog(w io.Writer) *JSONLog {
	return &JSONLog{w: w}
}

var _ Sink = (*JSONLog)(nil)

// lineBufs holds line buffers between records; a line longer than
// maxPooledLine (a large logged body) is not kept.
var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

const maxPooledLine = 64 << 10

// Record implements Sink.
func (l *JSONLog) Record(r *Record) { l.write(r) }

// RecordBatch implements BatchSink: the lines of rs in one Write.
func (l *JSONLog) RecordBatch(rs []*Record) { l.write(rs...) }

// write writes the lines of rs in one Write, from a pooled buffer.
func (l *JSONLog) write(rs ...*Record) {
	bp := lineBufs.Get().(*[]byte)
	b := (*bp)[:0]
	for _, r := range rs {
		b = r.AppendJSON(b)
	}
	l.mu.Lock()
	_, _ = l.w.Write(b)
	l.mu.Unlock()
	if cap(b) <= maxPooledLine {
		*bp = b
		lineBufs.Put(bp)
	}
}

// AppendJSON appends r's audit log line (with its newline) to dst: the
// object slog.NewJSONHandler writes for the message MsgAudit at level
// Info, with r.Time and the attributes of AppendAttrs.
func (r *Record) AppendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	if !r.Time.IsZero() {
		dst = appendJSONString(dst, slog.TimeKey)
		dst = append(dst, `:"`...)
		dst = r.Time.AppendFormat(dst, time.RFC3339Nano)
		dst = append(dst, `",`...)
	}
	dst = append(dst, `"level":"INFO","msg":`...)
	dst = appendJSONString(dst, MsgAudit)
	for _, f := range auditFields {
		dst = r.appendJSONField(dst, f)
	}
	return append(dst, "}\n"...)
}

// appendJSONField appends ,"key":value for field f of r when it is set.
// String, number and address fields are appended as they are, without
// an slog.Attr or a string made first (this runs some 70 times per
// proxied request); groups and lists go through attr.
func (r *Record) appendJSONField(dst []byte, f field) []byte {
	if k, v, ok := r.stringField(f); ok {
		if v == "" {
			return dst
		}
		dst = appendJSONKey(dst, k)
		return appendJSONString(dst, v)
	}
	if k, v, ok := r.listField(f); ok {
		if len(v) == 0 {
			return dst
		}
		dst = append(appendJSONKey(dst, k), '[')
		for i, s := range v {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendMarshaledString(dst, s)
		}
		return append(dst, ']')
	}
	w := &r.Workload
	switch f {
	case fWorkload:
		return appendJSONString(appendJSONKey(dst, KeyWorkload), w.Name())
	case fMCPErrorCode:
		if r.MCPErrorCode == 0 {
			return dst
		}
		return strconv.AppendInt(appendJSONKey(dst, KeyMCPErrorCode), int64(r.MCPErrorCode), 10)
	case fClient:
		if !w.Client.IsValid() {
			return dst
		}
		if w.Client.Addr().Zone() != "" { // a zone is any string: quote it
			return appendJSONString(appendJSONKey(dst, KeyClient), w.Client.String())
		}
		dst = append(appendJSONKey(dst, KeyClient), '"')
		return append(w.Client.AppendTo(dst), '"')
	case fIP:
		if !r.DstIP.IsValid() {
			return dst
		}
		if r.DstIP.Zone() != "" {
			return appendJSONString(appendJSONKey(dst, KeyIP), r.DstIP.String())
		}
		dst = append(appendJSONKey(dst, KeyIP), '"')
		return append(r.DstIP.AppendTo(dst), '"')
	case fPID:
		if w.PID == 0 {
			return dst
		}
		return strconv.AppendInt(appendJSONKey(dst, KeyPID), int64(w.PID), 10)
	case fUID:
		if w.PID == 0 { // UID is valid when PID is
			return dst
		}
		return strconv.AppendUint(appendJSONKey(dst, KeyUID), uint64(w.UID), 10)
	case fPort:
		if r.Port == 0 {
			return dst
		}
		return strconv.AppendInt(appendJSONKey(dst, KeyPort), int64(r.Port), 10)
	case fStatus:
		if r.Status == 0 {
			return dst
		}
		return strconv.AppendInt(appendJSONKey(dst, KeyStatus), int64(r.Status), 10)
	case fBytesIn:
		return strconv.AppendInt(appendJSONKey(dst, KeyBytesIn), r.BytesIn, 10)
	case fBytesOut:
		return strconv.AppendInt(appendJSONKey(dst, KeyBytesOut), r.BytesOut, 10)
	case fDurationMS:
		return appendJSONFloat(appendJSONKey(dst, KeyDurationMS), float64(r.Duration.Microseconds())/1000)
	case fUpstreamMS:
		if r.UpstreamDuration == 0 {
			return dst
		}
		return appendJSONFloat(appendJSONKey(dst, KeyUpstreamMS), float64(r.UpstreamDuration.Microseconds())/1000)
	}
	if a, ok := r.attr(f); ok {
		dst = append(dst, ',')
		dst = appendJSONAttr(dst, a)
	}
	return dst
}

// appendJSONKey appends ,"key": . Keys are keys.go's constants, plain
// ASCII that needs no escaping (TestKeysNeedNoEscaping).
func appendJSONKey(dst []byte, k string) []byte {
	dst = append(dst, ',', '"')
	dst = append(dst, k...)
	return append(dst, '"', ':')
}

// appendJSONAttr appends "key":value for the kinds attr produces, as
// slog's JSON handler renders them.
func appendJSONAttr(dst []byte, a slog.Attr) []byte {
	dst = appendJSONString(dst, a.Key)
	dst = append(dst, ':')
	v := a.Value
	switch v.Kind() {
	case slog.KindString:
		return appendJSONString(dst, v.String())
	case slog.KindInt64:
		return strconv.AppendInt(dst, v.Int64(), 10)
	case slog.KindUint64:
		return strconv.AppendUint(dst, v.Uint64(), 10)
	case slog.KindFloat64:
		return appendJSONFloat(dst, v.Float64())
	case slog.KindGroup:
		dst = append(dst, '{')
		for i, g := range v.Group() {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendJSONAttr(dst, g)
		}
		return append(dst, '}')
	case slog.KindAny:
		if ss, ok := v.Any().([]string); ok {
			dst = append(dst, '[')
			for i, s := range ss {
				if i > 0 {
					dst = append(dst, ',')
				}
				dst = appendMarshaledString(dst, s)
			}
			return append(dst, ']')
		}
	}
	panic("audit: attr of an unexpected kind " + v.Kind().String())
}

// appendJSONFloat renders f as encoding/json does (slog calls it for
// floats): 'f' form, 'e' form below 1e-6 and from 1e21.
func appendJSONFloat(dst []byte, f float64) []byte {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return append(dst, `"!ERROR:unsupported value"`...)
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s quoted as slog's JSON handler quotes strings
// and keys: \" \\ \n \r \t, other control bytes as \u00XX, invalid UTF-8 as
// \ufffd, U+2028 and U+2029 escaped, everything else (<, >, & too) as is.
func appendJSONString(dst []byte, s string) []byte {
	return appendQuoted(dst, s, false)
}

// appendMarshaledString appends s as encoding/json (without HTML
// escaping, slog's setting) marshals it inside an array: as
// appendJSONString, but \b and \f by name.
func appendMarshaledString(dst []byte, s string) []byte {
	return appendQuoted(dst, s, true)
}

func appendQuoted(dst []byte, s string, named bool) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch {
			case b == '\\' || b == '"':
				dst = append(dst, '\\', b)
			case b == '\n':
				dst = append(dst, '\\', 'n')
			case b == '\r':
				dst = append(dst, '\\', 'r')
			case b == '\t':
				dst = append(dst, '\\', 't')
			case named && b == '\b':
				dst = append(dst, '\\', 'b')
			case named && b == '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// Redacted is what a redacted header value is replaced with.
const Redacted = "[REDACTED]"

// clearHeaders are the header names whose values are logged as they are:
// content negotiation, framing, caching, tracing, MCP session and
// protocol version, and hop information. They carry no credentials.
// Referer is not among them: its query string can hold tokens.
var clearHeaders = map[string]bool{
	"Accept":               true,
	"Accept-Charset":       true,
	"Accept-Encoding":      true,
	"Accept-Language":      true,
	"Cache-Control":        true,
	"Connection":           true,
	"Content-Encoding":     true,
	"Content-Language":     true,
	"Content-Length":       true,
	"Content-Type":         true,
	"Date":                 true,
	"Expect":               true,
	"Host":                 true,
	"If-Modified-Since":    true,
	"If-None-Match":        true,
	"Mcp-Protocol-Version": true,
	"Origin":               true,
	"Pragma":               true,
	"Range":                true,
	"Te":                   true,
	"Traceparent":          true,
	"Tracestate":           true,
	"Transfer-Encoding":    true,
	"Upgrade":              true,
	"User-Agent":           true,
	"Via":                  true,
	"X-Forwarded-For":      true,
	"X-Forwarded-Host":     true,
	"X-Forwarded-Proto":    true,
	"X-Request-Id":         true,
}

// Redact flattens h into one value per canonical name (values joined with
// ", ") for a log. Every name is kept, but only the values of an allowlist
// of harmless headers are kept in clear: Accept, Accept-Charset,
// Accept-Encoding, Accept-Language, Cache-Control, Connection,
// Content-Encoding, Content-Language, Content-Length, Content-Type, Date,
// Expect, Host, If-Modified-Since, If-None-Match, Mcp-Protocol-Version,
// Origin, Pragma, Range, Te, Traceparent, Tracestate,
// Transfer-Encoding, Upgrade, User-Agent, Via, X-Forwarded-For,
// X-Forwarded-Host, X-Forwarded-Proto and X-Request-Id. Every other value
// (Authorization, Cookie, X-Api-Key, any vendor's key or token header) is
// replaced with Redacted, as are the values of the names in extra
// (case-insensitive), even allowlisted ones.
func Redact(h http.Header, extra []string) map[string]string {
	if len(h) == 0 {
		return nil
	}
	out := make(map[string]string, len(h))
	for k, v := range h {
		ck := http.CanonicalHeaderKey(k)
		secret := !clearHeaders[ck]
		for _, e := range extra {
			if strings.EqualFold(e, ck) {
				secret = true
				break
			}
		}
		switch prev, dup := out[ck]; {
		case secret:
			out[ck] = Redacted
		case dup: // h held the name in two spellings
			if prev != Redacted {
				out[ck] = prev + ", " + strings.Join(v, ", ")
			}
		default:
			out[ck] = strings.Join(v, ", ")
		}
	}
	return out
}
