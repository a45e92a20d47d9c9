package flows_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/flows"
	"github.com/sluicehq/sluice/workload"
)

var update = flag.Bool("update", false, "rewrite testdata/snapshot.golden.json")

// mixedTraffic feeds tb a fixed mix of everything the table is fed: connect
// events before and after the records that name their addresses, records
// by host, by address, by dns_name and by port alone, explicit-mode
// clients, MCP tool calls, more processes than MaxRows and more
// destinations than MaxDests, the clock moving one second per call.
func mixedTraffic(tb *flows.Table, c *clock) {
	for i := range 200 {
		c.tick()
		pid := 100 + i%3
		cg := fmt.Sprintf("/sluice-run-%d", i%2)
		id := workload.Identity{PID: pid, Comm: "worker", Cgroup: cg}
		dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i % 5), byte(i % 11)}), uint16(443+i%3))
		if i%13 == 0 {
			dst = netip.AddrPortFrom(netip.MustParseAddr("2001:db8::7"), 443)
		}
		verdict := []string{"redirected", "direct", "denied"}[i%3]
		switch i % 6 {
		case 0, 3:
			tb.Connect(pid, "worker", cg, dst, verdict)
		case 1:
			tb.Record(&audit.Record{Kind: audit.KindHTTP, Workload: id, Host: fmt.Sprintf("h%d.example", i%9),
				DstIP: dst.Addr(), Port: dst.Port(), Decision: audit.DecisionAllow, BytesIn: int64(i), BytesOut: int64(2 * i),
				MCPMethod: "tools/call", MCPTool: fmt.Sprintf("tool%d", i%4), MCPErrorCode: i % 2})
		case 2:
			tb.Record(&audit.Record{Kind: audit.KindL4, Workload: id, DstIP: dst.Addr(), Port: dst.Port(),
				DNSName: fmt.Sprintf("db%d.example", i%4), Decision: audit.DecisionWouldDeny, BytesIn: 3})
		case 4:
			tb.Record(&audit.Record{Kind: audit.KindConnect, Workload: id, DstIP: dst.Addr(), Port: dst.Port(), Decision: audit.DecisionDeny})
		case 5:
			tb.Record(&audit.Record{Kind: audit.KindL4, Workload: workload.Identity{Client: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(5000+i%2))},
				Port: 8443, Decision: audit.DecisionAllow})
		}
		if i%17 == 0 {
			tb.ConnectIdentity(workload.Identity{PID: pid, Comm: "worker", Cgroup: "/docker/3f4e8c3b5d2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e",
				ContainerID: "3f4e8c3b5d2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e", Container: "web", Image: "nginx:1.27"}, dst, verdict)
		}
	}
}

// The snapshot of a fixed mix of traffic is the one in
// testdata/snapshot.golden.json, byte for byte: what `sluice flows`, the
// admin API and the run summary show does not change with the table's
// internals (go test ./flows -run TestSnapshotGolden -update rewrites it).
func TestSnapshotGolden(t *testing.T) {
	c := newClock()
	tb := flows.New(flows.Options{MaxRows: 8, MaxDests: 6, Now: c.now})
	mixedTraffic(tb, c)
	got, err := json.MarshalIndent(tb.Snapshot(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "snapshot.golden.json")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("snapshot differs from %s:\n%s", path, got)
	}
}
