package node

import (
	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/flows"
	"github.com/sluicehq/sluice/metrics"
)

// eventSink is what the node does with the agent's connect events
// (agent.Options.OnEvent and OnBatchEnd): count each in the metrics, add
// it to the flows table, and record what never reached the proxy, the
// records of a batch of events at once (one write, not one per event).
type eventSink struct {
	metrics *metrics.Metrics
	flows   *flows.Table
	logs    audit.Multi
	// batch is the event goroutine's alone: event runs on the proxy's
	// connection goroutines too, for redirects, which have no record.
	batch eventBatch
}

// event handles one connect event; safe for concurrent use as
// agent.Options.OnEvent requires.
func (s *eventSink) event(e agent.Event) {
	s.metrics.ConnectEvent(string(e.Verdict))
	s.flows.ConnectAt(e.Time, e.PID, e.Comm, e.Cgroup, e.Dst, string(e.Verdict))
	if e.Verdict == agent.Redirected {
		return // the proxy records it
	}
	if !eventRecord(s.batch.next(), e) {
		return
	}
	s.batch.add(s.logs)
}

// batchEnd writes the records held; on the event goroutine only.
func (s *eventSink) batchEnd() { s.batch.flush(s.logs) }

// eventRecord fills rec, a zero record, with the audit record of a kernel
// connect event that never reached the proxy: refused in the kernel (deny
// lists, a forged mark) or sent direct (bypass lists, ports not
// intercepted), and reports true. Redirected connects get the proxy's own
// records, so they have none here (false, rec untouched).
func eventRecord(rec *audit.Record, e agent.Event) bool {
	var decision string
	switch e.Verdict {
	case agent.Denied:
		decision = audit.DecisionDeny
	case agent.Direct:
		decision = audit.DecisionAllow
	default:
		return false
	}
	rec.Time = e.Time
	rec.Kind = audit.KindConnect
	rec.Workload = e.Identity()
	rec.DstIP = e.Dst.Addr()
	rec.Port = e.Dst.Port()
	rec.Decision = decision
	rec.Reason = kernelReason(e.Reason)
	rec.Host = e.Host // the agent.bypassHosts name, where known
	return true
}

// maxEventBatch bounds the records of connect events held before they
// are written, should the ring buffer never run empty.
const maxEventBatch = 64

// eventBatch holds the records of the connect events read since the ring
// buffer was last empty; used on the agent's event goroutine only. The
// records live in the batch and are reused once written (a Sink must not
// retain a record), so an event costs no record allocation.
type eventBatch struct {
	store [maxEventBatch]audit.Record
	recs  []*audit.Record
}

// next returns the zero record that add would hold next.
func (b *eventBatch) next() *audit.Record { return &b.store[len(b.recs)] }

// add holds the record next returned, filled; when the batch is full it
// writes them all.
func (b *eventBatch) add(logs audit.Multi) {
	b.recs = append(b.recs, b.next())
	if len(b.recs) >= maxEventBatch {
		b.flush(logs)
	}
}

// flush hands the held records to logs at once and clears them.
func (b *eventBatch) flush(logs audit.Multi) {
	if len(b.recs) == 0 {
		return
	}
	logs.RecordBatch(b.recs)
	clear(b.store[:len(b.recs)])
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
