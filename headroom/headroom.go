// Package headroom lets the Go heap grow by a fixed amount between
// garbage collections, however little of it is live.
//
// With Go's default pacing (GOGC=100) a collection starts when the heap
// has grown by as much as was live after the last one. A proxy carrying a
// few hundred connections holds a few MB to a few tens of MB live and
// allocates a few KB per request, so it collects tens of times a second,
// and every cycle pays costs that don't shrink with the heap: scanning each
// goroutine's stack, write barriers on while it marks, assists. Headroom
// lets the heap grow by a fixed size before a cycle starts, but never by
// more than 4 times what is live (GOGC=400). Once more than the headroom
// is live, GOGC's own goal is the larger and applies unchanged, so 10,000
// idle connections cost what they did.
//
// More headroom is not cheaper. Between two cycles the allocations move
// through memory the caches no longer hold, and each one's first write
// misses. Under the bench (docs/performance.md, "After 375bf10"), 64 MiB
// cost the proxy 5-7% more CPU per request than Go's own pacing,
// collector included, and 16 MiB what Go's pacing did. So Sluice leaves
// it off by default (process.gcHeadroom); it is for a process whose live
// heap is small enough that the cycles' fixed costs show.
//
// It works through GOGC itself (debug.SetGCPercent): after every cycle it
// sets the percent that gives the next cycle that growth, never below the
// percent the process started with (GOGC from the environment, else 100).
// The runtime computes a cycle's goal as the cycle ends, from the percent
// set after the cycle before: a live heap that grew is paced by the old
// percent until the new one is set, which is why the percent stays at or
// below 400 (at most 5 times the live heap for that moment, as GOGC=400
// would always). A memory limit (GOMEMLIMIT) still caps the heap: Go takes
// the lower of the two goals.
package headroom

import (
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"

	"github.com/sluicehq/sluice/audit"
)

// goMinimumHeap is the runtime's smallest heap goal at GOGC=100
// (defaultHeapMinimum in runtime/mgcpacer.go). The runtime scales it with
// the percent, so a percent above 100 × (live + headroom) / goMinimumHeap
// would set a goal above live + headroom.
const goMinimumHeap = 4 << 20

// Min is the smallest headroom Start takes: the runtime's own minimum heap.
const Min = goMinimumHeap

// maxPercent bounds the percent headroom sets (not the process's own
// GOGC): the goal of a cycle paced by a stale percent is at most
// 1 + maxPercent/100 times its live heap.
const maxPercent = 400

// running is the process's one Headroom: GOGC is one setting per process.
var running sync.Mutex

// Headroom is a running headroom setting.
type Headroom struct {
	bytes uint64
	base  int

	// mu orders the cycles' settings against Stop's.
	mu      sync.Mutex
	stopped bool
	samples [3]metrics.Sample
}

// Start lets the heap grow by at least bytes between collections, until
// Stop. It returns nil (and changes nothing) when bytes is below Min,
// when GOGC is off, or when another Headroom runs in this process. log
// gets one line at start; nil means slog.Default().
func Start(bytes int64, log *slog.Logger) *Headroom {
	if bytes < Min {
		return nil
	}
	if log == nil {
		log = slog.Default()
	}
	if !running.TryLock() {
		log.Debug("gc headroom not set: another is already set in this process", audit.KeyGCHeadroom, bytes)
		return nil
	}
	gogc := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(gogc)
	base := int(gogc[0].Value.Uint64()) // GOGC=off: -1, stored as uint64
	if base < 0 {
		running.Unlock()
		log.Info("gc headroom not set: GOGC is off", audit.KeyGCHeadroom, bytes)
		return nil
	}
	h := &Headroom{bytes: uint64(bytes), base: base}
	h.samples[0].Name = "/gc/heap/live:bytes"
	h.samples[1].Name = "/gc/scan/stack:bytes"
	h.samples[2].Name = "/gc/scan/globals:bytes"
	h.cycle()
	log.Info("gc headroom set", audit.KeyGCHeadroom, bytes, audit.KeyGOGC, base)
	return h
}

// Stop ends the setting and puts GOGC back to what it was at Start. It
// may be called more than once, and on a nil Headroom.
func (h *Headroom) Stop() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	h.stopped = true
	debug.SetGCPercent(h.base)
	running.Unlock()
}

// cycle sets the percent for the heap that the last cycle left live and
// arms itself for the next cycle: a cleanup on an object nothing keeps
// runs once a cycle has found it unreachable.
func (h *Headroom) cycle() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	metrics.Read(h.samples[:])
	live, roots := h.samples[0].Value.Uint64(), h.samples[1].Value.Uint64()+h.samples[2].Value.Uint64()
	debug.SetGCPercent(Percent(h.base, h.bytes, live, roots))
	runtime.AddCleanup(&sentinel{}, (*Headroom).cycle, h)
}

// sentinel holds a pointer so that it is never batched with other
// objects by the tiny allocator (which would delay its cleanup).
type sentinel struct {
	_ *byte
	_ [8]byte
}

// Percent is the GOGC that lets the heap grow by headroom after a cycle
// that left live bytes live with roots bytes of stacks and globals to
// scan: Go's goal is live + (live + roots) × GOGC/100. It is never below
// base, the process's own GOGC, and otherwise never above maxPercent nor
// the percent whose minimum heap (4 MiB × GOGC/100) is more than live +
// headroom.
func Percent(base int, headroom, live, roots uint64) int {
	most := min(100*(live+headroom)/goMinimumHeap, maxPercent)
	p := most
	if live+roots > 0 {
		p = min((100*headroom+live+roots-1)/(live+roots), most)
	}
	return max(int(p), base)
}
