package policy

import (
	"fmt"

	"github.com/sluicehq/sluice/audit"

	"github.com/sluicehq/sluice/workload"
)

// This file is the policy of names: the dns rules, decided by the agent's
// DNS server for every query of a selected workload (agent.DNSServer).

// Reasons of DNS decisions (audit's vocabulary).
const (
	// ReasonDNSDenied: a dns rule denies the name.
	ReasonDNSDenied = audit.ReasonDNSDenied
	// ReasonDNSAllowed: a dns rule allows the name, or none matched.
	ReasonDNSAllowed = audit.ReasonDNSAllowed
)

// NameDecider decides the names a workload may resolve. *Engine
// implements it; a Decider that does not allows every name.
type NameDecider interface {
	// DecideName decides the lookup of name (any case, with or without
	// the trailing dot) by id. It must be safe for concurrent use and
	// must not block.
	DecideName(id *workload.Identity, name string) Decision
}

var _ NameDecider = (*Engine)(nil)

// dnsRule is a compiled DNSRule.
type dnsRule struct {
	name  string
	wl    workloadSel
	names hostSet
	deny  bool
	audit bool
}

func compileDNS(rs []DNSRule, globalAudit bool) []*dnsRule {
	var out []*dnsRule
	for _, r := range rs {
		out = append(out, &dnsRule{
			name:  r.Name,
			wl:    newWorkloadSel(r.Workloads),
			names: newHostSet(r.Names),
			deny:  r.Action == "deny",
			audit: r.Mode == "audit" || (r.Mode == "" && globalAudit),
		})
	}
	return out
}

// DecideName applies the first dns rule that selects id and matches name;
// no match allows (rule "default"). A deny in audit mode allows with
// WouldDeny set.
func (e *Engine) DecideName(id *workload.Identity, name string) Decision {
	for _, r := range e.dns {
		if !r.wl.match(id) || !r.names.match(name) {
			continue
		}
		if !r.deny {
			return Decision{Verdict: Allow, Rule: r.name, Reason: ReasonDNSAllowed}
		}
		if r.audit {
			return Decision{Verdict: Allow, WouldDeny: true, Rule: r.name, Reason: ReasonDNSDenied}
		}
		return Decision{Verdict: Deny, Rule: r.name, Reason: ReasonDNSDenied}
	}
	return Decision{Verdict: Allow, Rule: RuleDefault, Reason: ReasonDNSAllowed}
}

// validateDNS checks the dns rules, every problem at once.
func (d *decoder) validateDNS(rs []DNSRule) {
	names := map[string]int{}
	for i, r := range rs {
		at := fmt.Sprintf("dns[%d]", i)
		switch {
		case r.Name == "":
			d.add(at+".name", "", "missing: every dns rule needs a unique name, e.g. name: deny-paste-sites")
		case !ruleName.MatchString(r.Name):
			d.add(at+".name", r.Name, "use letters, digits, '.', '_' and '-' only (at most 64), e.g. deny-paste-sites")
		case r.Name == RuleDefault:
			d.add(at+".name", r.Name, "%q is reserved for the decision no rule made, choose another name", r.Name)
		default:
			if j, dup := names[r.Name]; dup {
				d.add(at+".name", r.Name, "duplicate of dns[%d].name, names must be unique", j)
			}
			names[r.Name] = i
		}
		d.checkAction(at+".action", r.Action)
		d.checkMode(at+".mode", r.Mode)
		d.checkWorkloads(at+".workloads", r.Workloads)
		if len(r.Names) == 0 {
			d.add(at+".names", "", "missing: list the names the rule matches, e.g. [\"*.pastebin.com\"], or [\"*\"] for all")
		}
		for j, n := range r.Names {
			d.checkHost(fmt.Sprintf("%s.names[%d]", at, j), n)
		}
	}
}
