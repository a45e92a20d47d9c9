package policy

import (
	"context"
	"net/netip"
	"testing"

	"github.com/sluicehq/sluice/audit"
)

func TestClassify(t *testing.T) {
	for _, tt := range []struct {
		addr, want string
	}{
		// Cloud metadata, always refused.
		{"169.254.169.254", audit.ReasonMetadata},
		{"169.254.170.2", audit.ReasonMetadata},
		{"100.100.100.200", audit.ReasonMetadata},
		{"168.63.129.16", audit.ReasonMetadata}, // Azure WireServer
		{"fd00:ec2::254", audit.ReasonMetadata},
		{"::ffff:168.63.129.16", audit.ReasonMetadata},
		{"64:ff9b::a83f:8110", audit.ReasonMetadata}, // NAT64 of the WireServer
		// IPv4-compatible (::a.b.c.d) is judged by its IPv4 address.
		{"::a9fe:a9fe", audit.ReasonMetadata},
		{"::169.254.169.254", audit.ReasonMetadata},
		{"::168.63.129.16", audit.ReasonMetadata},
		{"::127.0.0.1", audit.ReasonEmbedded},
		{"::10.0.0.1", audit.ReasonEmbedded},
		{"::0.0.0.2", audit.ReasonEmbedded},
		{"::8.8.8.8", audit.ReasonReserved}, // deprecated, even with a public address
		{"::", audit.ReasonUnspecified},
		{"::1", audit.ReasonLoopback},
		// The neighbours of the WireServer are ordinary public addresses.
		{"168.63.129.15", ""},
		{"168.63.129.17", ""},
		// Other embeddings, unchanged.
		{"64:ff9b::a9fe:a9fe", audit.ReasonMetadata},
		{"2002:a9fe:a9fe::", audit.ReasonMetadata},
		{"64:ff9b::808:808", ""},
		{"64:ff9b::7f00:1", audit.ReasonEmbedded},
		{"93.184.215.14", ""},
		{"2606:4700::1111", ""},
	} {
		if got := Classify(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("Classify(%s) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}

// TestGuardRefusesNewMetadataForms: what a workload sees through the
// default policy (audit everything): a connection to the Azure WireServer,
// or to instance metadata written as an IPv4-compatible IPv6 address, is
// refused even in audit mode.
func TestGuardRefusesNewMetadataForms(t *testing.T) {
	e, err := Default(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"168.63.129.16", "::a9fe:a9fe", "::168.63.129.16"} {
		d := e.Connection(context.Background(), &Conn{Host: "metadata.example", Port: 80, Addrs: []netip.Addr{netip.MustParseAddr(a)}})
		if d.Action != Reject || d.Rule != RuleSSRF || d.Reason != audit.ReasonMetadata || d.WouldDeny {
			t.Errorf("%s: %v rule=%q reason=%q would=%v, want a reject by %q: %q", a, d.Action, d.Rule, d.Reason, d.WouldDeny, RuleSSRF, audit.ReasonMetadata)
		}
	}
}
