package advise

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
)

// Outcomes of a decision, as records write them.
const (
	outAllow     = audit.DecisionAllow
	outDeny      = audit.DecisionDeny
	outWouldDeny = audit.DecisionWouldDeny
)

// Judge evaluates requests against one compiled policy offline: rate
// limits are local (a redis policy is counted in this process, nothing is
// sent) and follow a clock the caller sets (At), so token buckets see the
// requests' own times rather than the speed of the replay.
type Judge struct {
	e   *policy.Engine
	now time.Time
}

// NewJudge compiles a policy file's contents for offline evaluation.
func NewJudge(data []byte, filename string) (*Judge, error) {
	p, err := policy.Decode(data, filename)
	if err != nil {
		return nil, err
	}
	local := func(r *policy.RateLimit) {
		if r != nil {
			r.Policy, r.Redis, r.FaultTolerant = "local", policy.Redis{}, nil
		}
	}
	local(p.Defaults.RateLimit)
	for i := range p.Rules {
		local(p.Rules[i].RateLimit)
	}
	j := &Judge{}
	j.e, err = policy.New(p, policy.Options{Now: func() time.Time { return j.now }, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("compile %s: %w", filename, err)
	}
	return j, nil
}

// Verdict is the outcome of one evaluation.
type Verdict struct {
	Outcome string // allow, deny or would_deny
	Rule    string
	Reason  string
}

// Judge decides o as the proxy (or the DNS server) would, at o.Time. It
// consumes rate-limit tokens like the proxy does: call it once per
// record, in time order.
func (j *Judge) Judge(o *Obs) Verdict {
	if o.Time.After(j.now) {
		j.now = o.Time
	}
	ctx := context.Background()
	if o.Kind == audit.KindDNS {
		return verdict(j.e.DecideName(&o.Workload, o.DNSName))
	}
	c := &policy.Conn{Workload: o.Workload, Host: o.Host, Port: o.Port, TLS: o.TLS == audit.TLSDecrypted || o.TLS == audit.TLSPassthrough}
	if o.IP.IsValid() {
		c.Addrs = []netip.Addr{o.IP}
	}
	if o.Kind == audit.KindL4 {
		c.Opaque = o.TLS != audit.TLSPassthrough
	}
	cd := j.e.Connection(ctx, c)
	if cd.Action == policy.Reject || o.Kind == audit.KindL4 {
		return verdict(cd.Decision)
	}
	r := &policy.Request{Conn: c, Method: o.Method, Host: o.Host, Path: o.Path, ContentLength: -1}
	if o.MCP.Method != "" {
		r.MCP = &policy.MCPCall{Method: o.MCP.Method, Tool: o.MCP.Tool, Resource: o.MCP.Resource, Prompt: o.MCP.Prompt}
	}
	return verdict(j.e.Request(ctx, r))
}

func verdict(d policy.Decision) Verdict {
	v := Verdict{Outcome: outAllow, Rule: d.Rule, Reason: d.Reason}
	switch {
	case d.Denied():
		v.Outcome = outDeny
	case d.WouldDeny:
		v.Outcome = outWouldDeny
	}
	return v
}

// Change is a group of replayed records whose outcome changed the same
// way: same workload, destination, new outcome and rule.
type Change struct {
	Workload string
	Dest     string // host:port, or the name of a DNS query
	Was, Now string // outcomes
	Rule     string // the rule that decides now
	Reason   string
	Count    int
	Example  string // the first request of the group, e.g. "GET /v1/x"
}

// Report is the result of Replay.
type Report struct {
	Replayed, Skipped int
	Unchanged         int
	// NewlyDenied, NewlyAllowed and Other (would_deny appearing or going)
	// are sorted by workload, destination and rule.
	NewlyDenied, NewlyAllowed, Other []Change
}

// Denied counts the records the policy would newly deny.
func (r *Report) Denied() int {
	n := 0
	for _, c := range r.NewlyDenied {
		n += c.Count
	}
	return n
}

// Replay evaluates every record (sorted by time) against j and compares
// with the recorded decision. Records the policy does not decide (kernel
// connect events, connections closed unused) are skipped.
func Replay(j *Judge, recs []Obs) *Report {
	rep := &Report{}
	type key struct{ wl, dest, was, now, rule string }
	groups := map[key]*Change{}
	for i := range recs {
		o := &recs[i]
		if !o.replayable() {
			rep.Skipped++
			continue
		}
		rep.Replayed++
		v := j.Judge(o)
		was := o.Decision
		if was == audit.DecisionError {
			was = outAllow
		}
		if was == v.Outcome {
			rep.Unchanged++
			continue
		}
		dest := o.DNSName
		if o.Kind != audit.KindDNS {
			dest = destLabel(o)
		}
		k := key{o.Name, dest, was, v.Outcome, v.Rule}
		c := groups[k]
		if c == nil {
			c = &Change{Workload: o.Name, Dest: dest, Was: was, Now: v.Outcome, Rule: v.Rule, Reason: v.Reason, Example: example(o)}
			groups[k] = c
		}
		c.Count++
	}
	for _, c := range groups {
		switch {
		case c.Now == outDeny:
			rep.NewlyDenied = append(rep.NewlyDenied, *c)
		case c.Was == outDeny:
			rep.NewlyAllowed = append(rep.NewlyAllowed, *c)
		default:
			rep.Other = append(rep.Other, *c)
		}
	}
	for _, cs := range [][]Change{rep.NewlyDenied, rep.NewlyAllowed, rep.Other} {
		sort.Slice(cs, func(a, b int) bool {
			x, y := cs[a], cs[b]
			if x.Workload != y.Workload {
				return x.Workload < y.Workload
			}
			if x.Dest != y.Dest {
				return x.Dest < y.Dest
			}
			if x.Rule != y.Rule {
				return x.Rule < y.Rule
			}
			return x.Was+x.Now < y.Was+y.Now
		})
	}
	return rep
}

func destLabel(o *Obs) string {
	h := o.Host
	if h == "" && o.IP.IsValid() {
		h = o.IP.String()
	}
	if strings.Contains(h, ":") {
		h = "[" + h + "]"
	}
	return h + ":" + strconv.Itoa(int(o.Port))
}

func example(o *Obs) string {
	switch {
	case o.Kind == audit.KindDNS:
		return "lookup " + o.DNSName
	case o.Kind == audit.KindL4:
		return "l4 flow (tls " + o.TLS + ")"
	case o.MCP.Tool != "":
		return o.Method + " " + o.Path + " tools/call " + o.MCP.Tool
	}
	return o.Method + " " + o.Path
}

// WriteText writes the report for a person: what would be denied that
// went through, what would go through that was denied, and the other
// changes, each with its rule.
func (r *Report) WriteText(w io.Writer, policyName string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "replayed %d records against %s (%d unchanged, %d not decided by a policy and skipped)\n", r.Replayed, policyName, r.Unchanged, r.Skipped)
	section := func(title string, cs []Change) {
		n := 0
		for _, c := range cs {
			n += c.Count
		}
		fmt.Fprintf(&b, "%s: %d\n", title, n)
		for _, c := range cs {
			fmt.Fprintf(&b, "  %s -> %s: %d %s by rule %s (%s; was %s), e.g. %s\n", c.Workload, c.Dest, c.Count, c.Now, c.Rule, c.Reason, c.Was, c.Example)
		}
	}
	section("newly denied", r.NewlyDenied)
	section("newly allowed", r.NewlyAllowed)
	section("other changes", r.Other)
	_, err := io.WriteString(w, b.String())
	return err
}
