package mitm

import (
	"context"
	"time"

	"github.com/sluicehq/sluice/audit"
)

// emit hands a record to the audit sink and writes the canonical decision
// line (audit.LogDecision picks its level: allow and would_deny at Info,
// deny at Warn, errors at Error or, when the client caused them, Warn).
func (p *Proxy) emit(rec *audit.Record) {
	p.setDNSName(rec)
	p.emitNamed(rec)
}

// emitNamed is emit for a record whose DNSName was looked up already
// (flow.setDNSName).
func (p *Proxy) emitNamed(rec *audit.Record) {
	if rec.Duration == 0 {
		rec.Duration = time.Since(rec.Time)
	}
	p.deps.Audit.Record(rec)
	audit.LogDecision(context.Background(), p.log, rec)
}
