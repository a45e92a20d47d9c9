package mitm

import (
	"context"
	"log/slog"
	"time"

	"github.com/sluicehq/sluice/audit"
)

// clientCaused are error reasons that say the client misbehaved or left.
var clientCaused = map[string]bool{
	reasonClientGone: true, reasonMalformed: true, reasonHeaderTooLarge: true,
	reasonSmuggling: true, reasonNotProxy: true, reasonBadHello: true,
	reasonClientHandshake: true, reasonClientSilent: true,
}

// emit hands a record to the audit sink and writes the canonical log line:
// allow at Info, deny at Warn, errors at Error.
func (p *Proxy) emit(rec *audit.Record) {
	if rec.Duration == 0 {
		rec.Duration = time.Since(rec.Time)
	}
	p.deps.Audit.Record(rec)
	level := slog.LevelInfo
	switch rec.Decision {
	case audit.DecisionDeny, audit.DecisionWouldDeny:
		level = slog.LevelWarn
	case audit.DecisionError:
		level = slog.LevelError
		if clientCaused[rec.Reason] {
			level = slog.LevelWarn // the client's doing, not an internal failure
		}
	}
	if !p.log.Enabled(context.Background(), level) {
		return
	}
	// Room for every attribute on the stack: no growing, no closure.
	var buf [maxDecisionAttrs]slog.Attr
	attrs := append(buf[:0],
		slog.String("kind", rec.Kind),
		slog.String("workload", rec.Workload.Name()),
		slog.String("decision", rec.Decision),
	)
	if rec.Workload.Client.IsValid() {
		attrs = append(attrs, slog.String("client", rec.Workload.Client.String()))
	}
	attrs = appendNonEmpty(attrs, "host", rec.Host)
	if rec.DstIP.IsValid() {
		attrs = append(attrs, slog.String("ip", rec.DstIP.String()))
	}
	if rec.Port != 0 {
		attrs = append(attrs, slog.Int("port", int(rec.Port)))
	}
	attrs = appendNonEmpty(attrs, "sni", rec.SNI)
	attrs = appendNonEmpty(attrs, "tls", rec.TLS)
	attrs = appendNonEmpty(attrs, "method", rec.Method)
	attrs = appendNonEmpty(attrs, "path", rec.Path)
	if rec.Status != 0 {
		attrs = append(attrs, slog.Int("status", rec.Status))
	}
	attrs = appendNonEmpty(attrs, "rule", rec.Rule)
	attrs = appendNonEmpty(attrs, "reason", rec.Reason)
	attrs = appendNonEmpty(attrs, "error", rec.Error)
	attrs = append(attrs, slog.Int64("bytes_in", rec.BytesIn), slog.Int64("bytes_out", rec.BytesOut),
		slog.Float64("duration_ms", float64(rec.Duration.Microseconds())/1000))
	p.log.LogAttrs(context.Background(), level, "decision", attrs...)
}

// maxDecisionAttrs is the most attributes emit puts on a decision line.
const maxDecisionAttrs = 18

func appendNonEmpty(attrs []slog.Attr, k, v string) []slog.Attr {
	if v == "" {
		return attrs
	}
	return append(attrs, slog.String(k, v))
}
