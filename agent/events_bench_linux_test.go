package agent

import (
	"os"
	"testing"
	"unsafe"

	"github.com/sluicehq/sluice/bpf"
)

// BenchmarkEvent is the agent's share of a connect event, as readEvents
// runs it on a ring buffer sample: decode, the Event (cgroup name, comm),
// the bypassHosts name and the identity with the process image's exe
// from the cache (made once for a run of one process's events), for an
// unredirected UDP connect. node's
// BenchmarkConnectEvent is the rest (metrics, flows, the audit line);
// BenchmarkConnectHook (test/, root) measures both on a running sluice.
func BenchmarkEvent(b *testing.B) {
	a := &Agent{names: newCgroupNames("/sys/fs/cgroup"), exes: newExeCache(exeCacheSize)}
	a.names.add(42, "/sluice-run-1234")
	e := bpf.SluiceEvent{
		Addr:      [16]uint8{10: 0xff, 11: 0xff, 12: 198, 13: 18, 14: 0, 15: 9},
		Port:      9,
		Verdict:   uint8(bpf.SluiceVerdictVERDICT_DIRECT),
		Reason:    uint8(bpf.SluiceReasonREASON_NOT_TCP),
		Pid:       uint32(os.Getpid()),
		Protocol:  17,
		CgroupId:  42,
		StartTime: 1, ExecId: 1,
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&e.Comm[0])), len(e.Comm)), "connect-loop")
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&e)), unsafe.Sizeof(e))
	comms := commNames{}
	var ids identityMemo
	wall := wallMinusMonotonic()
	b.ReportAllocs()
	for b.Loop() {
		d, ok := decodeEvent(raw)
		if !ok {
			b.Fatal("decode failed")
		}
		ev := a.event(d, wall, comms)
		a.eventHost(&ev)
		ev.id = ids.identity(a, &ev)
		if id := ev.Identity(); id.Exe == "" || id.Comm != "connect-loop" || id.Cgroup != "/sluice-run-1234" {
			b.Fatalf("identity %+v", id)
		}
	}
}
