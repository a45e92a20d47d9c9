package flows_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/flows"
	"github.com/sluicehq/sluice/workload"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }
func (c *clock) tick()          { c.t = c.t.Add(time.Second) }

func newClock() *clock { return &clock{t: time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)} }

func TestRecordsAndConnects(t *testing.T) {
	c := newClock()
	tb := flows.New(flows.Options{Now: c.now})
	id := workload.Identity{PID: 100, Comm: "python3", Cgroup: "/sys.slice/mcp.scope"}
	api := netip.MustParseAddrPort("192.0.2.10:443")

	// The kernel sees the connect first, by address only.
	tb.Connect(100, "python3", "/sys.slice/mcp.scope", api, "redirected")
	c.tick()
	// Then the proxy's records name the host; the same destination.
	for _, st := range []struct {
		decision string
		in, out  int64
	}{{audit.DecisionAllow, 10, 100}, {audit.DecisionAllow, 20, 200}, {audit.DecisionWouldDeny, 1, 2}} {
		tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: "api.example.com", DstIP: api.Addr(), Port: 443,
			Decision: st.decision, BytesIn: st.in, BytesOut: st.out})
	}
	c.tick()
	tb.Connect(100, "python3", "/sys.slice/mcp.scope", netip.MustParseAddrPort("169.254.169.254:80"), "denied")
	// A second process.
	c.tick()
	tb.Record(&audit.Record{Kind: audit.KindL4, Workload: workload.Identity{PID: 200, Comm: "curl", ContainerID: "abcdef0123456789"},
		Host: "bank.example", TLS: audit.TLSPassthrough, Decision: audit.DecisionAllow, BytesIn: 5, BytesOut: 6})

	s := tb.Snapshot()
	if len(s.Rows) != 2 {
		t.Fatalf("rows = %d, want 2: %+v", len(s.Rows), s.Rows)
	}
	curl, py := s.Rows[0], s.Rows[1]
	if curl.PID != 200 || curl.Workload != "container:abcdef012345" || curl.Flows != 1 || curl.BytesIn != 5 || curl.BytesOut != 6 {
		t.Errorf("curl row = %+v", curl)
	}
	if py.PID != 100 || py.Comm != "python3" || py.Workload != "/sys.slice/mcp.scope" {
		t.Errorf("python row identity = %+v", py)
	}
	if py.Requests != 3 || py.Connects != 2 || py.BytesIn != 31 || py.BytesOut != 302 {
		t.Errorf("python row counts = %+v", py.Counts)
	}
	wantDec := map[string]int64{"allow": 2, "would_deny": 1, "redirected": 1, "denied": 1}
	if fmt.Sprint(py.Decisions) != fmt.Sprint(wantDec) {
		t.Errorf("python decisions = %v, want %v", py.Decisions, wantDec)
	}
	if len(py.Destinations) != 2 {
		t.Fatalf("python destinations = %+v, want 2 (the connect merged into the host)", py.Destinations)
	}
	// Most recent first: the metadata address, then the API.
	md, a := py.Destinations[0], py.Destinations[1]
	if md.Name() != "169.254.169.254:80" || md.Connects != 1 || md.Decisions["denied"] != 1 {
		t.Errorf("metadata dest = %+v", md)
	}
	if a.Host != "api.example.com" || a.Addr != "192.0.2.10:443" || a.Requests != 3 || a.Connects != 1 {
		t.Errorf("api dest = %+v", a)
	}
	if !py.FirstSeen.Before(py.LastSeen) {
		t.Errorf("first seen %v, last seen %v", py.FirstSeen, py.LastSeen)
	}

	// The snapshot shares nothing with the table.
	py.Decisions["allow"] = 1000
	if got := tb.Snapshot().Rows[1].Decisions["allow"]; got != 2 {
		t.Errorf("snapshot aliases the table: allow = %d", got)
	}

	// JSON keys are what the CLI and scripts read.
	b, err := json.Marshal(tb.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var generic struct {
		Rows []map[string]any `json:"rows"`
	}
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"pid", "comm", "workload", "requests", "connects", "bytes_in", "bytes_out", "decisions", "last_seen", "destinations"} {
		if _, ok := generic.Rows[1][k]; !ok {
			t.Errorf("JSON row lacks %q: %s", k, b)
		}
	}
}

func TestBounds(t *testing.T) {
	c := newClock()
	tb := flows.New(flows.Options{MaxRows: 3, MaxDests: 2, MaxAge: time.Minute, Now: c.now})
	for pid := 1; pid <= 5; pid++ {
		c.tick()
		tb.Connect(pid, "p", "/cg", netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(pid)}), 443), "redirected")
	}
	s := tb.Snapshot()
	if len(s.Rows) != 3 || s.Evicted != 2 {
		t.Fatalf("rows %d evicted %d, want 3 and 2", len(s.Rows), s.Evicted)
	}
	for i, want := range []int{5, 4, 3} {
		if s.Rows[i].PID != want {
			t.Errorf("row %d pid %d, want %d (least recent evicted first)", i, s.Rows[i].PID, want)
		}
	}

	// Destinations past MaxDests fold into "other" and keep their counts.
	for i := range 5 {
		tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: workload.Identity{PID: 5, Cgroup: "/cg"},
			Host: fmt.Sprintf("h%d.example", i), Decision: "allow", BytesIn: 1})
	}
	r := tb.Snapshot().Rows[0]
	if r.PID != 5 || len(r.Destinations) != 3 {
		t.Fatalf("row %+v: want pid 5 with 2 destinations and \"other\"", r)
	}
	var other *flows.Dest
	for i := range r.Destinations {
		if r.Destinations[i].Name() == flows.OtherDest {
			other = &r.Destinations[i]
		}
	}
	if other == nil || other.Requests != 4 {
		t.Errorf("destinations %+v: want \"other\" with 4 requests", r.Destinations)
	}
	if r.Requests != 5 || r.BytesIn != 5 {
		t.Errorf("row totals %+v: folding must keep totals", r.Counts)
	}

	// Rows not seen for MaxAge age out.
	c.t = c.t.Add(2 * time.Minute)
	if n := len(tb.Snapshot().Rows); n != 0 {
		t.Errorf("rows after MaxAge = %d, want 0", n)
	}
}

func TestExplicitModeKeysByClient(t *testing.T) {
	tb := flows.New(flows.Options{})
	for _, cl := range []string{"127.0.0.1:5000", "127.0.0.1:5001", "127.0.0.2:5000"} {
		tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: workload.Identity{Client: netip.MustParseAddrPort(cl)}, Host: "x", Decision: "allow"})
	}
	s := tb.Snapshot()
	if len(s.Rows) != 2 {
		t.Fatalf("rows = %+v, want one per client address (ports differ per connection)", s.Rows)
	}
}

func BenchmarkRecord(b *testing.B) {
	tb := flows.New(flows.Options{})
	r := &audit.Record{Kind: audit.KindHTTP, Workload: workload.Identity{PID: 1, Cgroup: "/x"}, Host: "api.example.com", Decision: "allow", BytesIn: 10}
	for b.Loop() {
		tb.Record(r)
	}
}

// A connect event that arrives after a record has named its address
// counts under that host, not under a second row for the bare address.
func TestConnectAfterRecordJoinsHost(t *testing.T) {
	tb := flows.New(flows.Options{})
	id := workload.Identity{PID: 7, Comm: "python3", Cgroup: "/run"}
	dst := netip.MustParseAddrPort("198.18.77.2:443")
	tb.ConnectIdentity(id, dst, "redirected")
	tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: "api.demo.test", DstIP: dst.Addr(), Port: dst.Port(), Decision: "allow"})
	tb.ConnectIdentity(id, dst, "redirected")
	rows := tb.Snapshot().Rows
	if len(rows) != 1 || len(rows[0].Destinations) != 1 {
		t.Fatalf("want one process with one destination, got %+v", rows)
	}
	d := rows[0].Destinations[0]
	if d.Host != "api.demo.test" || d.Connects != 2 || d.Requests != 1 {
		t.Fatalf("destination = %+v, want api.demo.test with 2 connects and 1 request", d)
	}
}

// A record without a host is named by the name the workload resolved to
// its address (dns_name).
func TestDNSNameNamesDestination(t *testing.T) {
	tb := flows.New(flows.Options{})
	id := workload.Identity{PID: 7, Comm: "python3", Cgroup: "/a"}
	tb.Record(&audit.Record{Kind: audit.KindL4, Workload: id, DstIP: netip.MustParseAddr("192.0.2.10"), Port: 5432,
		DNSName: "db.example", Decision: audit.DecisionAllow})
	s := tb.Snapshot()
	if len(s.Rows) != 1 || len(s.Rows[0].Destinations) != 1 || s.Rows[0].Destinations[0].Name() != "db.example" {
		t.Fatalf("rows %+v", s.Rows)
	}
}

// A row names the container and image the runtime reported, and its
// workload is the container's name.
func TestRowNamesContainer(t *testing.T) {
	tb := flows.New(flows.Options{Now: newClock().now})
	cid := "3f4e8c3b5d2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e"
	tb.Connect(7, "curl", "/docker/"+cid, netip.MustParseAddrPort("198.19.248.2:80"), "redirected")
	id := workload.Identity{PID: 7, Comm: "curl", Cgroup: "/docker/" + cid, ContainerID: cid, Container: "web", Image: "nginx:1.27"}
	tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: "h.example", Decision: audit.DecisionAllow})
	rows := tb.Snapshot().Rows
	if len(rows) != 1 || rows[0].Container != "web" || rows[0].Image != "nginx:1.27" || rows[0].Workload != "container:web" {
		t.Fatalf("rows %+v", rows)
	}
}

// Tools past MaxTools fold into "(other)" and keep their counts; a tool
// already listed keeps its own row.
func TestToolsPastMaxToolsFold(t *testing.T) {
	tb := flows.New(flows.Options{})
	id := workload.Identity{PID: 7, Cgroup: "/agent.scope"}
	call := func(tool string) {
		tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: "mcp.test", Decision: "allow", MCPMethod: "tools/call", MCPTool: tool})
	}
	for i := range flows.MaxTools + 3 {
		call(fmt.Sprintf("t%d", i))
	}
	call("t0")
	tools := tb.Snapshot().Rows[0].Destinations[0].MCPTools
	if len(tools) != flows.MaxTools+1 {
		t.Fatalf("%d tool rows, want %d and (other)", len(tools), flows.MaxTools)
	}
	calls := map[string]int64{}
	for _, tl := range tools {
		calls[tl.Name] = tl.Calls
	}
	if calls["t0"] != 2 || calls[flows.OtherTool] != 3 {
		t.Errorf("t0 %d calls (want 2), %s %d (want 3)", calls["t0"], flows.OtherTool, calls[flows.OtherTool])
	}
}

// BenchmarkConnect is the table's share of a kernel connect event (the
// node calls ConnectAt for each, with the event's time): one process
// connecting in turn to 20 destinations, some named by records before.
func BenchmarkConnect(b *testing.B) {
	tb := flows.New(flows.Options{})
	id := workload.Identity{PID: 7, Comm: "worker", Cgroup: "/sluice-run-1234"}
	var dsts []netip.AddrPort
	for i := range 20 {
		dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), 443)
		dsts = append(dsts, dst)
		if i%2 == 0 {
			tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: fmt.Sprintf("h%d.example", i), DstIP: dst.Addr(), Port: dst.Port(), Decision: "allow"})
		}
	}
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		tb.ConnectAt(now, id.PID, id.Comm, id.Cgroup, dsts[i%len(dsts)], "direct")
		i++
	}
}

// BenchmarkConnectRun is a process that connects to one address again
// and again, as the agent's events of a busy client come.
func BenchmarkConnectRun(b *testing.B) {
	tb := flows.New(flows.Options{})
	dst := netip.MustParseAddrPort("198.18.0.9:9")
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		tb.ConnectAt(now, 7, "worker", "/sluice-run-1234", dst, "direct")
	}
}

// A row counts 16 decisions by name; more fold into "other", and a
// decision it already counts keeps its own count.
func TestDecisionsFoldIntoOther(t *testing.T) {
	tb := flows.New(flows.Options{})
	dst := netip.MustParseAddrPort("192.0.2.1:443")
	for i := range 20 {
		tb.Connect(7, "worker", "/run", dst, fmt.Sprintf("d%02d", i))
	}
	tb.Connect(7, "worker", "/run", dst, "d00")
	got := tb.Snapshot().Rows[0].Decisions
	if len(got) != 17 || got["d00"] != 2 || got["d15"] != 1 || got["d16"] != 0 || got["other"] != 4 {
		t.Errorf("decisions %v, want d00..d15 (d00 twice) and other 4", got)
	}
}

// Connect events to more addresses than MaxDests fold into "other", and
// an address two hosts share counts its connects under the first host
// that named it.
func TestConnectsFoldAndJoinFirstHost(t *testing.T) {
	tb := flows.New(flows.Options{MaxDests: 3})
	id := workload.Identity{PID: 7, Comm: "worker", Cgroup: "/run"}
	shared := netip.MustParseAddrPort("192.0.2.1:443")
	for _, h := range []string{"a.example", "b.example"} {
		tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: h, DstIP: shared.Addr(), Port: shared.Port(), Decision: "allow"})
	}
	for i := range 50 {
		tb.ConnectIdentity(id, shared, "redirected")
		tb.ConnectIdentity(id, netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}), 443), "direct")
	}
	rows := tb.Snapshot().Rows
	if len(rows) != 1 {
		t.Fatalf("rows %+v", rows)
	}
	connects := map[string]int64{}
	for _, d := range rows[0].Destinations {
		connects[d.Name()] = d.Connects
	}
	want := map[string]int64{"a.example": 50, "b.example": 0, "192.0.2.10:443": 1, flows.OtherDest: 49}
	if fmt.Sprint(connects) != fmt.Sprint(want) {
		t.Errorf("connects by destination %v, want %v", connects, want)
	}
	if rows[0].Connects != 100 {
		t.Errorf("row connects %d, want 100 (folding keeps totals)", rows[0].Connects)
	}
}

// A row's client is the address of its latest record, also when the
// workload comes back to an address it had before; a destination first
// named without an address takes the first address a record gives it.
func TestRowClientAndDestAddrFollowRecords(t *testing.T) {
	tb := flows.New(flows.Options{})
	id := workload.Identity{PID: 7, Comm: "python3", Cgroup: "/a"}
	for i, c := range []string{"10.0.0.1:1000", "10.0.0.2:1001", "10.0.0.1:1002", "[::ffff:10.0.0.1]:1003"} {
		id.Client = netip.MustParseAddrPort(c)
		r := &audit.Record{Kind: audit.KindHTTP, Workload: id, Host: "api.test", Decision: audit.DecisionAllow}
		if i == 2 {
			r.DstIP, r.Port = netip.MustParseAddr("192.0.2.1"), 443
		}
		tb.Record(r)
		rows := tb.Snapshot().Rows
		if len(rows) != 1 || rows[0].Client != id.Client.Addr().String() {
			t.Fatalf("after %s: rows %+v", c, rows)
		}
		d := rows[0].Destinations
		if want := map[bool]string{true: "192.0.2.1:443", false: ""}[i >= 2]; len(d) != 1 || d[0].Addr != want {
			t.Fatalf("after %s: destinations %+v, want one with addr %q", c, d, want)
		}
	}
}
