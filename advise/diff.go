package advise

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/workload"
)

// maxProbes bounds the requests Diff evaluates.
const maxProbes = 1 << 20

// probeHost is the host that no policy names: what the defaults decide.
const probeHost = "unlisted.example"

// DiffLine is one way a probe's outcome differs between two policies.
type DiffLine struct {
	Workload string // the selector the probe's workload was built from
	Dest     string // host:port, or "dns NAME"
	Request  string // "GET /v1/x", "tools/call NAME", or "" for DNS
	Old, New Verdict
}

// DiffReport is the result of Diff.
type DiffReport struct {
	Probes int
	// Allows are probes NEW lets through that OLD denied; Denies the
	// reverse; Other the changes between allow and would_deny.
	Allows, Denies, Other []DiffLine
}

// Changed reports whether any probe's outcome differs.
func (r *DiffReport) Changed() bool { return len(r.Allows)+len(r.Denies)+len(r.Other) > 0 }

// probeWL is a workload identity built to be selected by a selector.
type probeWL struct {
	label string
	id    workload.Identity
}

// Diff evaluates both policies on a generated probe set: for every
// workload selector either policy names (and a workload neither names),
// every host, port, method, path and MCP tool either names (and a host,
// port, method and path neither names), and every DNS name. Rate limits
// are not exercised: each probe is evaluated a long time after the last.
func Diff(oldData []byte, oldName string, newData []byte, newName string) (*DiffReport, error) {
	var ps []*policy.Policy
	var js []*Judge
	for _, in := range []struct {
		data []byte
		name string
	}{{oldData, oldName}, {newData, newName}} {
		p, err := policy.Decode(in.data, in.name)
		if err != nil {
			return nil, err
		}
		j, err := NewJudge(in.data, in.name)
		if err != nil {
			return nil, err
		}
		ps, js = append(ps, p), append(js, j)
	}

	wls := []probeWL{{label: "a workload no rule names", id: workload.Identity{Cgroup: "/unlisted.probe"}}}
	seenWL := map[string]bool{wls[0].label: true}
	addWL := func(w policy.Workloads) {
		if l := wlLabel(w); !seenWL[l] && l != "" {
			seenWL[l] = true
			wls = append(wls, probeWL{label: l, id: identityFor(w)})
		}
	}
	hosts := set{probeHost: true}
	ports := map[uint16]bool{}
	methods := set{"GET": true}
	paths := set{"/": true}
	tools := set{}
	names := set{probeHost: true}
	for _, p := range ps {
		for _, h := range p.TLS.Passthrough {
			hosts[concreteHost(h)] = true
		}
		for _, r := range p.Rules {
			addWL(r.Workloads)
			for _, h := range r.Destinations.Hosts {
				hosts[concreteHost(h)] = true
				names[concreteHost(h)] = true
			}
			for _, pt := range r.Destinations.Ports {
				ports[uint16(pt)] = true
			}
			for _, m := range r.Destinations.Methods {
				methods[m] = true
			}
			for _, pa := range r.Destinations.Paths {
				paths[concreteGlob(pa)] = true
			}
			if r.MCP != nil {
				for _, t := range r.MCP.Tools {
					tools[strings.NewReplacer("*", "probe", "?", "p").Replace(t)] = true
				}
			}
		}
		for _, r := range p.DNS {
			addWL(r.Workloads)
			for _, n := range r.Names {
				names[concreteHost(n)] = true
			}
		}
	}
	if len(ports) == 0 {
		ports[443] = true
	}
	sort.Slice(wls[1:], func(a, b int) bool { return wls[1+a].label < wls[1+b].label })
	hs, ms, pas, ts, ns := hosts.sorted(), methods.sorted(), paths.sorted(), append([]string{""}, tools.sorted()...), names.sorted()
	var pts []uint16
	for p := range ports {
		pts = append(pts, p)
	}
	sort.Slice(pts, func(a, b int) bool { return pts[a] < pts[b] })
	n := len(wls) * (len(hs)*len(pts)*len(ms)*len(pas)*len(ts) + len(ns))
	if n > maxProbes {
		return nil, fmt.Errorf("diff %s %s: %d probes, more than %d: the policies name too many hosts, paths and workloads to compare exhaustively", oldName, newName, n, maxProbes)
	}

	rep := &DiffReport{}
	at := time.Unix(0, 0).UTC()
	judge := func(wl probeWL, o *Obs, line DiffLine) {
		rep.Probes++
		at = at.Add(72 * time.Hour) // every bucket refills in between
		o.Time, o.Workload, o.Name = at, wl.id, wl.label
		line.Old, line.New = js[0].Judge(o), js[1].Judge(o)
		switch {
		case line.Old.Outcome == line.New.Outcome:
		case line.New.Outcome == outDeny:
			rep.Denies = append(rep.Denies, line)
		case line.Old.Outcome == outDeny:
			rep.Allows = append(rep.Allows, line)
		default:
			rep.Other = append(rep.Other, line)
		}
	}
	for _, wl := range wls {
		for _, h := range hs {
			for _, pt := range pts {
				dest := h + ":" + strconv.Itoa(int(pt))
				for _, m := range ms {
					for _, pa := range pas {
						for _, t := range ts {
							o := &Obs{Kind: audit.KindHTTP, Host: h, Port: pt, TLS: audit.TLSDecrypted, Method: m, Path: pa}
							req := m + " " + pa
							if t != "" {
								o.MCP = MCP{Method: "tools/call", Tool: t}
								req += " tools/call " + t
							}
							judge(wl, o, DiffLine{Workload: wl.label, Dest: dest, Request: req})
						}
					}
				}
			}
		}
		for _, name := range ns {
			judge(wl, &Obs{Kind: audit.KindDNS, DNSName: name}, DiffLine{Workload: wl.label, Dest: "dns " + name})
		}
	}
	return rep, nil
}

// WriteText explains the report in words, one line per changed probe
// grouped by workload and destination.
func (r *DiffReport) WriteText(w io.Writer, oldName, newName string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "compared %s and %s on %d probe requests\n", oldName, newName, r.Probes)
	if !r.Changed() {
		b.WriteString("no difference: every probe gets the same outcome\n")
	}
	section := func(title string, ls []DiffLine) {
		if len(ls) == 0 {
			return
		}
		fmt.Fprintf(&b, "%s (%d):\n", title, len(ls))
		prev := ""
		for _, l := range ls {
			if head := l.Workload + " -> " + l.Dest; head != prev {
				fmt.Fprintf(&b, "  %s\n", head)
				prev = head
			}
			what := l.Request
			if what == "" {
				what = "lookup"
			}
			fmt.Fprintf(&b, "    %s: %s by rule %s, was %s by rule %s\n", what, l.New.Outcome, l.New.Rule, l.Old.Outcome, l.Old.Rule)
		}
	}
	section(newName+" allows what "+oldName+" denied", r.Allows)
	section(newName+" denies what "+oldName+" allowed", r.Denies)
	section("audit-mode changes (allow and would_deny)", r.Other)
	_, err := io.WriteString(w, b.String())
	return err
}

// set is a set of strings.
type set map[string]bool

func (s set) sorted() []string { return sortedKeys(s) }

// wlLabel describes a workload selector, "" for one that selects all.
func wlLabel(w policy.Workloads) string {
	var parts []string
	add := func(k string, vs []string) {
		if len(vs) > 0 {
			parts = append(parts, k+"="+strings.Join(vs, ","))
		}
	}
	add("cgroups", w.Cgroups)
	add("containerIDs", w.ContainerIDs)
	add("namespaces", w.Namespaces)
	add("exe", w.Exe)
	add("comm", w.Comm)
	for _, k := range sortedKeys(w.Labels) {
		parts = append(parts, "label "+k+"="+w.Labels[k])
	}
	return strings.Join(parts, " ")
}

// identityFor builds an identity the selector selects (the first value of
// each list, globs made concrete).
func identityFor(w policy.Workloads) workload.Identity {
	var id workload.Identity
	if len(w.Cgroups) > 0 {
		id.Cgroup = concreteGlob(w.Cgroups[0])
	}
	if len(w.ContainerIDs) > 0 {
		id.ContainerID = w.ContainerIDs[0] + strings.Repeat("0", max(0, 64-len(w.ContainerIDs[0])))
	}
	if len(w.Namespaces) > 0 {
		id.Namespace = w.Namespaces[0]
	}
	if len(w.Exe) > 0 {
		id.Exe = concreteGlob(w.Exe[0])
	}
	if len(w.Comm) > 0 {
		id.Comm = concreteGlob(w.Comm[0])
	}
	if len(w.Labels) > 0 {
		id.Labels = w.Labels
	}
	return id
}

// concreteHost is a name a host pattern matches.
func concreteHost(h string) string {
	switch {
	case h == "*":
		return probeHost
	case strings.HasPrefix(h, "*."):
		return "probe" + h[1:]
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// concreteGlob is a name a path glob matches: "**" and "*" become
// "probe", "?" "p", a class its first member, an escape what it escapes.
func concreteGlob(g string) string {
	segs := strings.Split(g, "/")
	for i, s := range segs {
		if s == "**" {
			segs[i] = "probe"
			continue
		}
		var b strings.Builder
		for j := 0; j < len(s); j++ {
			switch c := s[j]; c {
			case '*':
				b.WriteString("probe")
			case '?':
				b.WriteByte('p')
			case '\\':
				if j+1 < len(s) {
					j++
					b.WriteByte(s[j])
				}
			case '[':
				end := strings.IndexByte(s[j:], ']')
				if end < 0 {
					b.WriteByte(c)
					continue
				}
				class := strings.TrimLeft(s[j+1:j+end], "^!")
				if class != "" {
					b.WriteByte(class[0])
				}
				j += end
			default:
				b.WriteByte(c)
			}
		}
		segs[i] = b.String()
	}
	return strings.Join(segs, "/")
}
