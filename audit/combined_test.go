package audit_test

import (
	"bytes"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/workload"
)

// combinedRE is the usual regular expression for nginx's combined format
// (as log tools write it), followed by the mcp_access additions.
var combinedRE = regexp.MustCompile(`^(\S+) - (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+|-) "([^"]*)" "([^"]*)" upstream=(\S+) rt=(\d+\.\d{3}) urt=(\d+\.\d{3}|-)$`)

var at = time.Date(2026, 11, 25, 9, 30, 5, 0, time.FixedZone("CET", 3600))

func TestCombinedLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    audit.Record
		want string
	}{
		{
			name: "upstream answer",
			r: audit.Record{Time: at, Kind: audit.KindHTTP, Workload: workload.Identity{Client: netip.MustParseAddrPort("10.0.0.5:40000")},
				Method: "POST", Path: "/v1/messages?stream=true", Proto: "HTTP/1.1", Status: 200, BytesOut: 5120,
				Header:       map[string]string{"User-Agent": "anthropic-python/0.40", "Referer": "https://app.example/", "Authorization": audit.Redacted},
				UpstreamAddr: "192.0.2.10:443", Duration: 1234567 * time.Microsecond, UpstreamDuration: 1200 * time.Millisecond},
			want: `10.0.0.5 - - [25/Nov/2026:09:30:05 +0100] "POST /v1/messages?stream=true HTTP/1.1" 200 5120 "https://app.example/" "anthropic-python/0.40" upstream=192.0.2.10:443 rt=1.235 urt=1.200`,
		},
		{
			name: "sluice denies, no headers recorded, unknown client",
			r: audit.Record{Time: at, Kind: audit.KindHTTP, Method: "GET", Path: "/latest/meta-data/", Proto: "HTTP/1.1", Status: 403,
				BytesOut: 97, Source: "sluice", Decision: audit.DecisionDeny, Duration: 300 * time.Microsecond},
			want: `- - - [25/Nov/2026:09:30:05 +0100] "GET /latest/meta-data/ HTTP/1.1" 403 97 "-" "-" upstream=- rt=0.000 urt=-`,
		},
		{
			name: "hostile bytes are escaped",
			r: audit.Record{Time: at, Kind: audit.KindHTTP, Workload: workload.Identity{Client: netip.MustParseAddrPort("[::ffff:10.0.0.6]:1")},
				Method: "GET", Path: "/a\"b\\c\nd\x00é", Proto: "HTTP/2.0", Status: 0,
				Header: map[string]string{"User-Agent": "x\" y"}},
			want: `10.0.0.6 - - [25/Nov/2026:09:30:05 +0100] "GET /a\x22b\x5Cc\x0Ad\x00\xC3\xA9 HTTP/2.0" 000 0 "-" "x\x22 y" upstream=- rt=0.000 urt=-`,
		},
		{
			name: "passthrough flow",
			r: audit.Record{Time: at, Kind: audit.KindL4, Workload: workload.Identity{Client: netip.MustParseAddrPort("[fd00::5]:4000")},
				Host: "bank.example", Port: 443, TLS: audit.TLSPassthrough, Decision: audit.DecisionAllow, BytesOut: 70000,
				UpstreamAddr: "[2001:db8::1]:443", Duration: 2 * time.Second},
			want: `fd00::5 - - [25/Nov/2026:09:30:05 +0100] "CONNECT bank.example:443 L4" 200 70000 "-" "-" upstream=[2001:db8::1]:443 rt=2.000 urt=-`,
		},
		{
			name: "denied flow by address",
			r:    audit.Record{Time: at, Kind: audit.KindL4, DstIP: netip.MustParseAddr("2001:db8::9"), Port: 22, Decision: audit.DecisionDeny},
			want: `- - - [25/Nov/2026:09:30:05 +0100] "CONNECT [2001:db8::9]:22 L4" 403 0 "-" "-" upstream=- rt=0.000 urt=-`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			audit.NewCombinedLog(&buf).Record(&tc.r)
			got := buf.String()
			if got != tc.want+"\n" {
				t.Errorf("line:\n got %s\nwant %s", got, tc.want)
			}
			if !combinedRE.MatchString(strings.TrimSuffix(got, "\n")) {
				t.Errorf("line does not parse as combined: %s", got)
			}
		})
	}
}

func TestCombinedFieldsParse(t *testing.T) {
	r := audit.Record{Time: at, Kind: audit.KindHTTP, Workload: workload.Identity{Client: netip.MustParseAddrPort("10.0.0.5:40000")},
		Method: "GET", Path: "/x", Proto: "HTTP/1.1", Status: 429, BytesOut: 12, Header: map[string]string{"User-Agent": "curl/8"},
		Duration: 5 * time.Millisecond}
	m := combinedRE.FindStringSubmatch(string(audit.AppendCombined(nil, &r)))
	if m == nil {
		t.Fatal("no match")
	}
	ts, err := time.Parse(audit.CombinedTimeLayout, m[3])
	if err != nil || !ts.Equal(at) {
		t.Errorf("time %q parses to %v (%v), want %v", m[3], ts, err, at)
	}
	for i, want := range map[int]string{1: "10.0.0.5", 4: "GET /x HTTP/1.1", 5: "429", 6: "12", 8: "curl/8", 10: "0.005", 11: "-"} {
		if m[i] != want {
			t.Errorf("field %d = %q, want %q", i, m[i], want)
		}
	}
}

func TestCombinedSkipsConnects(t *testing.T) {
	var buf bytes.Buffer
	audit.NewCombinedLog(&buf).Record(&audit.Record{Kind: audit.KindConnect, Time: at, Decision: "redirected"})
	if buf.Len() != 0 {
		t.Errorf("connect record written: %q", buf.String())
	}
}

// FuzzCombined: whatever a client puts in its request, the line is one
// line and parses.
func FuzzCombined(f *testing.F) {
	f.Add("GET", "/", "HTTP/1.1", "curl/8", "-", "api.example.com", 200)
	f.Add("POST", "/a\"b", "HTTP/2.0", "x\ny", "\x00\xff", "", 0)
	f.Add("", "", "", "", "", "[::1]", 99999)
	f.Fuzz(func(t *testing.T, method, path, proto, ua, ref, host string, status int) {
		for _, kind := range []string{audit.KindHTTP, audit.KindL4} {
			r := audit.Record{Time: at, Kind: kind, Method: method, Path: path, Proto: proto, Host: host, Status: status,
				Header: map[string]string{"User-Agent": ua, "Referer": ref}}
			line := string(audit.AppendCombined(nil, &r))
			if strings.ContainsAny(line, "\n\r") {
				t.Fatalf("line breaks: %q", line)
			}
			if !combinedRE.MatchString(line) {
				t.Fatalf("line does not parse: %q", line)
			}
		}
	})
}
