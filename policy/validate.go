package policy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/cgroup2"
)

// validate checks the meaning of every value and records each problem with
// its path, the bad value and the fix.
func (d *decoder) validate(p *Policy) {
	switch {
	case p.Version == 0 && d.lines["version"] == 0:
		d.add("version", "", "missing: put \"version: 1\" at the top")
	case p.Version != 1:
		d.addv("version", p.Version, "only version 1 exists, use \"version: 1\"")
	}
	d.checkMode("mode", p.Mode)
	for i, h := range p.TLS.Passthrough {
		d.checkHost(fmt.Sprintf("tls.passthrough[%d]", i), h)
	}
	switch p.TLS.OnUntrustedClient {
	case "", OnUntrustedIntercept, OnUntrustedPassthrough:
	default:
		d.add("tls.onUntrustedClient", p.TLS.OnUntrustedClient, "use intercept (the default) or passthrough")
	}
	d.checkMode("ssrf.mode", p.SSRF.Mode)
	switch p.MCP.OnToolChange {
	case "", ToolChangeOff, ToolChangeAudit, ToolChangeEnforce:
	default:
		d.add("mcp.onToolChange", p.MCP.OnToolChange, "use off, audit or enforce")
	}
	switch p.MCP.TokenAudience {
	case "", TokenAudienceOff, TokenAudienceAudit, TokenAudienceEnforce:
	default:
		d.add("mcp.tokenAudience", p.MCP.TokenAudience, "use off, audit or enforce")
	}
	for i, c := range p.SSRF.AllowCIDRs {
		d.checkCIDR(fmt.Sprintf("ssrf.allowCIDRs[%d]", i), c)
	}
	switch p.Defaults.Action {
	case "", "allow", "deny":
	default:
		d.add("defaults.action", p.Defaults.Action, "use allow or deny")
	}
	d.checkMode("defaults.mode", p.Defaults.Mode)
	if p.Defaults.RateLimit != nil {
		d.checkRateLimit("defaults.rateLimit", p.Defaults.RateLimit)
	}
	d.checkLimits("defaults.limits", p.Defaults.Limits)
	d.checkCredentials(p.Credentials)

	names := map[string]int{}
	catchAll := -1
	for i, r := range p.Rules {
		at := fmt.Sprintf("rules[%d]", i)
		if catchAll >= 0 {
			d.add(at, "", "never used: rules[%d] matches every request first; move this rule above it", catchAll)
		}
		if catchAll < 0 && r.Workloads.empty() && r.Destinations.empty() && r.MCP == nil {
			catchAll = i
		}
		switch {
		case r.Name == "":
			d.add(at+".name", "", "missing: every rule needs a unique name, e.g. name: allow-github")
		case !ruleName.MatchString(r.Name):
			d.add(at+".name", r.Name, "use letters, digits, '.', '_' and '-' only (at most 64), e.g. allow-github")
		case r.Name == "default" || r.Name == "ssrf" || r.Name == "passthrough":
			d.add(at+".name", r.Name, "%q is reserved for built-in decisions, choose another name", r.Name)
		default:
			if j, dup := names[r.Name]; dup {
				d.add(at+".name", r.Name, "duplicate of rules[%d].name, names must be unique", j)
			}
			names[r.Name] = i
		}
		d.checkAction(at+".action", r.Action)
		d.checkMode(at+".mode", r.Mode)
		d.checkWorkloads(at+".workloads", r.Workloads)
		d.checkDestinations(at+".destinations", r.Destinations)
		if r.MCP != nil {
			d.checkMCP(at+".mcp", r.MCP)
		}
		if r.RateLimit != nil {
			if r.Action == "deny" {
				d.add(at+".rateLimit", "", "a deny rule forwards nothing to limit: move rateLimit to an allow rule")
			} else {
				d.checkRateLimit(at+".rateLimit", r.RateLimit)
			}
		}
		if r.Limits != (Limits{}) && r.Action == "deny" {
			d.add(at+".limits", "", "a deny rule forwards nothing to limit: move limits to an allow rule")
		} else {
			d.checkLimits(at+".limits", r.Limits)
		}
		if r.Cache != nil {
			d.checkCache(at+".cache", r.Cache, r.Action)
		}
		d.checkCarry(at, r, p.Credentials)
	}
	d.validateDNS(p.DNS)
	d.validateUpstreams(p.Upstreams)
	d.validateResolution(p.Resolution)
}

var (
	ruleName  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	hostLabel = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$`)
	method    = regexp.MustCompile(`^[A-Z][A-Z0-9_-]{0,31}$`)
	hexID     = regexp.MustCompile(`^[0-9a-f]{12,64}$`)
	// k8sNameGlob: a namespace name, or a glob of one.
	k8sNameGlob = regexp.MustCompile(`^[a-z0-9*?][a-z0-9*?-]{0,62}$`)
)

func (w Workloads) empty() bool {
	return len(w.Cgroups)+len(w.Comm)+len(w.Exe)+len(w.ContainerIDs)+len(w.Namespaces)+len(w.Labels)+len(w.Containers)+len(w.Images) == 0
}

func (ds Destinations) empty() bool {
	return len(ds.Hosts)+len(ds.Ports)+len(ds.Methods)+len(ds.Paths)+len(ds.CIDRs) == 0
}

// checkAction checks a rule's action: allow or deny.
func (d *decoder) checkAction(path, a string) {
	switch a {
	case "allow", "deny":
	case "":
		d.add(path, "", "missing: use action: allow or action: deny")
	default:
		d.add(path, a, "use allow or deny")
	}
}

func (d *decoder) checkMode(path, m string) {
	switch m {
	case "", "enforce", "audit":
	default:
		d.add(path, m, "use enforce or audit")
	}
}

// hostProblem explains what is wrong with a host pattern, or returns "".
func hostProblem(h string) string {
	switch {
	case h == "":
		return "empty host, remove it or write a name like api.example.com"
	case h == "*":
		return ""
	case strings.Contains(h, "://"):
		u := h[strings.Index(h, "://")+3:]
		u, _, _ = strings.Cut(u, "/")
		return fmt.Sprintf("a host, not a URL: use %q", u)
	case strings.ContainsAny(h, "/?#"):
		return "a host has no path: put paths in destinations.paths"
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return ""
	}
	if host, port, err := net.SplitHostPort(h); err == nil {
		return fmt.Sprintf("a host has no port: use %q and put %s in destinations.ports", host, port)
	}
	name := strings.TrimSuffix(h, ".")
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		name = rest
	} else if strings.HasPrefix(name, "*") {
		return fmt.Sprintf("a wildcard must be a whole label, use %q", "*."+strings.TrimLeft(name[1:], "."))
	}
	if strings.Contains(name, "*") {
		return "a wildcard is allowed only as the whole first label, e.g. \"*.example.com\""
	}
	if len(name) > 253 {
		return "longer than 253 characters, not a host name"
	}
	for _, l := range strings.Split(name, ".") {
		if !hostLabel.MatchString(l) {
			return "not a host name: labels of letters, digits and '-' separated by dots, e.g. api.example.com"
		}
	}
	return ""
}

func (d *decoder) checkHost(path, h string) {
	if msg := hostProblem(h); msg != "" {
		d.add(path, h, "%s", msg)
	}
}

// parseCIDR accepts a prefix or a bare address (a /32 or /128).
func parseCIDR(s string) (netip.Prefix, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, err
	}
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
	}
	return p, nil
}

func (d *decoder) checkCIDR(path, s string) {
	p, err := parseCIDR(s)
	switch {
	case err != nil:
		d.add(path, s, "not a CIDR: use a range like 10.0.0.0/8 or fd00::/8, or an address")
	case p.Masked() != p:
		d.add(path, s, "has bits set after the prefix length, use %q", p.Masked().String())
	}
}

func (d *decoder) checkWorkloads(path string, w Workloads) {
	for i, c := range w.Cgroups {
		at := fmt.Sprintf("%s.cgroups[%d]", path, i)
		_, err := cgroup2.Compile(c)
		switch {
		case err == nil:
		case errors.Is(err, cgroup2.ErrNotAbsolute):
			d.add(at, c, "a cgroup path starts with /, use %q", "/"+c)
		case errors.Is(err, cgroup2.ErrDoubleStar):
			d.add(at, c, "bad glob: use * within one segment and ** as a whole segment, e.g. /kubepods/**")
		default:
			d.add(at, c, "bad glob: a [...] class or a \\ escape is malformed, e.g. use /pod[0-9]/**")
		}
	}
	for i, c := range w.Comm {
		at := fmt.Sprintf("%s.comm[%d]", path, i)
		switch {
		case c == "":
			d.add(at, c, "empty process name, remove it")
		case len(c) > 15 && !strings.ContainsAny(c, "*?"):
			d.add(at, c, "the kernel keeps at most 15 bytes of a process name, use %q (or match the full path with exe)", c[:15])
		case !validGlob(c):
			d.add(at, c, "bad glob: use * and ? only")
		}
	}
	for i, e := range w.Exe {
		at := fmt.Sprintf("%s.exe[%d]", path, i)
		switch {
		case !strings.HasPrefix(e, "/"):
			d.add(at, e, "an executable is an absolute path, e.g. /usr/bin/python3")
		case !validGlob(e):
			d.add(at, e, "bad glob: use * within one segment and ** as a whole segment")
		}
	}
	for i, c := range w.ContainerIDs {
		if !hexID.MatchString(c) {
			d.add(fmt.Sprintf("%s.containerIDs[%d]", path, i), c, "a container id is 12 to 64 lower-case hex digits")
		}
	}
	// A process names itself: prctl(PR_SET_NAME), or the name of the file
	// it execs, sets its comm. A rule that tells workloads apart by comm
	// alone is one any process can join or leave.
	if len(w.Comm) > 0 && len(w.Cgroups)+len(w.Exe)+len(w.ContainerIDs)+len(w.Namespaces)+len(w.Labels)+len(w.Containers)+len(w.Images) == 0 {
		d.warn(path+".comm", "a process sets its own comm (prctl PR_SET_NAME, or the name of the file it runs), so comm alone does not identify a workload; add exe (e.g. /usr/bin/python3*), cgroups or containerIDs to this rule's workloads")
	}
	for i, n := range w.Namespaces {
		if !k8sNameGlob.MatchString(n) {
			d.add(fmt.Sprintf("%s.namespaces[%d]", path, i), n, "not a Kubernetes namespace name (lower-case letters, digits and '-', with * and ? as globs), e.g. team-*")
		}
	}
	for k := range w.Labels {
		if k == "" || len(k) > 317 || strings.ContainsAny(k, " \t\n*?") {
			d.add(path+".labels."+k, k, "not a Kubernetes label key (no spaces, no globs in keys), e.g. app.kubernetes.io/name")
		}
	}
	for i, c := range w.Containers {
		if strings.TrimSpace(c) == "" || strings.ContainsAny(c, " \t\n/") {
			d.add(fmt.Sprintf("%s.containers[%d]", path, i), c, "not a container name (no spaces or /), e.g. api or api-*")
		}
	}
	for i, im := range w.Images {
		if strings.TrimSpace(im) == "" || strings.ContainsAny(im, " \t\n") {
			d.add(fmt.Sprintf("%s.images[%d]", path, i), im, "not an image name (no spaces), e.g. docker.io/library/python:* or registry.example.com/team/*")
		}
	}
}

func (d *decoder) checkDestinations(path string, ds Destinations) {
	for i, h := range ds.Hosts {
		d.checkHost(fmt.Sprintf("%s.hosts[%d]", path, i), h)
	}
	for i, p := range ds.Ports {
		if p < 1 || p > 65535 {
			d.addv(fmt.Sprintf("%s.ports[%d]", path, i), p, "a port is between 1 and 65535")
		}
	}
	for i, m := range ds.Methods {
		at := fmt.Sprintf("%s.methods[%d]", path, i)
		switch {
		case method.MatchString(m):
		case method.MatchString(strings.ToUpper(m)):
			d.add(at, m, "methods are upper case, use %q", strings.ToUpper(m))
		default:
			d.add(at, m, "not an HTTP method, e.g. GET or POST")
		}
	}
	for i, p := range ds.Paths {
		at := fmt.Sprintf("%s.paths[%d]", path, i)
		switch {
		case !strings.HasPrefix(p, "/"):
			d.add(at, p, "a path starts with /, use %q", "/"+strings.TrimLeft(p, "*"))
		case strings.ContainsAny(p, "?#"):
			d.add(at, p, "a path has no query or fragment, remove what follows %q", p[strings.IndexAny(p, "?#")])
		case !validGlob(p):
			d.add(at, p, "bad glob: use * within one segment and ** as a whole segment, e.g. /v1/**")
		}
	}
	for i, c := range ds.CIDRs {
		d.checkCIDR(fmt.Sprintf("%s.cidrs[%d]", path, i), c)
	}
}

func (d *decoder) checkRateLimit(path string, r *RateLimit) {
	windows := []struct {
		key string
		v   int64
	}{{"second", r.Second}, {"minute", r.Minute}, {"hour", r.Hour}, {"day", r.Day}}
	any := false
	for _, w := range windows {
		if w.v < 0 {
			d.addv(path+"."+w.key, w.v, "a limit is a positive number of requests; remove it for no limit")
		}
		if w.v > 0 {
			any = true
		}
	}
	if !any {
		d.add(path, "", "sets no limit: give at least one of second, minute, hour, day, e.g. minute: 60")
	}
	if r.Burst < 0 {
		d.addv(path+".burst", r.Burst, "burst is a positive number of requests; remove it to use the shortest window's limit")
	}
	switch r.By {
	case "", "workload", "destination", "both":
	default:
		d.add(path+".by", r.By, "use workload, destination or both")
	}
	switch r.Policy {
	case "", "local":
		if r.Redis != (Redis{}) {
			d.add(path+".redis", "", "redis is set but policy is local: add policy: redis, or remove redis")
		}
		if r.FaultTolerant != nil {
			// Kong accepts it with local counters too, where it means
			// nothing: a policy ported from Kong still loads.
			d.warn(path+".faultTolerant", "has no effect with policy: local (local counters cannot be unavailable); remove it, or use policy: redis")
		}
	case "redis":
		switch host, port, err := net.SplitHostPort(r.Redis.Addr); {
		case r.Redis.Addr == "":
			d.add(path+".redis.addr", "", "missing: policy: redis needs redis.addr, e.g. 127.0.0.1:6379")
		case err != nil || host == "" || port == "":
			d.add(path+".redis.addr", r.Redis.Addr, "use host:port, e.g. 127.0.0.1:6379")
		}
		if r.Redis.DB < 0 {
			d.addv(path+".redis.db", r.Redis.DB, "a database number is 0 or more")
		}
		if t := r.Redis.Timeout; t != "" {
			if v, err := time.ParseDuration(t); err != nil || v <= 0 {
				d.add(path+".redis.timeout", t, "use a positive duration like \"200ms\" or \"1s\"")
			}
		}
	default:
		d.add(path+".policy", r.Policy, "use local or redis")
	}
	if r.HideClientHeaders && r.KongHeaders {
		d.add(path+".kongHeaders", "", "hideClientHeaders removes these headers: remove one of the two")
	}
}

func (d *decoder) checkLimits(path string, l Limits) {
	for _, f := range []struct{ key, v string }{{"requestBody", l.RequestBody}, {"responseBody", l.ResponseBody}} {
		if f.v == "" {
			continue
		}
		if _, err := ParseSize(f.v); err != nil {
			d.add(path+"."+f.key, f.v, "%v", err)
		}
	}
}

// ParseSize parses a byte size: a whole number with an optional unit B,
// KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024),
// e.g. "512", "64KB", "10MiB". It must be at least 1 byte.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("a size is a whole number with a unit, e.g. \"10MB\" or \"512KiB\"")
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("too large, at most 8EiB")
	}
	unit := strings.TrimSpace(t[i:])
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q: use B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. %q", unit, t[:i]+"MB")
	}
	if n == 0 {
		return 0, fmt.Errorf("a limit of zero bytes: remove the key for no limit")
	}
	if n > (1<<63-1)/mult {
		return 0, fmt.Errorf("too large, at most 8EiB")
	}
	return n * mult, nil
}

var sizeUnits = map[string]int64{
	"": 1, "B": 1,
	"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
	"kB":  1e3,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
}
