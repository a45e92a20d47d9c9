package audit

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
)

// JSONLog writes one JSON object per line for every record, through a
// log/slog JSON handler. The message is always "audit".
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
	rec := slog.NewRecord(r.Time, slog.LevelInfo, "audit", 0)
	rec.AddAttrs(r.Attrs()...)
	_ = l.h.Handle(context.Background(), rec)
}

// Attrs renders the record as slog attributes, omitting empty fields.
func (r *Record) Attrs() []slog.Attr {
	a := make([]slog.Attr, 0, 32)
	str := func(k, v string) {
		if v != "" {
			a = append(a, slog.String(k, v))
		}
	}
	num := func(k string, v int64) {
		if v != 0 {
			a = append(a, slog.Int64(k, v))
		}
	}
	str("kind", r.Kind)
	w := r.Workload
	if w.Client.IsValid() {
		a = append(a, slog.String("client", w.Client.String()))
	}
	if w.PID != 0 {
		a = append(a, slog.Int("pid", w.PID), slog.Any("uid", w.UID))
	}
	str("comm", w.Comm)
	str("exe", w.Exe)
	str("cgroup", w.Cgroup)
	str("container_id", w.ContainerID)
	str("pod_uid", w.PodUID)
	str("namespace", w.Namespace)
	str("pod", w.Pod)
	a = append(a, slog.String("workload", w.Name()))
	str("host", r.Host)
	if r.DstIP.IsValid() {
		a = append(a, slog.String("ip", r.DstIP.String()))
	}
	num("port", int64(r.Port))
	str("sni", r.SNI)
	str("tls", r.TLS)
	str("alpn", r.ALPN)
	str("proto", r.Proto)
	str("method", r.Method)
	str("path", r.Path)
	num("status", int64(r.Status))
	str("source", r.Source)
	a = append(a, slog.Int64("bytes_in", r.BytesIn), slog.Int64("bytes_out", r.BytesOut))
	a = append(a, slog.Float64("duration_ms", float64(r.Duration.Microseconds())/1000))
	if r.UpstreamDuration != 0 {
		a = append(a, slog.Float64("upstream_ms", float64(r.UpstreamDuration.Microseconds())/1000))
	}
	str("upstream_addr", r.UpstreamAddr)
	str("decision", r.Decision)
	str("rule", r.Rule)
	str("reason", r.Reason)
	str("error", r.Error)
	str("mcp_method", r.MCPMethod)
	str("mcp_tool", r.MCPTool)
	str("mcp_session", r.MCPSession)
	if len(r.Header) > 0 {
		keys := make([]string, 0, len(r.Header))
		for k := range r.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		ha := make([]any, 0, len(keys))
		for _, k := range keys {
			ha = append(ha, slog.String(k, r.Header[k]))
		}
		a = append(a, slog.Group("header", ha...))
	}
	return a
}

// Redacted is what a redacted header value is replaced with.
const Redacted = "[REDACTED]"

// alwaysRedacted are header names whose values never reach a log.
var alwaysRedacted = map[string]bool{
	"Authorization":       true,
	"Proxy-Authorization": true,
	"Cookie":              true,
	"Set-Cookie":          true,
	"X-Api-Key":           true,
}

// Redact flattens h into one value per name (joined with ", "), replacing
// the values of Authorization, Proxy-Authorization, Cookie, Set-Cookie,
// X-Api-Key and of every name in extra (case-insensitive) with Redacted.
func Redact(h http.Header, extra []string) map[string]string {
	if len(h) == 0 {
		return nil
	}
	out := make(map[string]string, len(h))
	for k, v := range h {
		ck := http.CanonicalHeaderKey(k)
		secret := alwaysRedacted[ck]
		for _, e := range extra {
			if strings.EqualFold(e, ck) {
				secret = true
				break
			}
		}
		if secret {
			out[ck] = Redacted
			continue
		}
		out[ck] = strings.Join(v, ", ")
	}
	return out
}
