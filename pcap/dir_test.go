package pcap_test

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/pcap"
)

func TestDir(t *testing.T) {
	root := filepath.Join(t.TempDir(), "caps")
	d, err := pcap.NewDir(root, pcap.Options{Now: fixedClock()}, 2)
	if err != nil {
		t.Fatal(err)
	}
	var c pcap.Capture = d
	metas := []pcap.FlowMeta{
		{Client: netip.MustParseAddrPort("10.0.0.1:40000"), Server: netip.MustParseAddrPort("10.0.0.2:443"), Workload: "ai/agent-0", Host: "api.example.com"},
		{Client: netip.MustParseAddrPort("10.0.0.1:40001"), Server: netip.MustParseAddrPort("10.0.0.2:443"), Workload: "../../etc", Host: "..passwd"},
		{Client: netip.MustParseAddrPort("10.0.0.1:40002"), Server: netip.MustParseAddrPort("10.0.0.2:443"), Workload: "third"},
	}
	for i, m := range metas {
		f := c.NewFlow(m)
		if i == 2 {
			if f != nil {
				t.Error("flow past MaxFiles was recorded")
			}
		}
		f.ClientToServer([]byte(request))
		f.ServerToClient([]byte(response()))
		f.Close()
	}
	files := d.Files()
	want := []string{"20261125T090000Z_ai_agent-0_api.example.com_1.pcapng", "20261125T090000Z__._.._etc__.passwd_2.pcapng"}
	if strings.Join(files, " ") != strings.Join(want, " ") {
		t.Errorf("files %q, want %q", files, want)
	}
	if fi, err := os.Stat(root); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v (%v), want 0700", fi.Mode(), err)
	}
	ents, _ := os.ReadDir(root)
	if len(ents) != 2 {
		t.Errorf("dir holds %d entries, want 2", len(ents))
	}
	for _, n := range files {
		p := filepath.Join(root, n)
		if filepath.Dir(p) != root {
			t.Errorf("%s escapes the directory", n)
		}
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v (%v), want 0600", n, fi.Mode(), err)
			continue
		}
		b, _ := os.ReadFile(p)
		_, pkts := readAll(t, b)
		var stream bytes.Buffer
		for _, pk := range pkts {
			if pk.tcp.DstPort == pcap.HTTPPort {
				stream.Write(pk.payload)
			}
		}
		if stream.String() != request {
			t.Errorf("%s: client stream %q", n, stream.String())
		}
	}
	st := d.Stats()
	if st.Flows != 3 || st.Packets == 0 || st.DroppedPackets != 0 {
		t.Errorf("stats %+v", st)
	}
	var nilDir *pcap.Dir
	nilDir.NewFlow(metas[0]).Close()
}
