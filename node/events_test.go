package node

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sluicehq/sluice/agent"
	"github.com/sluicehq/sluice/audit"
)

func TestEventRecord(t *testing.T) {
	dst := netip.MustParseAddrPort("198.18.0.9:443")
	for _, tc := range []struct {
		name     string
		e        agent.Event
		decision string // "" for no record
		reason   string
	}{
		{name: "redirected: the proxy records it", e: agent.Event{Verdict: agent.Redirected, Reason: agent.ReasonPort}},
		{name: "denied in the kernel", e: agent.Event{Verdict: agent.Denied, Reason: agent.ReasonDenyCIDR},
			decision: audit.DecisionDeny, reason: audit.ReasonKernelDenyCIDR},
		{name: "sent direct by the bypass list", e: agent.Event{Verdict: agent.Direct, Reason: agent.ReasonBypassCIDR},
			decision: audit.DecisionAllow, reason: audit.ReasonKernelBypassCIDR},
		{name: "sent direct for a name of bypassHosts", e: agent.Event{Verdict: agent.Direct, Reason: agent.ReasonBypassHost, Host: "api.example.com"},
			decision: audit.DecisionAllow, reason: audit.ReasonKernelBypassHost},
		{name: "a reason this file does not know keeps its name", e: agent.Event{Verdict: agent.Denied, Reason: "something_new"},
			decision: audit.DecisionDeny, reason: "something_new"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.e
			e.Time, e.Dst, e.PID, e.Comm = time.Now(), dst, -1, "curl"
			e.Cgroup = "/kubepods.slice/kubepods-pod0b1c2d3e_4f50_6172_8394_a5b6c7d8e9f0.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope"
			rec := eventRecord(e)
			if tc.decision == "" {
				if rec != nil {
					t.Fatalf("record %+v, want none", rec)
				}
				return
			}
			if rec == nil || rec.Kind != audit.KindConnect || rec.Decision != tc.decision || rec.Reason != tc.reason ||
				rec.DstIP != dst.Addr() || rec.Port != 443 || rec.Workload.Comm != "curl" || rec.Workload.ContainerID == "" {
				t.Fatalf("record %+v", rec)
			}
			if rec.Host != tc.e.Host {
				t.Errorf("record host %q, want %q", rec.Host, tc.e.Host)
			}
		})
	}
}
