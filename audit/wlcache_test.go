package audit

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicehq/sluice/workload"
)

// fullRecord sets every field of a record, so that a line made from it
// carries every key of auditFields.
func fullRecord() Record {
	return Record{
		Time: time.Date(2026, 11, 29, 16, 9, 1, 123456789, time.UTC), Kind: KindHTTP,
		Workload: workload.Identity{Client: netip.MustParseAddrPort("10.0.0.5:40000"), PID: 42, UID: 1000, Comm: "python3",
			Exe: "/usr/bin/python3", Cgroup: "/kubepods/pod1/cri-containerd-1.scope", ContainerID: "c1", PodUID: "u1",
			Container: "agent", Image: "reg/agent:1", Namespace: "ns", Pod: "agent-0", Labels: map[string]string{"b": "2", "a": "1"}},
		Host: "api.example.com", DstIP: netip.MustParseAddr("192.0.2.10"), Port: 443, SNI: "sni.example.com",
		TLS: TLSDecrypted, ALPN: "h2", Proto: "HTTP/2.0", Method: "POST", Path: "/v1/messages", Status: 200,
		Source: SourceUpstream, BytesIn: 512, BytesOut: 4096, Duration: 1234567 * time.Microsecond,
		UpstreamDuration: 1200 * time.Millisecond, UpstreamAddr: "192.0.2.10:443", Cache: "hit", Decision: DecisionError,
		Rule: "llm", Reason: ReasonUpstreamUnreachable, Error: "boom", End: EndClientClosed,
		PolicyDecision: DecisionAllow, PolicyRule: "llm", PolicyReason: ReasonAllowedByRule,
		GRPCStatus: "5", GRPCMessage: "not found",
		MCPMethod: "tools/call", MCPTool: "search", MCPResource: "file:///x", MCPPrompt: "p", MCPID: `"7"`, MCPSession: "s1",
		MCPProtocol: "2025-06-18", MCPErrorCode: -32602, MCPHidden: []string{"shell"},
		MCPServerMethods: []string{"sampling/createMessage"}, MCPToolHash: "ab", MCPToolPrevHash: "cd",
		MCPToolFields: []string{"description"}, TokenAudience: []string{"https://mcp.example.com"},
		Detectors: []string{"aws-access-key-id"}, Credentials: []string{"openai"},
		RequestBody: `{"a":1}`, ResponseBody: "ok\n",
		Header:  map[string]string{"User-Agent": "x/1", "Authorization": Redacted},
		DNSName: "api.example.com", QType: "A", Rcode: "NOERROR",
		Answers: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("fe80::1%eth\b0")},
	}
}

// TestFullRecordIsFull: fullRecord leaves no field of the line out, so
// that TestJSONLogEveryField checks the order of every key.
func TestFullRecordIsFull(t *testing.T) {
	r := fullRecord()
	if n := len(r.Attrs()); n != len(auditFields) {
		t.Fatalf("fullRecord renders %d attributes, auditFields has %d: set the new field", n, len(auditFields))
	}
}

// TestPlain8 compares the word test with a byte at a time: every byte
// value at every position, and random words.
func TestPlain8(t *testing.T) {
	plain := func(b byte) bool { return b >= 0x20 && b < 0x80 && b != '"' && b != '\\' }
	naive := func(s string) bool {
		for i := 0; i < 8; i++ {
			if !plain(s[i]) {
				return false
			}
		}
		return true
	}
	for _, fill := range []byte{'a', ' ', 0x7f, '!', '#', '[', ']', 0x00, 0xff, '"', '\\'} {
		for pos := 0; pos < 8; pos++ {
			for v := 0; v < 256; v++ {
				b := []byte{fill, fill, fill, fill, fill, fill, fill, fill}
				b[pos] = byte(v)
				if got, want := plain8(string(b)), naive(string(b)); got != want {
					t.Fatalf("plain8(%q) = %v, want %v", b, got, want)
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		var b [8]byte
		for i := range b {
			b[i] = byte(rng.IntN(256))
			if rng.IntN(2) == 0 { // mostly plain, so that one bad byte is the case
				b[i] = byte(0x20 + rng.IntN(0x60))
			}
		}
		if got, want := plain8(string(b[:])), naive(string(b[:])); got != want {
			t.Fatalf("plain8(%q) = %v, want %v", b, got, want)
		}
	}
}

// TestWorkloadCacheNeverStale: a workload that differs from the cached
// one in any field the fragment shows gets its own fragment; one that
// differs in Client alone, or holds equal labels in another map, shares
// it.
func TestWorkloadCacheNeverStale(t *testing.T) {
	base := fullRecord().Workload
	variants := []func(w *workload.Identity){
		func(w *workload.Identity) {},
		func(w *workload.Identity) { w.Client = netip.MustParseAddrPort("10.0.0.5:40001") },
		func(w *workload.Identity) { w.PID++ },
		func(w *workload.Identity) { w.PID = 0 },
		func(w *workload.Identity) { w.UID++ },
		func(w *workload.Identity) { w.Comm = "python4" },
		func(w *workload.Identity) { w.Exe = "" },
		func(w *workload.Identity) { w.Cgroup = "/kubepods/pod1/cri-containerd-2.scope" },
		func(w *workload.Identity) { w.ContainerID = "c2" },
		func(w *workload.Identity) { w.PodUID = "u2" },
		func(w *workload.Identity) { w.Container = "other" },
		func(w *workload.Identity) { w.Image = "reg/agent:2" },
		func(w *workload.Identity) { w.Namespace = "ns2" },
		func(w *workload.Identity) { w.Pod = "agent-1" },
		func(w *workload.Identity) { w.Labels = map[string]string{"b": "2", "a": "1"} }, // equal, another map
		func(w *workload.Identity) { w.Labels = map[string]string{"b": "2", "a": "9"} },
		func(w *workload.Identity) { w.Labels = map[string]string{"b": "2", "c": "1"} },
		func(w *workload.Identity) { w.Labels = map[string]string{"b": "2"} },
		func(w *workload.Identity) { w.Labels = nil },
		func(w *workload.Identity) { w.Labels = map[string]string{} },
	}
	var c workloadCache
	r := fullRecord()
	// Every order of two variants, through one cache: the second is
	// never served the first's fragment.
	for i, vi := range variants {
		for j, vj := range variants {
			for k, v := range []func(*workload.Identity){vi, vj, vi} {
				r.Workload = base
				v(&r.Workload)
				got, want := string(r.appendJSON(nil, &c)), string(r.AppendJSON(nil))
				if got != want {
					t.Fatalf("variants %d, %d (step %d):\n got %s\nwant %s", i, j, k, got, want)
				}
			}
		}
	}
	// Many processes, more than the slots: whichever slot each takes.
	for pid := range 1000 {
		r.Workload = base
		r.Workload.PID = pid % 300
		r.Workload.Comm = "p" + string(rune('a'+pid%7))
		if got, want := string(r.appendJSON(nil, &c)), string(r.AppendJSON(nil)); got != want {
			t.Fatalf("pid %d:\n got %s\nwant %s", pid, got, want)
		}
	}
}

// TestWorkloadCacheHit: a known workload is not encoded again.
func TestWorkloadCacheHit(t *testing.T) {
	var c workloadCache
	r := fullRecord()
	r.Header, r.Answers = nil, nil // rendered through attr, which allocates
	buf := r.appendJSON(nil, &c)
	w := r.Workload
	w.Labels = map[string]string{"a": "1", "b": "2"} // equal labels, another map
	if n := testing.AllocsPerRun(100, func() {
		r.Workload.Client = netip.AddrPortFrom(r.Workload.Client.Addr(), r.Workload.Client.Port()+1)
		buf = r.appendJSON(buf[:0], &c)
		_ = c.fragment(&w)
	}); n != 0 {
		t.Errorf("a cached workload allocates %v times", n)
	}
}
