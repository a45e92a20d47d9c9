package config

import (
	"fmt"
	"net/netip"
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
	// DenyCIDRs are refused in the kernel (connect fails with EPERM).
	DenyCIDRs []netip.Prefix `yaml:"denyCIDRs"`
	// FailMode "closed" pins the hooks so redirection survives an agent
	// restart; "open" removes them when the agent exits.
	FailMode string `yaml:"failMode"`
	// Mark is the SO_MARK on the agent's own sockets; hooks skip them.
	Mark uint32 `yaml:"mark"`
	// BPFFS is where pins live (bpffs is mounted there if needed).
	BPFFS string `yaml:"bpffs"`
}

// DefaultAgent returns the agent defaults.
func DefaultAgent() Agent {
	return Agent{
		InterceptIPv4: netip.MustParseAddr("169.254.77.77"),
		InterceptIPv6: netip.MustParseAddr("fdc5:1ce0:77::77"),
		ProxyPort:     15001,
		Ports:         []string{"80", "443"},
		DenyCIDRs:     []netip.Prefix{netip.MustParsePrefix("169.254.169.254/32"), netip.MustParsePrefix("fd00:ec2::254/128")},
		FailMode:      "closed",
		Mark:          0x5c1ce,
		BPFFS:         "/sys/fs/bpf/sluice",
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
	return errs
}
