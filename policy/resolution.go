package policy

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/sluicehq/sluice/audit"
)

// This file is the policy of how destinations relate to DNS (the
// resolution section): encrypted DNS to well-known public resolvers (DoH,
// DoT) is denied by default, since it would take a workload's names past
// the agent's DNS server and its dns rules; and, with requireResolved, a
// connection to an address the workload did not obtain from DNS is
// denied, so that a hard-coded address can't dodge the rules by name.

// Rule names of the resolution checks.
const (
	RulePublicResolver  = "public-resolver"
	RuleRequireResolved = "require-resolved"
)

// dotPort is DNS over TLS (RFC 7858).
const dotPort = 853

// PublicResolverHosts are the DNS-over-HTTPS and DNS-over-TLS hosts of
// well-known public resolvers: a connection naming one of them (SNI, Host
// or a name the workload resolved to the address) is denied unless
// resolution.allowDoH.
var PublicResolverHosts = []string{
	"dns.google", "dns.google.com", "dns64.dns.google", "8888.google",
	"cloudflare-dns.com", "*.cloudflare-dns.com", "one.one.one.one", "1dot1dot1dot1.cloudflare-dns.com",
	"dns.quad9.net", "dns9.quad9.net", "dns10.quad9.net", "dns11.quad9.net", "dns12.quad9.net",
	"doh.opendns.com", "dns.opendns.com", "doh.familyshield.opendns.com", "doh.sandbox.opendns.com",
	"dns.adguard.com", "dns.adguard-dns.com", "*.dns.adguard-dns.com", "dns-unfiltered.adguard.com",
	"doh.cleanbrowsing.org", "*.doh.cleanbrowsing.org",
	"dns.nextdns.io", "*.dns.nextdns.io",
	"doh.mullvad.net", "dns.mullvad.net", "*.dns.mullvad.net",
	"dns.controld.com", "freedns.controld.com",
	"doh.dns.sb", "dns.twnic.tw", "doh.libredns.gr", "dns.alidns.com", "doh.pub", "dot.pub",
}

// publicResolverHosts is PublicResolverHosts compiled for matching.
var publicResolverHosts = newHostSet(PublicResolverHosts)

// PublicResolverCIDRs are those resolvers' anycast addresses: a
// connection to one of them on port 443 or 853 is denied unless
// resolution.allowDoH (plain DNS to them, port 53, is steered to the
// agent's DNS server).
var PublicResolverCIDRs = mustPrefixes(
	// Google Public DNS
	"8.8.8.8/32", "8.8.4.4/32", "2001:4860:4860::8888/128", "2001:4860:4860::8844/128",
	// Cloudflare 1.1.1.1 (and its families)
	"1.1.1.1/32", "1.0.0.1/32", "1.1.1.2/32", "1.0.0.2/32", "1.1.1.3/32", "1.0.0.3/32", "2606:4700:4700::/48",
	// Quad9
	"9.9.9.9/32", "9.9.9.10/32", "9.9.9.11/32", "9.9.9.12/32", "149.112.112.112/32", "149.112.112.10/32",
	"149.112.112.11/32", "149.112.112.12/32", "2620:fe::/48",
	// OpenDNS (Cisco Umbrella)
	"208.67.222.222/32", "208.67.220.220/32", "208.67.222.123/32", "208.67.220.123/32",
	"2620:119:35::35/128", "2620:119:53::53/128",
	// AdGuard DNS
	"94.140.14.14/32", "94.140.15.15/32", "94.140.14.140/32", "94.140.14.141/32", "2a10:50c0::/32",
	// CleanBrowsing
	"185.228.168.9/32", "185.228.169.9/32", "185.228.168.10/32", "185.228.169.11/32",
	// Mullvad
	"194.242.2.2/32", "2a07:e340::/32",
	// NextDNS
	"45.90.28.0/24", "45.90.30.0/24",
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// resolution is the compiled Resolution section.
type resolution struct {
	allowDoH        bool
	requireResolved bool
	unresolved      []netip.Prefix // exempt from requireResolved
	audit           bool
}

func compileResolution(r Resolution, globalAudit bool) (resolution, error) {
	c := resolution{allowDoH: r.AllowDoH, requireResolved: r.RequireResolved, audit: globalAudit}
	if r.Mode != "" {
		c.audit = r.Mode == "audit"
	}
	for _, s := range r.UnresolvedCIDRs {
		p, err := parseCIDR(s)
		if err != nil {
			return c, &Problem{Path: "resolution.unresolvedCIDRs", Value: s, Msg: "not a CIDR"}
		}
		c.unresolved = append(c.unresolved, p.Masked())
	}
	return c, nil
}

// isPublicResolver reports whether the connection goes to a well-known
// public resolver's encrypted DNS: by a name (host or names, the names
// behind the address), by address on 443 when no name is given (a name
// is bound to the address by the proxy: a certificate or a lookup), or
// to port 853.
func isPublicResolver(host string, names []string, addrs []netip.Addr, port uint16) bool {
	if port == dotPort {
		return true
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if mayBeIPLiteral(host) {
		if _, err := netip.ParseAddr(host); err == nil {
			host = "" // an IP literal names nothing
		}
	}
	if host != "" {
		return publicResolverHosts.match(host)
	}
	for _, n := range names {
		if publicResolverHosts.match(n) {
			return true
		}
	}
	if port == 443 {
		for _, a := range addrs {
			if inAny(PublicResolverCIDRs, a) {
				return true
			}
		}
	}
	return false
}

// mayBeIPLiteral is false for a host that netip.ParseAddr refuses
// without a doubt: no ':' (so not IPv6) and a byte other than a digit
// or '.' (so not IPv4). A name is asked about per request, and
// ParseAddr's error for it is an allocation.
func mayBeIPLiteral(host string) bool {
	if strings.IndexByte(host, ':') >= 0 {
		return true
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c != '.' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// dohRequest reports whether an HTTP request is DNS over HTTPS (RFC
// 8484) to any server: a dns-message body or accepted answer.
func dohRequest(r *Request) bool {
	for _, h := range []string{"Content-Type", "Accept"} {
		for _, v := range r.Header.Values(h) {
			if strings.Contains(strings.ToLower(v), "application/dns-message") {
				return true
			}
		}
	}
	return false
}

// check applies the resolution section to a connection (req: its HTTP
// request, nil before HTTP). ok is false when it flags the connection; d
// then says why (WouldDeny in audit mode).
func (r *resolution) check(c *Conn, host string, req *Request) (d Decision, ok bool) {
	return r.checkWith(c, !r.allowDoH && isPublicResolver(host, c.Names, c.Addrs, c.Port), req)
}

// checkWith is check with isPublicResolver's answer for the connection
// and host given (Request keeps it per connection: connMemo).
func (r *resolution) checkWith(c *Conn, publicResolver bool, req *Request) (d Decision, ok bool) {
	if !r.allowDoH && (publicResolver || (req != nil && dohRequest(req))) {
		return r.decision(RulePublicResolver, audit.ReasonPublicResolver), false
	}
	if r.requireResolved && c.Unresolved && len(c.Addrs) > 0 && !inAny(r.unresolved, c.Addrs[0]) {
		return r.decision(RuleRequireResolved, audit.ReasonUnresolved), false
	}
	return Decision{}, true
}

func (r *resolution) decision(rule, reason string) Decision {
	d := Decision{Verdict: Deny, Rule: rule, Reason: reason}
	if r.audit {
		d.Verdict, d.WouldDeny = Allow, true
	}
	return d
}

// validateResolution checks the resolution section.
func (d *decoder) validateResolution(r Resolution) {
	d.checkMode("resolution.mode", r.Mode)
	for i, c := range r.UnresolvedCIDRs {
		d.checkCIDR(fmt.Sprintf("resolution.unresolvedCIDRs[%d]", i), c)
	}
	if len(r.UnresolvedCIDRs) > 0 && !r.RequireResolved {
		d.add("resolution.unresolvedCIDRs", "", "applies only with requireResolved: true; set it or remove the list")
	}
}
