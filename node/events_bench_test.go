package node

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/flows"
	"github.com/sluicehq/sluice/metrics"
)

// BenchmarkConnectEvent is the node's share of an unredirected connect
// event, as `sluice run` and the agent handle one: metrics, the flows
// table and the audit line, written to a file a batch (maxEventBatch) at
// a time. The event names no pid, so its identity reads no exe (agent's
// BenchmarkEvent covers the exe cache).
func BenchmarkConnectEvent(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "audit.jsonl"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := &eventSink{metrics: metrics.New(metrics.Options{}), flows: flows.New(flows.Options{}), logs: audit.Multi{audit.NewJSONLog(f)}}
	e := agent.Event{
		Time: time.Now(), Verdict: agent.Direct, Reason: agent.ReasonNotTCP,
		Dst: netip.MustParseAddrPort("198.18.0.9:9"), Protocol: 17,
		Comm: "connect-loop", UID: 1000, CgroupID: 42, Cgroup: "/sluice-run-1234",
	}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		s.event(e)
		if n++; n%maxEventBatch == 0 {
			s.batchEnd()
		}
	}
	s.batchEnd()
	if st, err := f.Stat(); err != nil || st.Size() == 0 {
		b.Fatalf("audit log: %v, %v", st, err)
	}
}
