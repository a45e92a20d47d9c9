package node

import (
	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/audit"
)

// eventRecord is the audit record of a kernel connect event that never
// reached the proxy: refused in the kernel (deny lists, a forged mark) or
// sent direct (bypass lists, ports not intercepted). Redirected connects
// get the proxy's own records, so they have none here (nil).
func eventRecord(e agent.Event) *audit.Record {
	var decision string
	switch e.Verdict {
	case agent.Denied:
		decision = audit.DecisionDeny
	case agent.Direct:
		decision = audit.DecisionAllow
	default:
		return nil
	}
	rec := &audit.Record{
		Time:     e.Time,
		Kind:     audit.KindConnect,
		Workload: e.Identity(),
		DstIP:    e.Dst.Addr(),
		Port:     e.Dst.Port(),
		Decision: decision,
		Reason:   kernelReason(e.Reason),
		Host:     e.Host, // the agent.bypassHosts name, where known
	}
	return rec
}

// maxEventBatch bounds the records of connect events held before they
// are written, should the ring buffer never run empty.
const maxEventBatch = 64

// eventBatch holds the records of the connect events read since the ring
// buffer was last empty; used on the agent's event goroutine only.
type eventBatch struct{ recs []*audit.Record }

func (b *eventBatch) add(logs audit.Multi, rec *audit.Record) {
	b.recs = append(b.recs, rec)
	if len(b.recs) >= maxEventBatch {
		b.flush(logs)
	}
}

// flush hands the held records to logs at once.
func (b *eventBatch) flush(logs audit.Multi) {
	if len(b.recs) == 0 {
		return
	}
	logs.RecordBatch(b.recs)
	clear(b.recs)
	b.recs = b.recs[:0]
}

// kernelReason names an agent event reason in the records' words.
func kernelReason(r string) string {
	switch r {
	case agent.ReasonDenyCIDR:
		return audit.ReasonKernelDenyCIDR
	case agent.ReasonBypassCIDR:
		return audit.ReasonKernelBypassCIDR
	case agent.ReasonBypassHost:
		return audit.ReasonKernelBypassHost
	case agent.ReasonDenyAddrPort:
		return audit.ReasonKernelAgentPort
	case agent.ReasonPortNotListed:
		return audit.ReasonKernelPortNotListed
	case agent.ReasonNotTCP:
		return audit.ReasonKernelNotTCP
	case agent.ReasonNoIntercept:
		return audit.ReasonKernelNoIntercept
	case agent.ReasonMarkForged:
		return audit.ReasonKernelMarkForged
	case agent.ReasonDenyCIDRPacket:
		return audit.ReasonKernelDenyPacket
	}
	return r
}
