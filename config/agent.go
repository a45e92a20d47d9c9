package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Agent configures the node agent: which workloads are intercepted and
// how their traffic reaches the proxy.
type Agent struct {
	// InterceptIPv4 and InterceptIPv6 are the node-local addresses the
	// proxy and DNS server listen on; placed on a dummy interface "sluice0"
	// where the kernel has one, else on "lo".
	InterceptIPv4 netip.Addr `yaml:"interceptIPv4"`
	InterceptIPv6 netip.Addr `yaml:"interceptIPv6"`
	// ProxyPort is the transparent proxy's port on the intercept address.
	ProxyPort uint16 `yaml:"proxyPort"`
	// Ports are the destination TCP ports redirected to the proxy;
	// ["all"] redirects every port.
	Ports []string `yaml:"ports"`
	// Cgroups are cgroup v2 path globs (relative to the cgroup2 mount)
	// whose processes are intercepted, e.g. "/kubepods.slice/**".
	Cgroups []string `yaml:"cgroups"`
	// Select selects containers and pods by what the container runtime
	// says about them (agent.runtime): a container or pod that one entry
	// matches is intercepted, besides the cgroups of Cgroups.
	Select []Select `yaml:"select"`
	// Runtime says where the container runtimes are, whose metadata
	// names workloads (records, policy) and feeds Select.
	Runtime Runtime `yaml:"runtime"`
	// DenyCIDRs are refused in the kernel (connect fails with EPERM).
	DenyCIDRs []netip.Prefix `yaml:"denyCIDRs"`
	// BypassCIDRs are never redirected: selected workloads reach them
	// directly (e.g. the Kubernetes API server's Service IP, whose
	// clients trust only their own CA). The longest prefix across
	// denyCIDRs and bypassCIDRs decides; connects still show as events.
	BypassCIDRs []netip.Prefix `yaml:"bypassCIDRs"`
	// BypassHosts are names (NO_PROXY style: "name" exactly, "*.suffix"
	// any name under suffix) whose connects are never redirected. The
	// kernel decides by address: with the DNS server, the addresses it
	// answers a selected workload for such a name are bypassed for the
	// answer's TTL (for every selected workload); without it (dnsPort
	// 0), the agent resolves the names at start and every minute, and
	// "*.suffix" can't be resolved. An address in denyCIDRs is never
	// bypassed.
	BypassHosts []string `yaml:"bypassHosts"`
	// FailMode "closed" pins the hooks so redirection survives an agent
	// restart; "open" removes them when the agent exits.
	FailMode string `yaml:"failMode"`
	// Mark is the SO_MARK on the agent's own sockets; hooks skip them.
	Mark uint32 `yaml:"mark"`
	// BPFFS is where pins live (bpffs is mounted there if needed).
	BPFFS string `yaml:"bpffs"`
	// Attach is where the hooks attach: "cgroup" (default) attaches them
	// to each selected cgroup; "root" attaches them once at the cgroup2
	// root and selects cgroups through a map, which scales to a node.
	Attach string `yaml:"attach"`

	// DNSPort is the DNS server's port (UDP and TCP) on the intercept
	// addresses: selected workloads' DNS (UDP and TCP to port 53, any
	// resolver) is steered to it. 0 turns the DNS server and the
	// steering off.
	DNSPort uint16 `yaml:"dnsPort"`
	// RefuseQUIC refuses selected workloads' UDP to port 443 (EPERM), so
	// that HTTP/3 clients fall back to TCP, where the proxy sees them.
	RefuseQUIC bool `yaml:"refuseQUIC"`
	// DNS configures the DNS server.
	DNS DNS `yaml:"dns"`
}

// Select is one agent.select entry: globs ("*" any run of characters,
// "?" one) ORed within a field, the fields ANDed; a field left out
// matches everything, an entry must name at least one.
type Select struct {
	// Namespaces are Kubernetes namespaces.
	Namespaces []string `yaml:"namespaces"`
	// Labels must all be present with matching values: the pod's labels
	// over the container's own (Docker or CRI labels).
	Labels map[string]string `yaml:"labels"`
	// Containers are container names: the Kubernetes container name in
	// a pod, else the runtime's (Docker's) name.
	Containers []string `yaml:"containers"`
	// Images are images as the runtime names them, e.g.
	// "docker.io/library/python:*" or "registry.example.com/team/*".
	Images []string `yaml:"images"`
}

// Runtime configures where container metadata comes from. Each of Docker
// and CRI is a unix socket path, "auto" (the usual path when a socket is
// there) or "off".
type Runtime struct {
	// Docker: the Docker Engine API; auto: /var/run/docker.sock.
	Docker string `yaml:"docker"`
	// CRI: the kubelet's runtime; auto: /run/containerd/containerd.sock,
	// else /run/crio/crio.sock.
	CRI string `yaml:"cri"`
	// Kubernetes: "auto" reads pod labels from the Kubernetes API (pods on
	// this node, watched) when the agent runs in a cluster (service
	// account token and KUBERNETES_SERVICE_HOST present), "off" never.
	Kubernetes string `yaml:"kubernetes"`
	// NodeName is this node's name for the Kubernetes API; empty: the
	// NODE_NAME environment variable (the downward API), else the host
	// name.
	NodeName string `yaml:"nodeName"`
	// CacheSize bounds the containers and, separately, the pods kept.
	CacheSize int `yaml:"cacheSize"`
}

// DNS configures the agent's DNS server.
type DNS struct {
	// Upstreams are the resolvers queries are forwarded to, as "ip" or
	// "ip:port"; empty: the nameservers of /etc/resolv.conf.
	Upstreams []string `yaml:"upstreams"`
	// DenyRcode answers a name the policy denies: "nxdomain" (default)
	// or "refused".
	DenyRcode string `yaml:"denyRcode"`
	// CacheSize bounds the answers cached (per TTL); 0 disables the cache.
	CacheSize int `yaml:"cacheSize"`
	// NamesSize bounds the {workload, address} -> names bindings kept
	// for the proxy (TTL-bounded).
	NamesSize int `yaml:"namesSize"`
	// Exfil is the exfiltration guard on every selected workload's
	// queries.
	Exfil Exfil `yaml:"exfil"`
}

// Exfil configures the DNS server's exfiltration guard. Each limit is per
// workload (cgroup); 0 turns that check off.
type Exfil struct {
	// Mode: "audit" (default) records flagged queries as would_deny and
	// answers them, "enforce" denies them (denyRcode), "off" disables
	// the guard.
	Mode string `yaml:"mode"`
	// QueriesPerSecond is the rate of queries a workload may send (a
	// burst of twice as many passes).
	QueriesPerSecond float64 `yaml:"queriesPerSecond"`
	// MaxLabelLength is the longest label allowed (DNS allows 63).
	MaxLabelLength int `yaml:"maxLabelLength"`
	// MaxLabelEntropy is the largest Shannon entropy, in bits per
	// character, of a label of at least entropyMinLength characters.
	MaxLabelEntropy  float64 `yaml:"maxLabelEntropy"`
	EntropyMinLength int     `yaml:"entropyMinLength"`
	// UniqueSubdomainsPerMinute bounds the different names under one
	// registrable domain a workload may ask in a minute.
	UniqueSubdomainsPerMinute int `yaml:"uniqueSubdomainsPerMinute"`
	// TrackSize bounds the workloads and {workload, domain} pairs the
	// guard keeps counts for.
	TrackSize int `yaml:"trackSize"`
}

// DefaultAgent returns the agent defaults.
func DefaultAgent() Agent {
	return Agent{
		InterceptIPv4: netip.MustParseAddr("169.254.77.77"),
		InterceptIPv6: netip.MustParseAddr("fdc5:1ce0:77::77"),
		ProxyPort:     15001,
		Ports:         []string{"all"},
		DenyCIDRs:     []netip.Prefix{netip.MustParsePrefix("169.254.169.254/32"), netip.MustParsePrefix("fd00:ec2::254/128")},
		FailMode:      "closed",
		Mark:          0x5c1ce,
		BPFFS:         "/sys/fs/bpf/sluice",
		Attach:        "cgroup",
		DNSPort:       15053,
		RefuseQUIC:    true,
		Runtime:       Runtime{Docker: "auto", CRI: "auto", Kubernetes: "auto", CacheSize: 16384},
		DNS: DNS{DenyRcode: "nxdomain", CacheSize: 10000, NamesSize: 65536, Exfil: Exfil{
			Mode: "audit", QueriesPerSecond: 50, MaxLabelLength: 52, MaxLabelEntropy: 4.0, EntropyMinLength: 24,
			UniqueSubdomainsPerMinute: 100, TrackSize: 4096,
		}},
	}
}

func (a Agent) validate() []error {
	var errs []error
	if a.FailMode != "closed" && a.FailMode != "open" {
		errs = append(errs, fmt.Errorf("agent.failMode %q: must be \"closed\" or \"open\"", a.FailMode))
	}
	if !a.InterceptIPv4.Is4() {
		errs = append(errs, fmt.Errorf("agent.interceptIPv4 %q: must be an IPv4 address, e.g. 169.254.77.77", a.InterceptIPv4))
	}
	if a.InterceptIPv6.IsValid() && (!a.InterceptIPv6.Is6() || a.InterceptIPv6.Is4In6()) {
		errs = append(errs, fmt.Errorf("agent.interceptIPv6 %q: must be an IPv6 address, e.g. fdc5:1ce0:77::77, or empty to intercept no IPv6", a.InterceptIPv6))
	}
	if a.ProxyPort == 0 {
		errs = append(errs, fmt.Errorf("agent.proxyPort 0: must be a port number, e.g. 15001"))
	}
	if len(a.Ports) == 0 {
		errs = append(errs, fmt.Errorf("agent.ports []: list the intercepted TCP ports, e.g. [\"80\", \"443\"], or [\"all\"]"))
	}
	for i, p := range a.Ports {
		if p == "all" {
			continue
		}
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			errs = append(errs, fmt.Errorf("agent.ports[%d] %q: must be a port number 1-65535 or \"all\"", i, p))
		}
	}
	for i, c := range a.Cgroups {
		if !strings.HasPrefix(c, "/") {
			errs = append(errs, fmt.Errorf("agent.cgroups[%d] %q: must start with \"/\" (relative to the cgroup2 mount), e.g. \"/kubepods.slice/**\"", i, c))
		}
	}
	if a.BPFFS == "" || !strings.HasPrefix(a.BPFFS, "/") {
		errs = append(errs, fmt.Errorf("agent.bpffs %q: must be an absolute path, e.g. /sys/fs/bpf/sluice", a.BPFFS))
	}
	if a.Attach != "cgroup" && a.Attach != "root" {
		errs = append(errs, fmt.Errorf("agent.attach %q: must be \"cgroup\" or \"root\"", a.Attach))
	}
	errs = append(errs, a.validateDNS()...)
	errs = append(errs, a.validateBypassHosts()...)
	errs = append(errs, a.validateSelect()...)
	return errs
}

// validateSelect checks agent.select and agent.runtime.
func (a Agent) validateSelect() []error {
	var errs []error
	for i, s := range a.Select {
		at := fmt.Sprintf("agent.select[%d]", i)
		if len(s.Namespaces)+len(s.Labels)+len(s.Containers)+len(s.Images) == 0 {
			errs = append(errs, fmt.Errorf("%s: selects every container: name namespaces, labels, containers or images (or use agent.cgroups: [\"/**\"] on purpose)", at))
		}
		for _, f := range []struct {
			name  string
			globs []string
		}{{"namespaces", s.Namespaces}, {"containers", s.Containers}, {"images", s.Images}} {
			for j, g := range f.globs {
				if strings.TrimSpace(g) == "" || strings.Trim(g, "*") == "" {
					errs = append(errs, fmt.Errorf("%s.%s[%d] %q: matches everything: name one, e.g. \"team-*\", or leave the field out", at, f.name, j, g))
				}
			}
		}
		for k := range s.Labels {
			if k == "" || strings.ContainsAny(k, " \t\n*?") {
				errs = append(errs, fmt.Errorf("%s.labels %q: not a label key (no spaces or globs in keys), e.g. app.kubernetes.io/name", at, k))
			}
		}
	}
	r := a.Runtime
	for _, f := range []struct{ name, v string }{{"docker", r.Docker}, {"cri", r.CRI}} {
		if f.v != "auto" && f.v != "off" && !strings.HasPrefix(f.v, "/") {
			errs = append(errs, fmt.Errorf("agent.runtime.%s %q: must be \"auto\", \"off\" or the socket's absolute path, e.g. /run/containerd/containerd.sock", f.name, f.v))
		}
	}
	if r.Kubernetes != "auto" && r.Kubernetes != "off" {
		errs = append(errs, fmt.Errorf("agent.runtime.kubernetes %q: must be \"auto\" or \"off\"", r.Kubernetes))
	}
	if r.CacheSize <= 0 {
		errs = append(errs, fmt.Errorf("agent.runtime.cacheSize %d: must be positive, e.g. 16384", r.CacheSize))
	}
	return errs
}

// validateBypassHosts checks agent.bypassHosts: names or "*.suffix".
func (a Agent) validateBypassHosts() []error {
	var errs []error
	for i, h := range a.BypassHosts {
		bad := func(fix string) {
			errs = append(errs, fmt.Errorf("agent.bypassHosts[%d] %q: %s", i, h, fix))
		}
		name := strings.TrimSuffix(h, ".")
		switch {
		case strings.TrimSpace(h) == "":
			bad("empty: give a name, e.g. \"kubernetes.default.svc\" or \"*.internal.example\"")
			continue
		case strings.Contains(h, "://") || strings.Contains(h, "/"):
			bad(fmt.Sprintf("a host name, not a URL: use %q", hostOf(h)))
			continue
		case isAddr(h):
			bad("an address: list it in agent.bypassCIDRs instead, e.g. \"" + addrPrefix(h) + "\"")
			continue
		case strings.Contains(h, ":"):
			bad(fmt.Sprintf("a host name without a port: use %q (every port of the host is bypassed)", h[:strings.LastIndex(h, ":")]))
			continue
		case name == "*":
			bad("bypasses every name: list the names, e.g. \"*.internal.example\"")
			continue
		case strings.HasPrefix(name, "."):
			bad(fmt.Sprintf("use %q for the names under %s", "*"+name, name[1:]))
			continue
		case strings.Contains(name[1:], "*") || (strings.HasPrefix(name, "*") && !strings.HasPrefix(name, "*.")):
			bad("a wildcard must be a whole leading label, use \"*.example.com\"")
			continue
		}
		labels := strings.Split(strings.TrimPrefix(name, "*."), ".")
		ok := true
		for _, l := range labels {
			if l == "" || len(l) > 63 || strings.HasPrefix(l, "-") || strings.HasSuffix(l, "-") || strings.IndexFunc(l, func(r rune) bool {
				return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
			}) >= 0 {
				ok = false
			}
		}
		if !ok {
			bad("not a host name: labels of letters, digits and hyphens separated by dots, e.g. \"api.example.com\"")
			continue
		}
		if strings.HasPrefix(name, "*.") && a.DNSPort == 0 {
			bad("a wildcard needs the DNS server (agent.dnsPort) to learn the names workloads resolve: set agent.dnsPort, or list the names")
		}
	}
	return errs
}

func isAddr(s string) bool {
	_, err := netip.ParseAddr(strings.Trim(s, "[]"))
	return err == nil
}

// addrPrefix is the single-address prefix of an address.
func addrPrefix(s string) string {
	a, _ := netip.ParseAddr(strings.Trim(s, "[]"))
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// hostOf is the host of a URL-like string.
func hostOf(s string) string {
	if _, rest, ok := strings.Cut(s, "://"); ok {
		s = rest
	}
	s, _, _ = strings.Cut(s, "/")
	if i := strings.LastIndex(s, ":"); i >= 0 && !strings.Contains(s[:i], ":") {
		s = s[:i]
	}
	return s
}

// validateDNS checks agent.dnsPort and agent.dns.
func (a Agent) validateDNS() []error {
	var errs []error
	if a.DNSPort != 0 && a.DNSPort == a.ProxyPort {
		errs = append(errs, fmt.Errorf("agent.dnsPort %d: must differ from agent.proxyPort, e.g. 15053", a.DNSPort))
	}
	for i, u := range a.DNS.Upstreams {
		if _, err := ParseUpstream(u); err != nil {
			errs = append(errs, fmt.Errorf("agent.dns.upstreams[%d] %q: must be an IP address with an optional port, e.g. 10.96.0.10 or [fd00::a]:53", i, u))
		}
	}
	if a.DNS.DenyRcode != "nxdomain" && a.DNS.DenyRcode != "refused" {
		errs = append(errs, fmt.Errorf("agent.dns.denyRcode %q: must be \"nxdomain\" or \"refused\"", a.DNS.DenyRcode))
	}
	if a.DNS.CacheSize < 0 {
		errs = append(errs, fmt.Errorf("agent.dns.cacheSize %d: must be 0 (no cache) or more, e.g. 10000", a.DNS.CacheSize))
	}
	if a.DNS.NamesSize <= 0 {
		errs = append(errs, fmt.Errorf("agent.dns.namesSize %d: must be positive, e.g. 65536", a.DNS.NamesSize))
	}
	return append(errs, a.DNS.Exfil.validate()...)
}

// validate checks agent.dns.exfil, every problem at once.
func (x Exfil) validate() []error {
	var errs []error
	switch x.Mode {
	case "off", "audit", "enforce":
	default:
		errs = append(errs, fmt.Errorf("agent.dns.exfil.mode %q: must be \"audit\", \"enforce\" or \"off\"", x.Mode))
	}
	if x.QueriesPerSecond < 0 {
		errs = append(errs, fmt.Errorf("agent.dns.exfil.queriesPerSecond %v: must be 0 (no limit) or more, e.g. 50", x.QueriesPerSecond))
	}
	if x.MaxLabelLength < 0 || x.MaxLabelLength > 63 {
		errs = append(errs, fmt.Errorf("agent.dns.exfil.maxLabelLength %d: must be 0 (no limit) to 63, e.g. 52", x.MaxLabelLength))
	}
	if x.MaxLabelEntropy < 0 || x.MaxLabelEntropy > 8 {
		errs = append(errs, fmt.Errorf("agent.dns.exfil.maxLabelEntropy %v: must be 0 (no limit) to 8 bits per character, e.g. 4.0", x.MaxLabelEntropy))
	}
	if x.EntropyMinLength < 0 {
		errs = append(errs, fmt.Errorf("agent.dns.exfil.entropyMinLength %d: must be 0 or more, e.g. 24", x.EntropyMinLength))
	}
	if x.UniqueSubdomainsPerMinute < 0 {
		errs = append(errs, fmt.Errorf("agent.dns.exfil.uniqueSubdomainsPerMinute %d: must be 0 (no limit) or more, e.g. 100", x.UniqueSubdomainsPerMinute))
	}
	if x.TrackSize <= 0 {
		errs = append(errs, fmt.Errorf("agent.dns.exfil.trackSize %d: must be positive, e.g. 4096", x.TrackSize))
	}
	return errs
}

// ParseUpstream parses a DNS upstream, "ip" (port 53) or "ip:port".
func ParseUpstream(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("parse dns upstream %q: %w", s, err)
	}
	return netip.AddrPortFrom(a, 53), nil
}
