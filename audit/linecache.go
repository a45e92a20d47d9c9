package audit

import (
	"maps"
	"net/netip"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/workload"
)

// lineCache keeps the parts of a JSONLog's lines that recent lines
// share. The bytes it serves are those AppendJSON writes.
type lineCache struct {
	wl   workloadCache
	tm   timeCache
	conn connectCache
}

// connectCache keeps the line of the kernel connect record (KindConnect)
// written last, after its time. The agent's events come in runs of one
// process connecting to one destination, whose records differ in their
// time alone: such a record's line is its time and the kept bytes, not
// some forty fields tested and encoded again. A record is served them
// only when every field but Time equals the kept record's
// (sameButTime), and a record with a list or a map is never kept. Safe
// for concurrent use (mu); connect records come from the agent's event
// goroutine.
type connectCache struct {
	mu   sync.Mutex
	ok   bool   // rec and body are a record and its line
	rec  Record // Time zero
	body []byte // appendBody's bytes for rec
}

// appendBody appends r's line after its time, from the kept bytes when
// r is the kept record but for its time, else encoded (and kept).
func (cc *connectCache) appendBody(dst []byte, r *Record, c *lineCache) []byte {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.ok && sameButTime(&cc.rec, r) {
		return append(dst, cc.body...)
	}
	start := len(dst)
	dst = r.appendBody(dst, c)
	cc.ok = flat(r)
	if cc.ok {
		cc.rec = *r
		cc.rec.Time = time.Time{}
		cc.body = append(cc.body[:0], dst[start:]...)
	}
	return dst
}

// flat reports whether r has no list or map field set (sameButTime
// compares the others).
func flat(r *Record) bool {
	return len(r.Workload.Labels) == 0 && len(r.MCPHidden) == 0 && len(r.MCPServerMethods) == 0 &&
		len(r.MCPToolFields) == 0 && len(r.TokenAudience) == 0 && len(r.Detectors) == 0 &&
		len(r.Credentials) == 0 && len(r.Header) == 0 && len(r.Answers) == 0
}

// sameButTime reports whether flat records a and b are equal in every
// field but Time (and so make the same line after it).
// TestConnectCacheNeverStale fails when a field of Record is missing
// here.
func sameButTime(a, b *Record) bool {
	return flat(b) && a.Kind == b.Kind && a.Workload.Client == b.Workload.Client && sameWorkload(&a.Workload, &b.Workload) &&
		a.Host == b.Host && a.DstIP == b.DstIP && a.Port == b.Port && a.SNI == b.SNI && a.TLS == b.TLS && a.ALPN == b.ALPN &&
		a.Proto == b.Proto && a.Method == b.Method && a.Path == b.Path && a.Status == b.Status && a.Source == b.Source &&
		a.BytesIn == b.BytesIn && a.BytesOut == b.BytesOut && a.Duration == b.Duration && a.UpstreamDuration == b.UpstreamDuration &&
		a.Decision == b.Decision && a.Rule == b.Rule && a.Reason == b.Reason && a.Error == b.Error && a.End == b.End &&
		a.PolicyDecision == b.PolicyDecision && a.PolicyRule == b.PolicyRule && a.PolicyReason == b.PolicyReason &&
		a.GRPCStatus == b.GRPCStatus && a.GRPCMessage == b.GRPCMessage &&
		a.MCPMethod == b.MCPMethod && a.MCPTool == b.MCPTool && a.MCPResource == b.MCPResource && a.MCPPrompt == b.MCPPrompt &&
		a.MCPID == b.MCPID && a.MCPSession == b.MCPSession && a.MCPProtocol == b.MCPProtocol && a.MCPErrorCode == b.MCPErrorCode &&
		a.MCPToolHash == b.MCPToolHash && a.MCPToolPrevHash == b.MCPToolPrevHash &&
		a.RequestBody == b.RequestBody && a.ResponseBody == b.ResponseBody && a.UpstreamAddr == b.UpstreamAddr && a.Cache == b.Cache &&
		a.DNSName == b.DNSName && a.QType == b.QType && a.Rcode == b.Rcode
}

// workloadCache keeps, for the workloads seen last, the part of the
// audit line their fields make (appendWorkloadJSON: pid to workload,
// some 300 bytes of a Kubernetes pod's line with its cgroup path,
// container id and labels, sorted). Every request of a process carries
// the same workload, so the line reuses those bytes instead of quoting
// and sorting them again.
//
// A fragment is served only for a workload equal to the one it was made
// from in every field it depends on (all but Client), labels compared
// by content unless the very same map (workload.Identity: callers never
// modify a labels map, identities share it). It is direct mapped by
// process: a workload that takes another's slot replaces it, and the
// next request of the other encodes its fragment again. Safe for
// concurrent use: a slot holds an immutable entry, replaced whole.
type workloadCache struct {
	slots [workloadSlots]atomic.Pointer[workloadEntry]
}

// workloadSlots is the number of workloads kept (a power of two).
const workloadSlots = 64

// workloadEntry is one workload and its fragment; never modified once
// stored.
type workloadEntry struct {
	id   workload.Identity // Client cleared: not part of the fragment
	frag []byte
}

// fragment returns appendWorkloadJSON's bytes for w. The caller must not
// modify them.
func (c *workloadCache) fragment(w *workload.Identity) []byte {
	slot := &c.slots[workloadSlot(w)]
	if e := slot.Load(); e != nil && sameWorkload(&e.id, w) {
		return e.frag
	}
	e := &workloadEntry{id: *w}
	e.id.Client = netip.AddrPort{}
	e.frag = appendWorkloadJSON(nil, w)
	slot.Store(e)
	return e.frag
}

// workloadSlot picks w's slot (Identity.Spread).
func workloadSlot(w *workload.Identity) uint {
	return uint(w.Spread() % workloadSlots)
}

// sameWorkload reports whether a and b give the same fragment: equal in
// every field but Client.
func sameWorkload(a, b *workload.Identity) bool {
	return a.PID == b.PID && a.UID == b.UID && a.Comm == b.Comm && a.Exe == b.Exe &&
		a.Cgroup == b.Cgroup && a.ContainerID == b.ContainerID && a.PodUID == b.PodUID &&
		a.Container == b.Container && a.Image == b.Image && a.Namespace == b.Namespace &&
		a.Pod == b.Pod && sameLabels(a.Labels, b.Labels)
}

// sameLabels reports whether a and b hold the same labels: at once when
// they are the same map, else by content.
func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer() {
		return true
	}
	return maps.Equal(a, b)
}

// timeCache keeps the text of the second the last lines fell in:
// RFC3339Nano's date and time to the second, and its zone, for one
// location. A line of the same second and location appends them around
// its fraction instead of formatting the date again. Safe for
// concurrent use: the entry is immutable, replaced whole.
type timeCache struct {
	last atomic.Pointer[timeEntry]
}

type timeEntry struct {
	sec  int64          // Unix seconds
	loc  *time.Location // the zone is the location's at sec
	head []byte         // "2006-01-02T15:04:05"
	zone []byte         // "Z" or "-07:00"
}

// appendTime appends t as t.AppendFormat(dst, time.RFC3339Nano) does.
func (c *timeCache) appendTime(dst []byte, t time.Time) []byte {
	sec, loc := t.Unix(), t.Location()
	e := c.last.Load()
	if e == nil || e.sec != sec || e.loc != loc {
		whole := time.Unix(sec, 0).In(loc).AppendFormat(nil, time.RFC3339Nano)
		// Years outside 0000-9999 have another width: not cached.
		if y := t.Year(); y < 0 || y > 9999 || len(whole) < len(rfc3339Head) {
			return t.AppendFormat(dst, time.RFC3339Nano)
		}
		e = &timeEntry{sec: sec, loc: loc, head: whole[:len(rfc3339Head)], zone: whole[len(rfc3339Head):]}
		c.last.Store(e)
	}
	dst = append(dst, e.head...)
	if ns := t.Nanosecond(); ns != 0 { // .999999999: trailing zeros trimmed
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i > 0; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		dst = append(dst, frac[:n]...)
	}
	return append(dst, e.zone...)
}

// rfc3339Head is the date and time of RFC3339Nano, to the second.
const rfc3339Head = "2006-01-02T15:04:05"
