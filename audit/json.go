package audit

import (
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sluicehq/sluice/workload"
)

// JSONLog writes one JSON object per line for every record. The message
// is always MsgAudit ("audit"); the keys are those of keys.go, rendered by
// AppendAttrs. The bytes are those log/slog's JSON handler writes for the
// same attributes (the tests compare them byte for byte); JSONLog encodes
// them itself into a pooled buffer, without slog's per-record handler
// state, as this runs once per proxied request, and keeps what recent
// lines share (the workload's fields, the time's second: lineCache).
// One difference is deliberate: a time outside the years 0-9999, for
// which slog writes an error text before the time (no longer JSON), is
// written as time.RFC3339Nano formats it.
type JSONLog struct {
	mu    sync.Mutex // one Write per line, lines never interleaved
	w     io.Writer
	whole bool // w keeps each Write whole itself (FlushWriter): mu is not taken
	// cache keeps what recent lines share: the workload's part (a
	// process's requests all carry the same workload) and the time's
	// second, encoded once instead of per line.
	cache lineCache
}

// NewJSONLog writes records to w, one Write per line.
func NewJSONLog(w io.Writer) *JSONLog {
	_, whole := w.(interface{ writesWhole() })
	return &JSONLog{w: w, whole: whole}
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
		b = r.appendJSON(b, &l.cache)
	}
	if l.whole {
		_, _ = l.w.Write(b)
	} else {
		l.mu.Lock()
		_, _ = l.w.Write(b)
		l.mu.Unlock()
	}
	if cap(b) <= maxPooledLine {
		*bp = b
		lineBufs.Put(bp)
	}
}

// AppendJSON appends r's audit log line (with its newline) to dst: the
// object slog.NewJSONHandler writes for the message MsgAudit at level
// Info, with r.Time and the attributes of AppendAttrs.
func (r *Record) AppendJSON(dst []byte) []byte { return r.appendJSON(dst, nil) }

// appendJSON is AppendJSON, with the workload's part of the line (pid
// to workload) and the time's second from c when c is not nil.
//
// It walks the fields in the order of auditFields, one plain test per
// field and no dispatch (this runs once per proxied request);
// TestJSONLogEveryField fails when the two orders differ. The keys are
// constants folded at compile time, plain ASCII that needs no escaping
// (TestKeysNeedNoEscaping).
func (r *Record) appendJSON(dst []byte, c *lineCache) []byte {
	dst = append(dst, '{')
	if !r.Time.IsZero() {
		dst = append(dst, `"`+slog.TimeKey+`":"`...)
		if c != nil {
			dst = c.tm.appendTime(dst, r.Time)
		} else {
			dst = r.Time.AppendFormat(dst, time.RFC3339Nano)
		}
		dst = append(dst, `",`...)
	}
	if c != nil && r.Kind == KindConnect {
		return c.conn.appendBody(dst, r, c)
	}
	return r.appendBody(dst, c)
}

// appendBody appends the line after its time: from "level" to the
// newline.
func (r *Record) appendBody(dst []byte, c *lineCache) []byte {
	dst = append(dst, `"level":"INFO","msg":"`+MsgAudit+`"`...)
	dst = appendStringField(dst, `,"`+KeyKind+`":`, r.Kind)
	dst = appendClient(dst, r.Workload.Client)
	if c != nil {
		dst = append(dst, c.wl.fragment(&r.Workload)...)
	} else {
		dst = appendWorkloadJSON(dst, &r.Workload)
	}
	dst = appendStringField(dst, `,"`+KeyHost+`":`, r.Host)
	if r.DstIP.IsValid() {
		dst = appendAddr(append(dst, `,"`+KeyIP+`":`...), r.DstIP)
	}
	if r.Port != 0 {
		dst = strconv.AppendUint(append(dst, `,"`+KeyPort+`":`...), uint64(r.Port), 10)
	}
	dst = appendStringField(dst, `,"`+KeySNI+`":`, r.SNI)
	dst = appendStringField(dst, `,"`+KeyTLS+`":`, r.TLS)
	dst = appendStringField(dst, `,"`+KeyALPN+`":`, r.ALPN)
	dst = appendStringField(dst, `,"`+KeyProto+`":`, r.Proto)
	dst = appendStringField(dst, `,"`+KeyMethod+`":`, r.Method)
	dst = appendStringField(dst, `,"`+KeyPath+`":`, r.Path)
	if r.Status != 0 {
		dst = strconv.AppendInt(append(dst, `,"`+KeyStatus+`":`...), int64(r.Status), 10)
	}
	dst = appendStringField(dst, `,"`+KeySource+`":`, r.Source)
	dst = strconv.AppendInt(append(dst, `,"`+KeyBytesIn+`":`...), r.BytesIn, 10)
	dst = strconv.AppendInt(append(dst, `,"`+KeyBytesOut+`":`...), r.BytesOut, 10)
	dst = appendMillis(append(dst, `,"`+KeyDurationMS+`":`...), r.Duration)
	if r.UpstreamDuration != 0 {
		dst = appendMillis(append(dst, `,"`+KeyUpstreamMS+`":`...), r.UpstreamDuration)
	}
	dst = appendStringField(dst, `,"`+KeyUpstreamAddr+`":`, r.UpstreamAddr)
	dst = appendStringField(dst, `,"`+KeyCache+`":`, r.Cache)
	dst = appendStringField(dst, `,"`+KeyDecision+`":`, r.Decision)
	dst = appendStringField(dst, `,"`+KeyRule+`":`, r.Rule)
	dst = appendStringField(dst, `,"`+KeyReason+`":`, r.Reason)
	dst = appendStringField(dst, `,"`+KeyError+`":`, r.Error)
	dst = appendStringField(dst, `,"`+KeyEnd+`":`, r.End)
	dst = appendStringField(dst, `,"`+KeyPolicyDecision+`":`, r.PolicyDecision)
	dst = appendStringField(dst, `,"`+KeyPolicyRule+`":`, r.PolicyRule)
	dst = appendStringField(dst, `,"`+KeyPolicyReason+`":`, r.PolicyReason)
	dst = appendStringField(dst, `,"`+KeyGRPCStatus+`":`, r.GRPCStatus)
	dst = appendStringField(dst, `,"`+KeyGRPCMessage+`":`, r.GRPCMessage)
	dst = appendStringField(dst, `,"`+KeyMCPMethod+`":`, r.MCPMethod)
	dst = appendStringField(dst, `,"`+KeyMCPTool+`":`, r.MCPTool)
	dst = appendStringField(dst, `,"`+KeyMCPResource+`":`, r.MCPResource)
	dst = appendStringField(dst, `,"`+KeyMCPPrompt+`":`, r.MCPPrompt)
	dst = appendStringField(dst, `,"`+KeyMCPID+`":`, r.MCPID)
	dst = appendStringField(dst, `,"`+KeyMCPSession+`":`, r.MCPSession)
	dst = appendStringField(dst, `,"`+KeyMCPProtocol+`":`, r.MCPProtocol)
	if r.MCPErrorCode != 0 {
		dst = strconv.AppendInt(append(dst, `,"`+KeyMCPErrorCode+`":`...), int64(r.MCPErrorCode), 10)
	}
	dst = appendListField(dst, `,"`+KeyMCPHidden+`":`, r.MCPHidden)
	dst = appendListField(dst, `,"`+KeyMCPServerMethods+`":`, r.MCPServerMethods)
	dst = appendStringField(dst, `,"`+KeyMCPToolHash+`":`, r.MCPToolHash)
	dst = appendStringField(dst, `,"`+KeyMCPToolPrevHash+`":`, r.MCPToolPrevHash)
	dst = appendListField(dst, `,"`+KeyMCPToolFields+`":`, r.MCPToolFields)
	dst = appendListField(dst, `,"`+KeyTokenAudience+`":`, r.TokenAudience)
	dst = appendListField(dst, `,"`+KeyDetectors+`":`, r.Detectors)
	dst = appendListField(dst, `,"`+KeyCredentials+`":`, r.Credentials)
	dst = appendStringField(dst, `,"`+KeyRequestBody+`":`, r.RequestBody)
	dst = appendStringField(dst, `,"`+KeyResponseBody+`":`, r.ResponseBody)
	if len(r.Header) != 0 {
		dst = r.appendJSONAttrField(dst, fHeader)
	}
	dst = appendStringField(dst, `,"`+KeyDNSName+`":`, r.DNSName)
	dst = appendStringField(dst, `,"`+KeyQType+`":`, r.QType)
	dst = appendStringField(dst, `,"`+KeyRcode+`":`, r.Rcode)
	if len(r.Answers) != 0 {
		dst = append(dst, `,"`+KeyAnswers+`":[`...)
		for i, a := range r.Answers {
			if i > 0 {
				dst = append(dst, ',')
			}
			if !a.IsValid() || a.Zone() != "" { // as encoding/json marshals a.String() in a list
				dst = appendMarshaledString(dst, a.String())
				continue
			}
			dst = append(a.AppendTo(append(dst, '"')), '"')
		}
		dst = append(dst, ']')
	}
	return append(dst, "}\n"...)
}

// appendWorkloadJSON appends the workload's part of an audit line: its
// fields from pid to workload (the client comes before, with the
// connection's port), each when set. It depends on w alone, which is
// what lets a workloadCache keep it.
func appendWorkloadJSON(dst []byte, w *workload.Identity) []byte {
	if w.PID != 0 {
		dst = strconv.AppendInt(append(dst, `,"`+KeyPID+`":`...), int64(w.PID), 10)
		// UID is valid when PID is.
		dst = strconv.AppendUint(append(dst, `,"`+KeyUID+`":`...), uint64(w.UID), 10)
	}
	dst = appendStringField(dst, `,"`+KeyComm+`":`, w.Comm)
	dst = appendStringField(dst, `,"`+KeyExe+`":`, w.Exe)
	dst = appendStringField(dst, `,"`+KeyCgroup+`":`, w.Cgroup)
	dst = appendStringField(dst, `,"`+KeyContainerID+`":`, w.ContainerID)
	dst = appendStringField(dst, `,"`+KeyPodUID+`":`, w.PodUID)
	dst = appendStringField(dst, `,"`+KeyNamespace+`":`, w.Namespace)
	dst = appendStringField(dst, `,"`+KeyPod+`":`, w.Pod)
	dst = appendStringField(dst, `,"`+KeyContainer+`":`, w.Container)
	dst = appendStringField(dst, `,"`+KeyImage+`":`, w.Image)
	if a, ok := labelsAttr(w.Labels); ok {
		dst = appendJSONAttr(append(dst, ','), a)
	}
	return appendJSONString(append(dst, `,"`+KeyWorkload+`":`...), w.Name())
}

// appendStringField appends key (`,"name":`) and v quoted, when v is
// not empty.
func appendStringField(dst []byte, key, v string) []byte {
	if v == "" {
		return dst
	}
	return appendJSONString(append(dst, key...), v)
}

// appendListField appends key (`,"name":`) and v as a JSON array, when
// v is not empty.
func appendListField(dst []byte, key string, v []string) []byte {
	if len(v) == 0 {
		return dst
	}
	dst = append(dst, key...)
	dst = append(dst, '[')
	for i, s := range v {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendMarshaledString(dst, s)
	}
	return append(dst, ']')
}

// appendClient appends the client field when set.
func appendClient(dst []byte, c netip.AddrPort) []byte {
	if !c.IsValid() {
		return dst
	}
	if c.Addr().Zone() != "" { // a zone is any string: quote it
		return appendJSONString(append(dst, `,"`+KeyClient+`":`...), c.String())
	}
	dst = append(dst, `,"`+KeyClient+`":"`...)
	return append(c.AppendTo(dst), '"')
}

// appendAddr appends a quoted, as its String method writes it.
func appendAddr(dst []byte, a netip.Addr) []byte {
	if a.Zone() != "" { // a zone is any string: quote it
		return appendJSONString(dst, a.String())
	}
	dst = append(dst, '"')
	return append(a.AppendTo(dst), '"')
}

// appendJSONAttrField appends ,"key":value for a group or list field,
// through attr.
func (r *Record) appendJSONAttrField(dst []byte, f field) []byte {
	if a, ok := r.attr(f); ok {
		dst = append(dst, ',')
		dst = appendJSONAttr(dst, a)
	}
	return dst
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

// appendMillis appends d in milliseconds with microsecond resolution as
// appendJSONFloat renders float64(d.Microseconds())/1000, without the
// float: below 1e15 µs the value has at most 15 significant digits, so
// its shortest round-trip form is its exact decimal (any two decimals
// of 15 digits are different float64s), zeros trimmed.
func appendMillis(dst []byte, d time.Duration) []byte {
	us := d.Microseconds()
	if us <= -1e15 || us >= 1e15 {
		return appendJSONFloat(dst, float64(us)/1000)
	}
	if us < 0 {
		dst = append(dst, '-')
		us = -us
	}
	dst = strconv.AppendInt(dst, us/1000, 10)
	f := us % 1000
	switch {
	case f == 0:
	case f%100 == 0:
		dst = append(dst, '.', byte('0'+f/100))
	case f%10 == 0:
		dst = append(dst, '.', byte('0'+f/100), byte('0'+f/10%10))
	default:
		dst = append(dst, '.', byte('0'+f/100), byte('0'+f/10%10), byte('0'+f%10))
	}
	return dst
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
	// Most values (hosts, paths, decisions, reasons) are plain: find the
	// first byte that is not, eight bytes at a time, and copy a plain
	// value in one go.
	i := 0
	for i+8 <= len(s) && plain8(s[i:i+8]) {
		i += 8
	}
	for i < len(s) && plainByte(s[i]) {
		i++
	}
	if i == len(s) {
		dst = append(dst, s...)
		return append(dst, '"')
	}
	start := 0
	for i < len(s) {
		if i+8 <= len(s) && plain8(s[i:i+8]) {
			i += 8
			continue
		}
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

// plainByte reports whether appendQuoted copies b as it is: printable
// ASCII other than '"' and '\\'.
func plainByte(b byte) bool { return b >= 0x20 && b < utf8.RuneSelf && b != '"' && b != '\\' }

// plain8 reports whether the 8 bytes of s are all printable ASCII other
// than '"' and '\\' (appendQuoted copies them as they are): no byte below
// 0x20, none from 0x80 (UTF-8 that needs checking), no quote, no
// backslash. The tests are the exact ones of "Bit Twiddling Hacks"
// (haszero, hasless), on the 8 bytes as one word.
func plain8(s string) bool {
	_ = s[7]
	x := uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
	const ones, high = 0x0101010101010101, 0x8080808080808080
	less := (x - 0x20*ones) &^ x        // a byte below 0x20
	q := x ^ '"'*ones                   // a zero byte where '"' was
	bs := x ^ '\\'*ones                 // a zero byte where '\\' was
	zero := (q-ones)&^q | (bs-ones)&^bs // a zero byte in q or bs
	return (less|zero|x)&high == 0      // x&high: a byte from 0x80
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
