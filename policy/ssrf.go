package policy

import (
	"net/netip"

	"github.com/sluicehq/sluice/audit"
)

// RuleSSRF is the Decision.Rule of the address guard. Its reasons are
// audit's address-guard reasons (audit.ReasonMetadata, …).
const RuleSSRF = "ssrf"

var (
	metadataAddrs = []netip.Addr{
		netip.MustParseAddr("169.254.169.254"), // AWS, GCP, Azure, OpenStack, ...
		netip.MustParseAddr("169.254.170.2"),   // AWS ECS task metadata
		netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
		netip.MustParseAddr("168.63.129.16"),   // Azure WireServer (VM agent, extensions, platform DNS)
		netip.MustParseAddr("fd00:ec2::254"),   // AWS IMDS over IPv6
	}
	classes = []struct {
		p      netip.Prefix
		reason string
	}{
		{netip.MustParsePrefix("0.0.0.0/8"), audit.ReasonUnspecified},
		{netip.MustParsePrefix("127.0.0.0/8"), audit.ReasonLoopback},
		{netip.MustParsePrefix("169.254.0.0/16"), audit.ReasonLinkLocal},
		{netip.MustParsePrefix("10.0.0.0/8"), audit.ReasonPrivate},
		{netip.MustParsePrefix("172.16.0.0/12"), audit.ReasonPrivate},
		{netip.MustParsePrefix("192.168.0.0/16"), audit.ReasonPrivate},
		{netip.MustParsePrefix("100.64.0.0/10"), audit.ReasonCGNAT},
		{netip.MustParsePrefix("192.0.0.0/24"), audit.ReasonReserved},  // IETF protocol assignments
		{netip.MustParsePrefix("198.18.0.0/15"), audit.ReasonReserved}, // benchmarking
		{netip.MustParsePrefix("224.0.0.0/4"), audit.ReasonMulticast},
		{netip.MustParsePrefix("240.0.0.0/4"), audit.ReasonReserved}, // future use
		{netip.MustParsePrefix("::/128"), audit.ReasonUnspecified},
		{netip.MustParsePrefix("::1/128"), audit.ReasonLoopback},
		{netip.MustParsePrefix("fe80::/10"), audit.ReasonLinkLocal},
		{netip.MustParsePrefix("fc00::/7"), audit.ReasonPrivate},  // unique local
		{netip.MustParsePrefix("fec0::/10"), audit.ReasonPrivate}, // deprecated site-local
		{netip.MustParsePrefix("ff00::/8"), audit.ReasonMulticast},
		{netip.MustParsePrefix("100::/64"), audit.ReasonReserved},      // discard-only
		{netip.MustParsePrefix("2001:db8::/32"), audit.ReasonReserved}, // documentation
		{netip.MustParsePrefix("::/96"), audit.ReasonReserved},         // deprecated IPv4-compatible
	}
	v4Compat  = netip.MustParsePrefix("::/96")
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	nat64Loc  = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFour = netip.MustParsePrefix("2002::/16")
	teredo    = netip.MustParsePrefix("2001::/32")
)

// Classify returns the guard's reason for a, or "" when a is an ordinary
// public address. IPv4-mapped addresses are judged as the IPv4 address;
// NAT64 (64:ff9b::/96), 6to4 (2002::/16), Teredo (2001::/32) and
// IPv4-compatible (::a.b.c.d, ::/96 but :: and ::1) addresses by the IPv4
// address they embed; local-use NAT64 (64:ff9b:1::/48), whose layout is
// the operator's choice, is always refused. IPv4-compatible addresses are
// deprecated, so one embedding a public IPv4 address is still refused as
// reserved.
func Classify(a netip.Addr) string {
	if !a.IsValid() {
		return audit.ReasonUnspecified
	}
	a = a.WithZone("")
	if a.Is4In6() {
		return Classify(a.Unmap())
	}
	for _, m := range metadataAddrs {
		if a == m {
			return audit.ReasonMetadata
		}
	}
	if a.Is6() {
		var v4 netip.Addr
		b := a.As16()
		switch {
		case nat64Loc.Contains(a):
			// Local-use NAT64 (RFC 8215): the operator picks the prefix
			// length, so where the IPv4 address sits is unknown.
			return audit.ReasonEmbedded
		case nat64.Contains(a):
			v4 = netip.AddrFrom4([4]byte(b[12:16]))
		case sixToFour.Contains(a):
			v4 = netip.AddrFrom4([4]byte(b[2:6]))
		case teredo.Contains(a):
			// The client's IPv4 address, inverted (RFC 4380).
			v4 = netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]})
		case v4Compat.Contains(a) && a != netip.IPv6Unspecified() && a != netip.IPv6Loopback():
			// Deprecated IPv4-compatible (RFC 4291 2.5.5.1): ::a.b.c.d.
			v4 = netip.AddrFrom4([4]byte(b[12:16]))
		}
		if v4.IsValid() {
			switch r := Classify(v4); r {
			case "":
				if v4Compat.Contains(a) {
					return audit.ReasonReserved
				}
				return ""
			case audit.ReasonMetadata:
				return audit.ReasonMetadata
			default:
				return audit.ReasonEmbedded
			}
		}
	}
	if a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return audit.ReasonMulticast
	}
	for _, c := range classes {
		if c.p.Contains(a) {
			return c.reason
		}
	}
	return ""
}
