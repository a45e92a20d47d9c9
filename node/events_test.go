package node

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/audit"
)

func TestEventRecord(t *testing.T) {
	dst := netip.MustParseAddrPort("198.18.0.9:443")
	for _, tc := range []struct {
		name     string
		e        agent.Event
		decision string // "" for no record
		reason   string
	}{
		{name: "redirected: the proxy records it", e: agent.Event{Verdict: agent.Redirected, Reason: agent.ReasonPort}},
		{name: "denied in the kernel", e: agent.Event{Verdict: agent.Denied, Reason: agent.ReasonDenyCIDR},
			decision: audit.DecisionDeny, reason: audit.ReasonKernelDenyCIDR},
		{name: "sent direct by the bypass list", e: agent.Event{Verdict: agent.Direct, Reason: agent.ReasonBypassCIDR},
			decision: audit.DecisionAllow, reason: audit.ReasonKernelBypassCIDR},
		{name: "sent direct for a name of bypassHosts", e: agent.Event{Verdict: agent.Direct, Reason: agent.ReasonBypassHost, Host: "api.example.com"},
			decision: audit.DecisionAllow, reason: audit.ReasonKernelBypassHost},
		{name: "a reason this file does not know keeps its name", e: agent.Event{Verdict: agent.Denied, Reason: "something_new"},
			decision: audit.DecisionDeny, reason: "something_new"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.e
			e.Time, e.Dst, e.PID, e.Comm = time.Now(), dst, -1, "curl"
			e.Cgroup = "/kubepods.slice/kubepods-pod0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope"
			rec := &audit.Record{}
			ok := eventRecord(rec, e)
			if tc.decision == "" {
				if ok || rec.Kind != "" {
					t.Fatalf("record %+v (%v), want none", rec, ok)
				}
				return
			}
			if !ok || rec.Kind != audit.KindConnect || rec.Decision != tc.decision || rec.Reason != tc.reason ||
				rec.DstIP != dst.Addr() || rec.Port != 443 || rec.Workload.Comm != "curl" || rec.Workload.ContainerID == "" {
				t.Fatalf("record %+v", rec)
			}
			if rec.Host != tc.e.Host {
				t.Errorf("record host %q, want %q", rec.Host, tc.e.Host)
			}
		})
	}
}

type portSink struct{ batches [][]uint16 }

func (s *portSink) Record(r *audit.Record) { s.batches = append(s.batches, []uint16{r.Port}) }

func (s *portSink) RecordBatch(rs []*audit.Record) {
	var b []uint16
	for _, r := range rs {
		b = append(b, r.Port)
	}
	s.batches = append(s.batches, b)
}

// Connect events' records are held until the batch ends, and never more
// than maxEventBatch of them.
func TestEventBatchWritesAtTheEndOrWhenFull(t *testing.T) {
	s := &portSink{}
	logs := audit.Multi{s}
	var b eventBatch
	add := func(port uint16) {
		b.next().Port = port
		b.add(logs)
	}
	add(1)
	add(2)
	if len(s.batches) != 0 {
		t.Fatalf("records written before the batch ended: %v", s.batches)
	}
	b.flush(logs)
	b.flush(logs) // nothing held: nothing written
	if len(s.batches) != 1 || len(s.batches[0]) != 2 || s.batches[0][1] != 2 {
		t.Fatalf("batches %v, want [[1 2]]", s.batches)
	}
	// The records written are reused, cleared: the next starts at zero.
	if r := b.next(); r.Port != 0 {
		t.Fatalf("record after a flush has port %d, want a zero record", r.Port)
	}
	for i := range maxEventBatch {
		add(uint16(100 + i))
	}
	if len(s.batches) != 2 || len(s.batches[1]) != maxEventBatch || s.batches[1][0] != 100 || s.batches[1][maxEventBatch-1] != 100+maxEventBatch-1 {
		t.Errorf("batches %v, want a second of %d records (100...) when full", s.batches, maxEventBatch)
	}
}
