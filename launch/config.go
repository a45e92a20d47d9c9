package launch

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/sluicehq/sluice/config"
)

// A run keeps state of its own, apart from a node agent's (the defaults in
// config.DefaultAgent): a node agent's pins, hooks and intercept address
// are never adopted, replaced or removed by a run, and concurrent runs do
// not share an address or a port. A --config that sets
// agent.interceptIPv4, agent.interceptIPv6, agent.proxyPort or agent.bpffs
// explicitly keeps what it sets.
const (
	// addrFirst..addrLast is the range of the last byte of a run's
	// intercept addresses: 169.254.77.N and fdc5:1ce0:77::1:N (hex). The
	// node agent's default is 169.254.77.77 and fdc5:1ce0:77::77.
	addrFirst = 200
	addrLast  = 254
	// portBase + pid % portCount is a run's proxy port.
	portBase  = 15100
	portCount = 800
)

// Setup is what Configure needs besides the config.
type Setup struct {
	// PID names the run's own state (pins, port, first address tried).
	PID int
	// InUse are the addresses the node's interfaces hold (NodeAddrs).
	InUse map[netip.Addr]bool
	// AuditLog is --audit-log: it replaces audit.file when set.
	AuditLog string
}

// refused are the config keys that make no sense for one command, with
// the reason and the fix. Every other key applies to a run.
var refused = []struct{ key, why string }{
	{"agent.cgroups", "sluice run selects its own transient cgroup; remove this key"},
	{"agent.select", "sluice run selects its own transient cgroup; remove this key"},
	{"agent.runtime", "sluice run's command is in no container; remove this key"},
	{"agent.failMode", "sluice run's hooks always end with the run (open); remove this key"},
	{"agent.attach", "sluice run attaches its hooks to its own transient cgroup only; remove this key"},
	{"admin.listen", "sluice run serves the admin API only when asked with --metrics ADDR; remove this key (and pass --metrics ADDR for /metrics)"},
	{"proxy.listen", "sluice run has no explicit proxy listener; remove this key, or run sluice proxy"},
}

// Configure adapts cfg, as loaded from `sluice run --config`, to one run:
// it refuses the keys that only a node agent or the explicit proxy use
// (each with the fix, all at once), sends the audit log to --audit-log,
// else to audit.file when the file sets it, else nowhere (the command
// owns stdout), and gives the run its own pins, port and intercept
// addresses where the file does not set them. It returns the run's
// private bpffs directory, to remove at exit ("" when the file names one).
func Configure(cfg *config.Config, s Setup) (privateBPFFS string, err error) {
	var errs []error
	for _, r := range refused {
		if cfg.Set.Has(r.key) {
			errs = append(errs, fmt.Errorf("config %s: %s", r.key, r.why))
		}
	}
	switch {
	case s.AuditLog != "":
		cfg.Audit.File = s.AuditLog
	case !cfg.Set.Has("audit.file"):
		cfg.Audit.File = "none"
	case cfg.Audit.File == "" || cfg.Audit.File == "stdout":
		errs = append(errs, fmt.Errorf("config audit.file %q: sluice run's stdout is the command's; use a path, none, or --audit-log FILE", cfg.Audit.File))
	}
	if len(errs) > 0 {
		return "", errors.Join(errs...)
	}
	// One command's interception lives and dies with this process: hooks
	// are tied to it (failMode open) and only its transient cgroup is
	// selected.
	cfg.Agent.FailMode = "open"
	cfg.Agent.Cgroups = nil
	cfg.Agent.Select = nil
	cfg.Agent.Runtime.Docker, cfg.Agent.Runtime.CRI, cfg.Agent.Runtime.Kubernetes = "off", "off", "off"
	cfg.Agent.Attach = "cgroup"
	return agentDefaults(&cfg.Agent, cfg.Set, s.PID, s.InUse)
}

// agentDefaults gives a run its own bpffs directory
// (/sys/fs/bpf/sluice-run-<pid>, returned so that it is removed at exit),
// its own intercept addresses (the first pair in the run range, starting
// from the pid, that no interface holds) and a proxy port derived from the
// pid, for each of those the config does not set.
func agentDefaults(a *config.Agent, set config.Keys, pid int, inUse map[netip.Addr]bool) (privateBPFFS string, err error) {
	if !set.Has("agent.bpffs") {
		a.BPFFS = fmt.Sprintf("/sys/fs/bpf/sluice-run-%d", pid)
		privateBPFFS = a.BPFFS
	}
	if !set.Has("agent.proxyPort") {
		a.ProxyPort = uint16(portBase + pid%portCount)
	}
	set4, set6 := set.Has("agent.interceptIPv4"), set.Has("agent.interceptIPv6")
	if set4 && set6 {
		return privateBPFFS, nil
	}
	n := addrLast - addrFirst + 1
	for i := 0; i < n; i++ {
		last := byte(addrFirst + (pid+i)%n)
		v4 := netip.AddrFrom4([4]byte{169, 254, 77, last})
		v6 := netip.AddrFrom16([16]byte{0xfd, 0xc5, 0x1c, 0xe0, 0, 0x77, 13: 1, 15: last})
		if (!set4 && inUse[v4]) || (!set6 && inUse[v6]) {
			continue
		}
		if !set4 {
			a.InterceptIPv4 = v4
		}
		if !set6 && a.InterceptIPv6.IsValid() {
			a.InterceptIPv6 = v6
		}
		return privateBPFFS, nil
	}
	return privateBPFFS, fmt.Errorf("pick intercept address: 169.254.77.%d-%d are all in use (one per running sluice run); set agent.interceptIPv4 and agent.interceptIPv6 in --config", addrFirst, addrLast)
}

// NodeAddrs lists the addresses the node's interfaces hold.
func NodeAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if pfx, err := netip.ParsePrefix(a.String()); err == nil {
			out[pfx.Addr().Unmap()] = true
		}
	}
	return out
}
