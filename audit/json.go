package audit

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
)

// JSONLog writes one JSON object per line for every record, through a
// log/slog JSON handler. The message is always MsgAudit ("audit"); the
// keys are those of keys.go, rendered by AppendAttrs.
type JSONLog struct {
	h slog.Handler
}

// NewJSONLog writes records to w. w must be safe for concurrent writes of
// whole lines (an *os.File is).
func NewJSONLog(w io.Writer) *JSONLog {
	return &JSONLog{h: slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})}
}

var _ Sink = (*JSONLog)(nil)

// Record implements Sink.
func (l *JSONLog) Record(r *Record) {
	var buf [len(auditFields)]slog.Attr
	rec := slog.NewRecord(r.Time, slog.LevelInfo, MsgAudit, 0)
	rec.AddAttrs(r.AppendAttrs(buf[:0])...)
	_ = l.h.Handle(context.Background(), rec)
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
