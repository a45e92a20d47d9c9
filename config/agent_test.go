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
		{"select", func(a *Agent) {
			a.Select = []Select{{Namespaces: []string{"team-*"}}, {Labels: map[string]string{"app": "web"}, Images: []string{"python:*"}}}
			a.Runtime.Docker = "/run/docker.sock"
		}, nil},
		{"select every problem", func(a *Agent) {
			a.Select = []Select{{}, {Namespaces: []string{"*"}, Containers: []string{""}, Labels: map[string]string{"app*": "x"}}}
			a.Runtime = Runtime{Docker: "docker.sock", CRI: "maybe", Kubernetes: "yes"}
		}, []string{
			"agent.select[0]: selects every container", `agent.select[1].namespaces[0] "*": matches everything`,
			`agent.select[1].containers[0] "": matches everything`, `agent.select[1].labels "app*": not a label key`,
			`agent.runtime.docker "docker.sock"`, `agent.runtime.cri "maybe"`, `agent.runtime.kubernetes "yes"`, "agent.runtime.cacheSize 0",
		}},
		{"exfil off", func(a *Agent) { a.DNS.Exfil = Exfil{Mode: "off", TrackSize: 1} }, nil},
		{"exfil every problem", func(a *Agent) {
			a.DNS.Exfil = Exfil{Mode: "block", QueriesPerSecond: -1, MaxLabelLength: 64, MaxLabelEntropy: 9, EntropyMinLength: -1, UniqueSubdomainsPerMinute: -1}
		}, []string{
			`agent.dns.exfil.mode "block"`, "agent.dns.exfil.queriesPerSecond -1", "agent.dns.exfil.maxLabelLength 64",
			"agent.dns.exfil.maxLabelEntropy 9", "agent.dns.exfil.entropyMinLength -1",
			"agent.dns.exfil.uniqueSubdomainsPerMinute -1", "agent.dns.exfil.trackSize 0",
		}},
		{"bypass hosts", func(a *Agent) {
			a.BypassHosts = []string{"kubernetes.default.svc", "*.internal.example", "API.Example.com.", "a_b.example"}
		}, nil},
		{"bypass hosts every problem", func(a *Agent) {
			a.BypassHosts = []string{"", "https://x.example/a", "10.0.0.1", "x.example:443", "*", ".x.example", "*x.example", "a.*.example", "bad name.example"}
		}, []string{
			`agent.bypassHosts[0] "": empty`,
			`agent.bypassHosts[1] "https://x.example/a": a host name, not a URL: use "x.example"`,
			`agent.bypassHosts[2] "10.0.0.1": an address: list it in agent.bypassCIDRs instead, e.g. "10.0.0.1/32"`,
			`agent.bypassHosts[3] "x.example:443": a host name without a port: use "x.example"`,
			`agent.bypassHosts[4] "*": bypasses every name`,
			`agent.bypassHosts[5] ".x.example": use "*.x.example"`,
			`agent.bypassHosts[6] "*x.example": a wildcard must be a whole leading label, use "*.example.com"`,
			`agent.bypassHosts[7] "a.*.example": a wildcard must be a whole leading label`,
			`agent.bypassHosts[8] "bad name.example": not a host name`,
		}},
		{"bypass host wildcard without a dns server", func(a *Agent) {
			a.DNSPort = 0
			a.BypassHosts = []string{"api.example.com", "*.example.com"}
		}, []string{`agent.bypassHosts[1] "*.example.com": a wildcard needs the DNS server (agent.dnsPort)`}},
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
