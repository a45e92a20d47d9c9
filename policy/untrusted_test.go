package policy

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/audit"
)

// tls.onUntrustedClient passthrough turns a TLS connection the proxy marks
// ClientUntrusted into a pass-through, with its own rule and reason; deny
// rules still apply, and without the option (or the mark) it is decrypted.
func TestOnUntrustedClient(t *testing.T) {
	conn := func(untrusted bool, host string) *Conn {
		return &Conn{Host: host, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, Port: 443, TLS: true, ClientUntrusted: untrusted}
	}
	const rules = "rules:\n  - name: no-evil\n    destinations: {hosts: [evil.test]}\n    action: deny\n"
	for _, tc := range []struct {
		name, tls string
		c         *Conn
		action    Action
		rule      string
		reason    string
	}{
		{"passthrough, untrusted", "tls: {onUntrustedClient: passthrough}\n", conn(true, "api.test"), Passthrough, RuleUntrustedClient, audit.ReasonUntrustedPassthrough},
		{"passthrough, trusted", "tls: {onUntrustedClient: passthrough}\n", conn(false, "api.test"), Decrypt, "", ""},
		{"intercept, untrusted", "tls: {onUntrustedClient: intercept}\n", conn(true, "api.test"), Decrypt, "", ""},
		{"default, untrusted", "", conn(true, "api.test"), Decrypt, "", ""},
		{"passthrough, untrusted, denied host", "tls: {onUntrustedClient: passthrough}\n", conn(true, "evil.test"), Reject, "no-evil", audit.ReasonDeniedByRule},
		{"listed host keeps its reason", "tls: {onUntrustedClient: passthrough, passthrough: [api.test]}\n", conn(true, "api.test"), Passthrough, RulePassthrough, audit.ReasonPassthrough},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Parse([]byte("version: 1\nssrf: {allowCIDRs: [192.0.2.0/24]}\n"+tc.tls+rules), "p.yaml")
			if err != nil {
				t.Fatal(err)
			}
			d := e.Connection(context.Background(), tc.c)
			if d.Action != tc.action || (tc.rule != "" && (d.Rule != tc.rule || d.Reason != tc.reason)) {
				t.Errorf("got %v rule %q reason %q, want %v %q %q", d.Action, d.Rule, d.Reason, tc.action, tc.rule, tc.reason)
			}
		})
	}
	_, err := Decode([]byte("version: 1\ntls: {onUntrustedClient: bypass}\n"), "p.yaml")
	if err == nil || !strings.Contains(err.Error(), `tls.onUntrustedClient "bypass": use intercept (the default) or passthrough`) {
		t.Errorf("bad value: %v", err)
	}
}
