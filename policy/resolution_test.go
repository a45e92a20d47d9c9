package policy

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/audit"
)

func TestResolutionConnection(t *testing.T) {
	const enforce = "version: 1\n"
	const audited = "version: 1\nresolution: {mode: audit}\n"
	const optOut = "version: 1\nresolution: {allowDoH: true}\n"
	const require = "version: 1\nssrf: {allowCIDRs: [10.96.0.0/12]}\nresolution: {requireResolved: true, unresolvedCIDRs: [10.96.0.0/12]}\n"
	tests := []struct {
		name       string
		pol        string
		host       string
		names      []string
		addr       string
		port       uint16
		unresolved bool
		action     Action
		would      bool
		rule       string
		reason     string
	}{
		{"doh host", enforce, "dns.google", nil, "93.184.215.14", 443, false, Reject, false, RulePublicResolver, audit.ReasonPublicResolver},
		{"doh host any case, trailing dot", enforce, "Cloudflare-DNS.com.", nil, "93.184.215.14", 443, false, Reject, false, RulePublicResolver, audit.ReasonPublicResolver},
		{"doh wildcard", enforce, "mozilla.cloudflare-dns.com", nil, "93.184.215.14", 443, false, Reject, false, RulePublicResolver, audit.ReasonPublicResolver},
		{"doh address, no name", enforce, "", nil, "1.1.1.1", 443, false, Reject, false, RulePublicResolver, audit.ReasonPublicResolver},
		{"doh address as IP literal", enforce, "8.8.8.8", nil, "8.8.8.8", 443, false, Reject, false, RulePublicResolver, audit.ReasonPublicResolver},
		{"doh v6 address", enforce, "", nil, "2606:4700:4700::1111", 443, false, Reject, false, RulePublicResolver, audit.ReasonPublicResolver},
		{"doh by a name resolved to the address", enforce, "", []string{"dns.quad9.net"}, "93.184.215.14", 443, false, Reject, false, RulePublicResolver, audit.ReasonPublicResolver},
		{"dot to any host", enforce, "dns.example", nil, "93.184.215.14", 853, false, Reject, false, RulePublicResolver, audit.ReasonPublicResolver},
		{"resolver address, port 80", enforce, "", nil, "1.1.1.1", 80, false, Decrypt, false, "default", audit.ReasonAllowedByDefault},
		{"a bound name is not the resolver's", enforce, "x.example", nil, "1.1.1.1", 443, false, Decrypt, false, "default", audit.ReasonAllowedByDefault},
		{"lookalike host", enforce, "dns.google.evil.example", nil, "93.184.215.14", 443, false, Decrypt, false, "default", audit.ReasonAllowedByDefault},
		{"audit mode", audited, "dns.google", nil, "93.184.215.14", 443, false, Decrypt, true, RulePublicResolver, audit.ReasonPublicResolver},
		{"allowDoH", optOut, "dns.google", nil, "8.8.8.8", 853, false, Decrypt, false, "default", audit.ReasonAllowedByDefault},
		{"unresolved without requireResolved", enforce, "", nil, "93.184.215.14", 80, true, Decrypt, false, "default", audit.ReasonAllowedByDefault},
		{"unresolved denied", require, "", nil, "93.184.215.14", 80, true, Reject, false, RuleRequireResolved, audit.ReasonUnresolved},
		{"unresolved with a host denied", require, "x.example", nil, "93.184.215.14", 443, true, Reject, false, RuleRequireResolved, audit.ReasonUnresolved},
		{"resolved allowed", require, "", nil, "93.184.215.14", 80, false, Decrypt, false, "default", audit.ReasonAllowedByDefault},
		{"unresolved in unresolvedCIDRs", require, "", nil, "10.96.0.10", 443, true, Decrypt, false, "default", audit.ReasonAllowedByDefault},
		{"unresolved outside unresolvedCIDRs", require, "", nil, "93.184.215.15", 443, true, Reject, false, RuleRequireResolved, audit.ReasonUnresolved},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := mustParse(t, tt.pol)
			c := &Conn{Host: tt.host, Names: tt.names, Addrs: addrs(tt.addr), Port: tt.port, TLS: tt.port != 80, Unresolved: tt.unresolved}
			d := e.Connection(context.Background(), c)
			if d.Action != tt.action || d.WouldDeny != tt.would || d.Rule != tt.rule || d.Reason != tt.reason {
				t.Errorf("got %v would=%v %q %q, want %v would=%v %q %q", d.Action, d.WouldDeny, d.Rule, d.Reason, tt.action, tt.would, tt.rule, tt.reason)
			}
		})
	}
}

// A DoH request (RFC 8484 media type) is denied whatever the server.
func TestResolutionDoHRequest(t *testing.T) {
	e := mustParse(t, "version: 1\n")
	c := &Conn{Host: "doh.example", Addrs: public, Port: 443, TLS: true}
	for _, tt := range []struct {
		header http.Header
		deny   bool
	}{
		{http.Header{"Content-Type": {"application/dns-message"}}, true},
		{http.Header{"Accept": {"application/json, Application/DNS-Message"}}, true},
		{http.Header{"Content-Type": {"application/json"}}, false},
	} {
		d := e.Request(context.Background(), &Request{Conn: c, Method: "POST", Host: "doh.example", Path: "/dns-query", Header: tt.header})
		if d.Denied() != tt.deny || (tt.deny && d.Reason != audit.ReasonPublicResolver) {
			t.Errorf("%v: %+v, want deny %v", tt.header, d, tt.deny)
		}
	}
	if d := mustParse(t, "version: 1\nresolution: {allowDoH: true}\n").Request(context.Background(),
		&Request{Conn: c, Method: "POST", Host: "doh.example", Header: http.Header{"Content-Type": {"application/dns-message"}}}); d.Denied() {
		t.Errorf("allowDoH: %+v", d)
	}
	// Host lists only (Compile): no built-in denies.
	sp, _ := Compile(Spec{})
	if d := sp.Connection(context.Background(), &Conn{Host: "dns.google", Addrs: public, Port: 443}); d.Action == Reject {
		t.Errorf("Compile(Spec{}) rejects DoH: %+v", d)
	}
}

func TestResolutionValidate(t *testing.T) {
	_, err := Parse([]byte("version: 1\nresolution:\n  mode: block\n  unresolvedCIDRs: [10.0.0.1/8, nope]\n"), "p.yaml")
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{`resolution.mode "block"`, `resolution.unresolvedCIDRs[0] "10.0.0.1/8"`, `resolution.unresolvedCIDRs[1] "nope"`, "resolution.unresolvedCIDRs: applies only with requireResolved"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
}

// mayBeIPLiteral only skips what netip.ParseAddr refuses.
func TestMayBeIPLiteral(t *testing.T) {
	for _, h := range []string{
		"", "api.example", "1.2.3.4", "01.2.3.4", "1.2.3", "1.2.3.4.5", "::1", "fe80::1%eth0", "::ffff:1.2.3.4",
		"1.2.3.4a", "a1.2.3.4", "1e1.2.3.4", "0x1.2.3.4", "localhost", "[::1]", "1.2.3.4%eth0", "１.2.3.4", "2001:db8::1",
		"api.example:443", "..", ".", "256.1.1.1", "x",
	} {
		_, err := netip.ParseAddr(h)
		if err == nil && !mayBeIPLiteral(h) {
			t.Errorf("mayBeIPLiteral(%q) = false, but ParseAddr reads it", h)
		}
	}
}

func FuzzMayBeIPLiteral(f *testing.F) {
	for _, h := range []string{"1.2.3.4", "::1", "api.example", "1.2.3.4%z"} {
		f.Add(h)
	}
	f.Fuzz(func(t *testing.T, h string) {
		if _, err := netip.ParseAddr(h); err == nil && !mayBeIPLiteral(h) {
			t.Errorf("mayBeIPLiteral(%q) = false, but ParseAddr reads it", h)
		}
	})
}
