// Package agent is Sluice's node agent: it loads the eBPF cgroup hooks of
// bpf/, attaches them to the selected cgroups, owns the node-local intercept
// address, accepts the redirected connections on it, names the workload
// behind each one from the kernel's record of the connect, and hands the
// connection to the proxy (a Handler, normally the proxy of mitm/).
//
// Selection. Cgroups are selected by path globs relative to the cgroup2
// mount (config.Agent.Cgroups, "*" within a segment, "**" across segments;
// cgroup2.Glob, the same glob as the policy's workloads.cgroups) and at
// runtime by exact path (SelectCgroup). A selected cgroup's whole
// subtree is intercepted. Two attach modes (config.Agent.Attach):
//   - "cgroup" (default): the programs are attached to each selected cgroup
//     that has no selected ancestor; descendants inherit them. Simplest, and
//     what `sluice run` uses.
//   - "root": one set of programs at the cgroup2 root; they consult a map of
//     selected cgroup ids, which the agent keeps up to date (including new
//     descendants of a selected cgroup). This scales to a node with many
//     cgroups.
//
// Selection by runtime metadata (config.Agent.Select, Options.Metadata):
// a cgroup whose path names a container (docker-<id>.scope, /docker/<id>,
// cri-containerd-<id>.scope, …) or a pod (kubepods-…-pod<uid>.slice) is
// selected when an agent.select entry matches what the container runtime
// says about it: namespace, labels, container name, image. A pod's cgroup
// is matched by entries that name no container fields, so its containers
// inherit the selection; container names and images select the
// containers' own cgroups. The agent decides when it sees the cgroup
// appear (the inotify watch, with a bounded lookup in the runtime when the
// cache does not know it yet) and again whenever the runtime reports a
// container or pod (Metadata.OnChange), so metadata that comes late still
// selects; such a late container is logged at Warn.
//
// In time for the first connect. Docker reports a container before runc
// makes its cgroup: its create event carries its name, image and labels,
// which the cache takes at once (the inspect that follows is answered
// only once the container's start has ended, after its first connects);
// the kubelet's pods are known from the CRI's sandbox (created before any
// app container) and from the Kubernetes API (from scheduling on). So the
// metadata is normally cached when the cgroup appears, and the hooks are
// attached (or the id is in the selection map) in the pass that sees the
// mkdir, while the runtime is still setting the container up; the
// end-to-end test checks that a container that connects as it starts is
// intercepted. The window: the inotify watch is asynchronous, so a
// container whose runtime starts its process before the agent has read
// the mkdir (a loaded node), or whose metadata arrives only after its
// process started (the runtime's socket slow or reconnecting, a lookup
// past its 500ms bound), makes its first connects direct, until it is
// selected. While the agent is down nothing new is selected, whatever the
// failMode: "closed" keeps the hooks of cgroups already selected (their
// connects fail instead of bypassing) but cannot select a container it
// has not seen; the next agent selects it at start. Where that window
// matters, select by cgroup glob an ancestor the kernel makes children
// inherit from (agent.cgroups, attach "cgroup", e.g. "/kubepods.slice/**"
// with failMode closed) and tell the workloads apart in the policy with
// workloads.namespaces/labels/containers/images. Selection is kept for a
// cgroup's life: a pod whose labels stop matching stays selected.
//
// Failure modes. failMode "closed" pins the links and maps under
// config.Agent.BPFFS, and leaves the intercept address in place when the
// agent exits, so redirection survives the agent and connects fail
// (nobody listens) instead of bypassing the proxy. failMode "open" ties the
// links to the agent process and removes the address it added on exit. A
// new agent replaces an earlier one's pins (links are updated in place to
// the new programs). Cleanup removes every hook, pin, map and the address.
//
// The intercept address. It goes on a dummy link "sluice0" where the kernel
// has dummy links, else on "lo", and no hook is attached before the kernel
// routes it as local. Two guards make an address that disappears (removed
// by hand, by another tool, or while hooks stay pinned) unroutable, never
// routed: an unreachable route in the main table, and a policy-routing
// rule right after the local table's rule, "to ADDR lookup GuardTable",
// whose table holds an unreachable route for it. The local table answers
// first while the address is on the node; once it is gone the rule ends
// the lookup, whatever the main table or a later rule says, and
// redirected connects fail on the node (EHOSTUNREACH). While the agent
// runs it follows the kernel's address, route and rule messages (and
// re-checks every half second in case one is lost), restores the address
// and every guard in one pass within a second, logs it at Warn and counts
// it (Restorations); Ready names whatever is missing meanwhile. The guard
// route's protocol records whether an agent added the address, so that
// neither Close nor Cleanup removes an address that was already there.
//
// One live agent per intercept address and pin directory. Start records
// the process (pid and start time) in /run/sluice; a second agent's Start
// and Cleanup (`sluice agent --cleanup`) refuse, with a *HeldError naming
// the live agent's pid and the --force flag, to replace or remove what a
// live agent other than themselves holds. A record of a process that is
// gone is ignored.
package agent

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/sluicehq/sluice/workload"
)

// Handler takes a redirected connection; the proxy of mitm/ implements it.
// Handle owns conn and must close it; it returns when the exchange ends or
// ctx is cancelled, or earlier when it hands conn to a server that closes
// it then (the proxy's HTTP/1.1 server, so an idle keep-alive connection
// holds no handler goroutine). It is called on its own goroutine per
// connection.
type Handler interface {
	Handle(ctx context.Context, conn net.Conn, dst workload.Destination, id workload.Identity)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, conn net.Conn, dst workload.Destination, id workload.Identity)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, conn net.Conn, dst workload.Destination, id workload.Identity) {
	f(ctx, conn, dst, id)
}

// Verdict is what the kernel did with a connect.
type Verdict string

const (
	// Redirected: steered to the proxy.
	Redirected Verdict = "redirected"
	// Denied: refused in the kernel (connect failed with EPERM).
	Denied Verdict = "denied"
	// Direct: not intercepted, the connect went to its destination.
	Direct Verdict = "direct"
)

// Fixed reason strings of events.
const (
	ReasonDenyCIDR   = "deny_cidr"   // destination in agent.denyCIDRs
	ReasonBypassCIDR = "bypass_cidr" // destination in agent.bypassCIDRs: direct
	// ReasonBypassHost: the destination is an address learned for a name
	// of agent.bypassHosts (Event.Host): direct.
	ReasonBypassHost    = "bypass_host"
	ReasonDenyAddrPort  = "deny_agent_port"  // destination in Options.DenyAddrPorts
	ReasonPort          = "intercepted_port" // TCP to an intercepted port
	ReasonNotTCP        = "not_tcp"          // not a TCP stream socket
	ReasonPortNotListed = "port_not_intercepted"
	ReasonNoIntercept   = "no_intercept_address" // no verified local address for the family
	// ReasonMarkForged: a selected workload's setsockopt(SO_MARK) with
	// the agent's mark, refused with EPERM. Dst is empty.
	ReasonMarkForged = "mark_forged"
	// ReasonDenyCIDRPacket: an outgoing packet (raw socket, unconnected
	// UDP) to agent.denyCIDRs dropped; rate-limited, see
	// Agent.EgressDrops. PID and Comm are empty: the packet may leave
	// from softirq context, so only its socket's cgroup and uid are named.
	ReasonDenyCIDRPacket = "deny_cidr_packet"
	// ReasonDNS: TCP or connected UDP to port 53, steered to the agent's
	// DNS server (unconnected UDP is steered without an event: the DNS
	// server records every query).
	ReasonDNS = "dns"
	// ReasonQUIC: UDP to port 443 (QUIC) refused with EPERM
	// (agent.refuseQUIC), so that the client falls back to TCP.
	ReasonQUIC    = "quic_refused"
	ReasonUnknown = "unknown"
)

// Event is one connect decision of a selected cgroup's process, a refused
// attempt to set the agent's mark (ReasonMarkForged) or a sample of the
// packets dropped for a denied destination (ReasonDenyCIDRPacket).
type Event struct {
	Time    time.Time
	Verdict Verdict
	Reason  string
	// Dst is the destination the process asked for.
	Dst netip.AddrPort
	// Protocol is the IP protocol number of the socket (6 for TCP).
	Protocol uint32
	PID      int
	UID      uint32
	Comm     string
	CgroupID uint64
	// Cgroup is the cgroup path of CgroupID, when it could be named.
	Cgroup string
	// Host is the name of agent.bypassHosts the destination was learned
	// for (reason bypass_host); empty otherwise.
	Host string
	// meta enriches Identity (Options.Metadata); nil without it.
	meta Metadata
	// startTime and execID name the process image (procImage); exes
	// remembers the executables of images (nil: none).
	startTime, execID uint64
	exes              *exeCache
	// id is the identity the event reader made for the event
	// (identityMemo), shared with the events of its run; nil: Identity
	// makes it.
	id *workload.Identity
}

// Options are the agent's optional collaborators.
type Options struct {
	// OnEvent is called for every connect decision read from the kernel,
	// on the agent's event goroutine, and for every redirect to the proxy
	// (verdict redirected, reason port), which the kernel does not queue:
	// when the proxy accepts the connection, on that connection's
	// goroutine. So it must be safe for concurrent use, and it must not
	// block for long. Denied connects are also logged at Warn.
	OnEvent func(Event)
	// OnBatchEnd, when set, is called on the same goroutine after the
	// events read so far were handed to OnEvent and the ring buffer is
	// empty, and when the reader stops: where OnEvent's work is cheaper
	// in batches (the audit records' writes), it is done there.
	OnBatchEnd func()
	// DenyAddrPorts are destinations refused in the kernel (EPERM) for
	// selected workloads, on top of agent.denyCIDRs: the agent's private
	// listeners, such as the admin server. An unspecified address (0.0.0.0
	// or ::) stands for every address the node has when Start runs,
	// loopback included.
	DenyAddrPorts []netip.AddrPort
	// OriginWait bounds how long an accepted connection waits for its
	// origin to appear in the kernel map; 0 means 250ms.
	OriginWait time.Duration
	// EventWait is how often the event reader looks at the ring buffer,
	// while events come, for the events that don't wake it (a denial or
	// a quarter-full ring does); 0 means 32ms. A look that finds none
	// parks the reader until the next event wakes it (or 30 EventWaits
	// pass).
	EventWait time.Duration
	// DNS, when set, is served on agent.dnsPort (UDP and TCP) on the
	// intercept addresses, and the hooks steer selected workloads' DNS
	// to it; the agent names each query's sender from its kernel maps
	// (DNSServer.Answer). Nil: no DNS server, and DNS is not steered.
	DNS *DNSServer
	// Resolver resolves agent.bypassHosts when there is no DNS server
	// (DNS nil), at start and every minute. Nil: the node's resolvers
	// (/etc/resolv.conf), over sockets with the agent's mark.
	Resolver *net.Resolver
	// Metadata names the containers and pods behind cgroups: every
	// identity the agent builds is enriched from it, and agent.select
	// selects by it (required with agent.select). Nil: identities carry
	// what the cgroup path says only.
	Metadata Metadata
	// Force starts the agent even when another live agent process holds
	// its intercept address or pin directory (Start otherwise returns a
	// *HeldError naming that process): `sluice agent --force`.
	Force bool
}
