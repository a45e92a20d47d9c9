package policy

import (
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strings"

	"github.com/sluicehq/sluice/cgroup2"
	"github.com/sluicehq/sluice/workload"
)

// MatchHost reports whether host matches pattern: "*" for any host, an
// exact name, or "*.example.com" for any name below example.com (not
// example.com itself). Comparison is case-insensitive and ignores a
// trailing dot.
func MatchHost(pattern, host string) bool {
	return newHostSet([]string{pattern}).match(host)
}

// hostSet is a list of MatchHost patterns compiled once: exact names in
// a map, wildcards as the suffixes they require, each lowercase without
// a trailing dot. A match lowers the host once, not once per pattern
// (the public resolver list alone is 40 patterns, checked per request).
type hostSet struct {
	any      bool
	exact    map[string]struct{}
	suffixes []string // of "*x" patterns: x, which a longer host must end with
}

func newHostSet(patterns []string) hostSet {
	var s hostSet
	for _, p := range patterns {
		p = normHost(p)
		switch suffix, wild := strings.CutPrefix(p, "*"); {
		case p == "*":
			s.any = true
		case wild:
			s.suffixes = append(s.suffixes, suffix)
		default:
			if s.exact == nil {
				s.exact = make(map[string]struct{}, len(patterns))
			}
			s.exact[p] = struct{}{}
		}
	}
	return s
}

// empty reports whether the set was compiled from no patterns.
func (s hostSet) empty() bool { return !s.any && len(s.exact) == 0 && len(s.suffixes) == 0 }

// match reports whether host matches one of the set's patterns.
func (s hostSet) match(host string) bool {
	if s.any {
		return true
	}
	host = normHost(host)
	if _, ok := s.exact[host]; ok {
		return true
	}
	for _, suffix := range s.suffixes {
		if len(host) > len(suffix) && strings.HasSuffix(host, suffix) {
			return true
		}
	}
	return false
}

// normHost is a host name as hostSet compares it: lowercase, without a
// trailing dot.
func normHost(h string) string { return strings.TrimSuffix(strings.ToLower(h), ".") }

// validGlob reports whether g uses ** only as a whole path segment.
func validGlob(g string) bool {
	for _, seg := range strings.Split(g, "/") {
		if strings.Contains(seg, "**") && seg != "**" {
			return false
		}
	}
	return true
}

func isGlob(s string) bool { return strings.ContainsAny(s, "*?") }

// MatchGlob matches a slash-separated name against a glob: '?' is one
// character and '*' any run of characters within one segment; a "**"
// segment matches any number of segments (zero included). It is for
// request paths and executables, where an empty segment is significant;
// cgroup paths use cgroup2.Match.
func MatchGlob(glob, name string) bool {
	return matchSegs(strings.Split(glob, "/"), strings.Split(name, "/"), 0)
}

func matchSegs(g, n []string, depth int) bool {
	if depth > 32 { // bound the backtracking on hostile input
		return false
	}
	for len(g) > 0 {
		if g[0] == "**" {
			for len(g) > 1 && g[1] == "**" {
				g = g[1:]
			}
			if len(g) == 1 {
				return true
			}
			for i := range len(n) + 1 {
				if matchSegs(g[1:], n[i:], depth+1) {
					return true
				}
			}
			return false
		}
		if len(n) == 0 {
			return false
		}
		if ok, _ := path.Match(g[0], n[0]); !ok {
			return false
		}
		g, n = g[1:], n[1:]
	}
	return len(n) == 0
}

// matchPath matches a request path against a path pattern: a glob when it
// has * or ?, else a prefix on whole segments ("/v1" matches "/v1",
// "/v1/" and "/v1/x", not "/v1x"; "/" matches everything).
func matchPath(pattern, p string) bool {
	if isGlob(pattern) {
		return MatchGlob(pattern, p)
	}
	if pattern == "/" || p == pattern {
		return true
	}
	pre := strings.TrimSuffix(pattern, "/")
	return strings.HasPrefix(p, pre) && len(p) > len(pre) && p[len(pre)] == '/'
}

// CleanPath is the path as rules see it (see cleanPath); tools that reason
// about rules (policy suggest) use it so they see paths the same way.
func CleanPath(p string) string { return cleanPath(p) }

// cleanPath is the form of a request path that rules see: percent-decoded
// where that is valid, path parameters (";…" in a segment, "%3b" too)
// removed, dot segments resolved, duplicate slashes collapsed, a trailing
// slash kept. It defeats "/v1/../admin", "/%61dmin" and "/admin;x" tricks
// against deny rules (servlet containers and Spring drop path parameters
// before routing, so "/admin;x/users" reaches "/admin/users").
func cleanPath(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if u, err := url.PathUnescape(p); err == nil {
		p = u
	}
	if strings.Contains(p, ";") {
		segs := strings.Split(p, "/")
		for i, s := range segs {
			segs[i], _, _ = strings.Cut(s, ";")
		}
		p = strings.Join(segs, "/")
	}
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	trailing := strings.HasSuffix(p, "/")
	p = path.Clean(p)
	if trailing && p != "/" {
		p += "/"
	}
	return p
}

// workloadSel is a compiled Workloads selector.
type workloadSel struct {
	// cgroups use the agent's glob (cgroup2), so a pattern selects the same
	// cgroups here as in agent.cgroups; one that does not compile is the
	// zero Glob, which matches nothing (as cgroup2.Match).
	cgroups        []cgroup2.Glob
	comm, exe, ids []string
	// meta is what the container runtime names: namespaces, labels,
	// containers, images (the agent.select matcher).
	meta workload.Selector
}

// newWorkloadSel compiles w.
func newWorkloadSel(w Workloads) workloadSel {
	s := workloadSel{comm: w.Comm, exe: w.Exe, ids: w.ContainerIDs,
		meta: workload.Selector{Namespaces: w.Namespaces, Labels: w.Labels, Containers: w.Containers, Images: w.Images}}
	for _, p := range w.Cgroups {
		g, _ := cgroup2.Compile(p)
		s.cgroups = append(s.cgroups, g)
	}
	return s
}

func (s *workloadSel) match(id *workload.Identity) bool {
	if len(s.cgroups) > 0 && !slices.ContainsFunc(s.cgroups, func(g cgroup2.Glob) bool { return id.Cgroup != "" && g.Match(id.Cgroup) }) {
		return false
	}
	if len(s.comm) > 0 && !slices.ContainsFunc(s.comm, func(g string) bool { ok, _ := path.Match(g, id.Comm); return id.Comm != "" && ok }) {
		return false
	}
	if len(s.exe) > 0 && !slices.ContainsFunc(s.exe, func(g string) bool { return id.Exe != "" && MatchGlob(g, id.Exe) }) {
		return false
	}
	if len(s.ids) > 0 && !slices.ContainsFunc(s.ids, func(p string) bool { return id.ContainerID != "" && strings.HasPrefix(id.ContainerID, p) }) {
		return false
	}
	return s.meta.Match(id)
}

// destSel is a compiled Destinations selector.
type destSel struct {
	hosts   hostSet
	ports   []uint16
	methods []string
	paths   []string
	cidrs   []netip.Prefix
}

// perRequest reports whether the selector needs HTTP to be decided.
func (s *destSel) perRequest() bool { return len(s.methods)+len(s.paths) > 0 }

// target is what a destination selector is matched against.
type target struct {
	host   string
	port   uint16
	addrs  []netip.Addr
	names  []string // Conn.Names: names known for addrs when host is not bound
	method string   // "" at connection level
	path   string   // cleaned; "" at connection level
}

// matchConn matches the criteria known before HTTP. For cidrs, a deny
// rule matches when any dialed address is inside (the proxy might dial
// it), an allow rule only when all of them are (so it allows nothing
// outside its ranges).
func (s *destSel) matchConn(t *target, deny bool) bool {
	if !s.hosts.empty() && !s.hosts.match(t.host) && !slices.ContainsFunc(t.names, s.hosts.match) {
		return false
	}
	if len(s.ports) > 0 && !slices.Contains(s.ports, t.port) {
		return false
	}
	if len(s.cidrs) > 0 {
		if len(t.addrs) == 0 {
			return false
		}
		in := func(a netip.Addr) bool { return inAny(s.cidrs, a) }
		if deny && !slices.ContainsFunc(t.addrs, in) {
			return false
		}
		if !deny && !all(t.addrs, in) {
			return false
		}
	}
	return true
}

func (s *destSel) matchRequest(t *target) bool {
	if len(s.methods) > 0 && !slices.Contains(s.methods, t.method) {
		return false
	}
	if len(s.paths) > 0 && !slices.ContainsFunc(s.paths, func(p string) bool { return matchPath(p, t.path) }) {
		return false
	}
	return true
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func all[T any](xs []T, f func(T) bool) bool {
	for _, x := range xs {
		if !f(x) {
			return false
		}
	}
	return true
}
