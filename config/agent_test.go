package config

import (
	"net/netip"
	"strings"
	"testing"
)

func TestAgentValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Agent)
		want []string // substrings of the joined error; none means valid
	}{
		{"defaults", func(*Agent) {}, nil},
		{"all ports", func(a *Agent) { a.Ports = []string{"all"} }, nil},
		{"root attach", func(a *Agent) { a.Attach = "root" }, nil},
		{"no ipv6", func(a *Agent) { a.InterceptIPv6 = netip.Addr{} }, nil},
		{"every problem at once", func(a *Agent) {
			a.FailMode = "maybe"
			a.Ports = []string{"443", "http", "0"}
			a.Cgroups = []string{"kubepods.slice/**"}
			a.Attach = "node"
			a.BPFFS = "relative"
			a.ProxyPort = 0
		}, []string{
			`agent.failMode "maybe"`, `agent.ports[1] "http"`, `agent.ports[2] "0"`,
			`agent.cgroups[0] "kubepods.slice/**": must start with "/"`, `agent.attach "node"`,
			`agent.bpffs "relative"`, "agent.proxyPort 0",
		}},
		{"v4 as v6", func(a *Agent) { a.InterceptIPv6 = netip.MustParseAddr("::ffff:1.2.3.4") }, []string{"agent.interceptIPv6"}},
		{"v6 as v4", func(a *Agent) { a.InterceptIPv4 = netip.MustParseAddr("fdc5::1") }, []string{"agent.interceptIPv4"}},
		{"no ports", func(a *Agent) { a.Ports = nil }, []string{"agent.ports []"}},
		{"exfil off", func(a *Agent) { a.DNS.Exfil = Exfil{Mode: "off", TrackSize: 1} }, nil},
		{"exfil every problem", func(a *Agent) {
			a.DNS.Exfil = Exfil{Mode: "block", QueriesPerSecond: -1, MaxLabelLength: 64, MaxLabelEntropy: 9, EntropyMinLength: -1, UniqueSubdomainsPerMinute: -1}
		}, []string{
			`agent.dns.exfil.mode "block"`, "agent.dns.exfil.queriesPerSecond -1", "agent.dns.exfil.maxLabelLength 64",
			"agent.dns.exfil.maxLabelEntropy 9", "agent.dns.exfil.entropyMinLength -1",
			"agent.dns.exfil.uniqueSubdomainsPerMinute -1", "agent.dns.exfil.trackSize 0",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := DefaultAgent()
			tt.mod(&a)
			errs := a.validate()
			if len(tt.want) == 0 {
				if len(errs) != 0 {
					t.Fatalf("unexpected errors: %v", errs)
				}
				return
			}
			var b strings.Builder
			for _, e := range errs {
				b.WriteString(e.Error() + "\n")
			}
			for _, w := range tt.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("errors %q lack %q", b.String(), w)
				}
			}
			if len(errs) != len(tt.want) {
				t.Errorf("%d errors, want %d: %q", len(errs), len(tt.want), b.String())
			}
		})
	}
}

func TestCaptureSettings(t *testing.T) {
	c := Default()
	if err := Parse([]byte("audit:\n  capture:\n    dir: /var/lib/sluice/pcap\n    maxBytes: 10MB\n"), &c); err != nil {
		t.Fatal(err)
	}
	if c.Audit.Capture.Dir != "/var/lib/sluice/pcap" || c.Audit.Capture.MaxBytes != 10_000_000 || c.Audit.Capture.MaxFiles != 1000 {
		t.Fatalf("capture = %+v", c.Audit.Capture)
	}
	c = Default()
	err := Parse([]byte("audit:\n  capture:\n    maxBytes: 10 apples\n"), &c)
	if err == nil || !strings.Contains(err.Error(), `line 3: size "10 apples"`) {
		t.Fatalf("bad size: %v", err)
	}
	c = Default()
	err = Parse([]byte("audit:\n  capture: {file: a.pcapng, dir: d}\n"), &c)
	if err == nil || !strings.Contains(err.Error(), "choose one") {
		t.Fatalf("file and dir: %v", err)
	}
}
