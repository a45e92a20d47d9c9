package audit

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/netip"
	"reflect"
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
	var c lineCache
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
	var c lineCache
	r := fullRecord()
	r.Header, r.Answers = nil, nil // rendered through attr, which allocates
	buf := r.appendJSON(nil, &c)
	w := r.Workload
	w.Labels = map[string]string{"a": "1", "b": "2"} // equal labels, another map
	if n := testing.AllocsPerRun(100, func() {
		r.Workload.Client = netip.AddrPortFrom(r.Workload.Client.Addr(), r.Workload.Client.Port()+1)
		buf = r.appendJSON(buf[:0], &c)
		_ = c.wl.fragment(&w)
	}); n != 0 {
		t.Errorf("a cached workload allocates %v times", n)
	}
}

// TestAppendMillis: the integer rendering of a duration in
// milliseconds is the float one, across every magnitude.
func TestAppendMillis(t *testing.T) {
	check := func(us int64) {
		d := time.Duration(us) * time.Microsecond
		got, want := string(appendMillis(nil, d)), string(appendJSONFloat(nil, float64(d.Microseconds())/1000))
		if got != want {
			t.Fatalf("%d µs: got %s, want %s", us, got, want)
		}
	}
	for us := int64(-20000); us <= 2000000; us++ {
		check(us)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 1000000 {
		us := rng.Int64N(1 << uint(rng.IntN(63)))
		if rng.IntN(2) == 0 {
			us = -us
		}
		check(us)
		// slog writes a float through encoding/json: the ground truth.
		d := time.Duration(us) * time.Microsecond
		if want, _ := json.Marshal(float64(d.Microseconds()) / 1000); string(appendMillis(nil, d)) != string(want) {
			t.Fatalf("%d µs: got %s, encoding/json %s", us, appendMillis(nil, d), want)
		}
	}
	for _, us := range []int64{1e15 - 1, 1e15, 1e15 + 1, -1e15 + 1, -1e15, 999999999999999, 123456789012345, math.MaxInt64 / 1000, math.MinInt64 / 1000} {
		check(us)
	}
	// Nanoseconds below a microsecond are dropped, as Microseconds does.
	if got := string(appendMillis(nil, 1999*time.Nanosecond)); got != "0.001" {
		t.Errorf("1999ns: got %s, want 0.001", got)
	}
}

// TestTimeCache: the cached second gives RFC3339Nano's text for every
// fraction, zone, location change and year, in any order.
func TestTimeCache(t *testing.T) {
	var c timeCache
	locs := []*time.Location{time.UTC, time.Local, time.FixedZone("CET", 3600), time.FixedZone("x", -(5*3600 + 30*60)), time.FixedZone("odd", 17)}
	if ny, err := time.LoadLocation("America/New_York"); err == nil {
		locs = append(locs, ny)
	}
	base := time.Date(2026, 3, 8, 6, 59, 58, 0, time.UTC) // New York's clocks go forward at 07:00 UTC
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 200000 {
		tm := base.Add(time.Duration(rng.Int64N(4e9))).In(locs[rng.IntN(len(locs))])
		switch i % 5 {
		case 1:
			tm = tm.Truncate(time.Second)
		case 2:
			tm = tm.Truncate(time.Millisecond)
		case 3:
			tm = tm.Truncate(time.Microsecond).Add(time.Duration(rng.IntN(10)) * 100 * time.Nanosecond)
		}
		if i%1000 == 999 { // years of other widths
			tm = tm.AddDate([]int{-2100, 8000, -2026}[rng.IntN(3)], 0, 0)
		}
		got, want := string(c.appendTime(nil, tm)), string(tm.AppendFormat(nil, time.RFC3339Nano))
		if got != want {
			t.Fatalf("%v: got %s, want %s", tm, got, want)
		}
	}
}

// connectRecord is a kernel connect record as the node writes one.
func connectRecord() Record {
	return Record{
		Time: time.Date(2026, 12, 1, 2, 0, 0, 5000, time.UTC), Kind: KindConnect,
		Workload: workload.Identity{PID: 42, UID: 1000, Comm: "connect-loop", Exe: "/usr/bin/loop", Cgroup: "/sluice-run-1"},
		DstIP:    netip.MustParseAddr("198.18.0.9"), Port: 9, Decision: DecisionAllow, Reason: "not a TCP stream socket",
	}
}

// TestConnectCacheNeverStale: a connect record that differs from the
// kept one in any field, set to fullRecord's value one field at a time
// (every field of Record, found by reflection), gets its own line, in
// every order through one cache; only the time may differ for the kept
// bytes to be served.
func TestConnectCacheNeverStale(t *testing.T) {
	full := reflect.ValueOf(fullRecord())
	variants := []Record{connectRecord()}
	for i := range full.NumField() {
		r := connectRecord()
		f := reflect.ValueOf(&r).Elem().Field(i)
		if name := full.Type().Field(i).Name; name == "Kind" || name == "Time" {
			continue // another kind is not kept; the time is the line's own
		}
		f.Set(full.Field(i))
		variants = append(variants, r)
	}
	w := connectRecord().Workload
	for _, change := range []func(*workload.Identity){
		func(w *workload.Identity) { w.PID++ },
		func(w *workload.Identity) { w.Client = netip.MustParseAddrPort("10.0.0.5:40001") },
		func(w *workload.Identity) { w.Exe = "/tmp/evil" },
	} {
		r := connectRecord()
		r.Workload = w
		change(&r.Workload)
		variants = append(variants, r)
	}
	var c lineCache
	for i, a := range variants {
		for j, b := range variants {
			for k, r := range []Record{a, b, a, b} {
				r.Time = r.Time.Add(time.Duration(k) * time.Millisecond)
				got, want := string(r.appendJSON(nil, &c)), string(r.AppendJSON(nil))
				if got != want {
					t.Fatalf("variants %d, %d (step %d):\n got %s\nwant %s", i, j, k, got, want)
				}
			}
		}
	}
}

// TestConnectCacheHit: a run of connect records that differ in their
// time writes the kept bytes, with no allocation.
func TestConnectCacheHit(t *testing.T) {
	var c lineCache
	r := connectRecord()
	buf := r.appendJSON(nil, &c)
	if !c.conn.ok {
		t.Fatal("a flat connect record was not kept")
	}
	if n := testing.AllocsPerRun(100, func() {
		r.Time = r.Time.Add(time.Microsecond)
		buf = r.appendJSON(buf[:0], &c)
	}); n != 0 {
		t.Errorf("a kept connect record allocates %v times", n)
	}
	if got, want := string(buf), string(r.AppendJSON(nil)); got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}
