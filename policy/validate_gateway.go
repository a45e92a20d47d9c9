package policy

import (
	"fmt"
	"mime"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/cache"
	"github.com/sluicehq/sluice/upstreams"
)

// checkCache validates a rule's cache block at path.
func (d *decoder) checkCache(path string, c *Cache, action string) {
	if action == "deny" {
		d.add(path, "", "a deny rule forwards nothing to cache: move cache to an allow rule")
		return
	}
	if c.TTL != "" {
		if v, err := time.ParseDuration(c.TTL); err != nil || v <= 0 {
			d.add(path+".ttl", c.TTL, "use a positive duration like \"30s\" or \"5m\", or remove it to cache only responses that state their freshness")
		}
	}
	for i, s := range c.Statuses {
		if s < 100 || s > 599 {
			d.addv(fmt.Sprintf("%s.statuses[%d]", path, i), s, "an HTTP status is between 100 and 599, e.g. 200")
		}
	}
	for i, t := range c.ContentTypes {
		at := fmt.Sprintf("%s.contentTypes[%d]", path, i)
		typ, sub, ok := strings.Cut(t, "/")
		switch {
		case !ok || typ == "" || sub == "" || typ == "*":
			d.add(at, t, "a media type is type/subtype or type/*, e.g. application/json or text/*")
		case strings.Contains(t, ";"):
			d.add(at, t, "parameters are not matched, use %q", strings.TrimSpace(t[:strings.Index(t, ";")]))
		case sub != "*":
			if _, _, err := mime.ParseMediaType(t); err != nil {
				d.add(at, t, "not a media type, e.g. application/json")
			}
		}
	}
	if c.MaxObjectSize != "" {
		if _, err := ParseSize(c.MaxObjectSize); err != nil {
			d.add(path+".maxObjectSize", c.MaxObjectSize, "%v", err)
		}
	}
}

// compileCache turns a validated cache block into the cache package's
// rule; nil for none.
func compileCache(c *Cache) *cache.Rule {
	if c == nil {
		return nil
	}
	r := &cache.Rule{Statuses: c.Statuses, Shared: c.Shared}
	r.TTL, _ = time.ParseDuration(c.TTL)
	for _, t := range c.ContentTypes {
		r.ContentTypes = append(r.ContentTypes, strings.ToLower(t))
	}
	if c.MaxObjectSize != "" {
		r.MaxObjectSize, _ = ParseSize(c.MaxObjectSize)
	}
	return r
}

// validateUpstreams checks the upstreams list.
func (d *decoder) validateUpstreams(us []Upstream) {
	names := map[string]int{}
	hosts := map[string]string{}
	for i, u := range us {
		at := fmt.Sprintf("upstreams[%d]", i)
		switch {
		case u.Name == "":
			d.add(at+".name", "", "missing: every group needs a unique name, e.g. name: api-pool")
		case !ruleName.MatchString(u.Name):
			d.add(at+".name", u.Name, "use letters, digits, '.', '_' and '-' only (at most 64), e.g. api-pool")
		default:
			if j, dup := names[u.Name]; dup {
				d.add(at+".name", u.Name, "duplicate of upstreams[%d].name, names must be unique", j)
			}
			names[u.Name] = i
		}
		if len(u.Hosts) == 0 {
			d.add(at+".hosts", "", "missing: list the destinations the group serves, e.g. [api.internal]")
		}
		for j, h := range u.Hosts {
			hp := fmt.Sprintf("%s.hosts[%d]", at, j)
			name, _, err := upstreams.ParseHost(h)
			if err != nil {
				d.add(hp, h, "a port is 1 to 65535, e.g. api.internal:8080 or [2001:db8::1]:8443")
				continue
			}
			if strings.HasPrefix(name, "*") {
				d.add(hp, h, "a group serves exact hosts, list each one")
				continue
			}
			d.checkHost(hp, name)
			key := strings.ToLower(h)
			if other, dup := hosts[key]; dup {
				d.add(hp, h, "already served by %s: a host belongs to one group", other)
			}
			hosts[key] = at
		}
		if len(u.Targets) == 0 {
			d.add(at+".targets", "", "missing: list at least one target, e.g. [{address: 10.0.0.5:8080}]")
		}
		for j, t := range u.Targets {
			tp := fmt.Sprintf("%s.targets[%d]", at, j)
			host, port, err := net.SplitHostPort(t.Address)
			n, perr := strconv.Atoi(port)
			switch {
			case err != nil || host == "" || perr != nil || n < 1 || n > 65535:
				d.add(tp+".address", t.Address, "use ip:port or host:port, e.g. 10.0.0.5:8080")
			case hostProblem(host) != "":
				d.add(tp+".address", t.Address, "%s", hostProblem(host))
			}
			if t.Weight < 0 {
				d.addv(tp+".weight", t.Weight, "a weight is 1 or more; leave it out for 1")
			}
		}
		switch u.Balance {
		case "", upstreams.RoundRobin, upstreams.LeastRequests:
		default:
			d.add(at+".balance", u.Balance, "use round-robin or least-requests")
		}
		if c := u.HealthCheck; c != nil {
			hp := at + ".healthCheck"
			switch {
			case c.HTTP == "" && !c.TCP:
				d.add(hp, "", "give http: /path or tcp: true")
			case c.HTTP != "" && c.TCP:
				d.add(hp+".tcp", "true", "give http or tcp, not both")
			case c.HTTP != "" && !strings.HasPrefix(c.HTTP, "/"):
				d.add(hp+".http", c.HTTP, "a path starts with /, e.g. /healthz")
			}
			d.checkDuration(hp+".interval", c.Interval)
			d.checkDuration(hp+".timeout", c.Timeout)
			if c.Healthy < 0 {
				d.addv(hp+".healthy", c.Healthy, "a count is 1 or more; leave it out for 2")
			}
			if c.Unhealthy < 0 {
				d.addv(hp+".unhealthy", c.Unhealthy, "a count is 1 or more; leave it out for 2")
			}
		}
		if p := u.Passive; p != nil {
			if p.ConsecutiveFailures < 0 {
				d.addv(at+".passive.consecutiveFailures", p.ConsecutiveFailures, "a count is 1 or more; leave it out for 5")
			}
			d.checkDuration(at+".passive.ejectFor", p.EjectFor)
		}
		if r := u.Retries; r != nil {
			if r.Attempts < 0 || r.Attempts > 10 {
				d.addv(at+".retries.attempts", r.Attempts, "use 1 to 10, or leave retries out for none")
			}
			if r.Budget < 0 || r.Budget > 100 {
				d.addv(at+".retries.budget", r.Budget, "a percentage is 1 to 100; leave it out for 20")
			}
		}
	}
}

// checkDuration checks an optional positive duration.
func (d *decoder) checkDuration(path, v string) {
	if v == "" {
		return
	}
	if t, err := time.ParseDuration(v); err != nil || t <= 0 {
		d.add(path, v, "use a positive duration like \"5s\" or \"1m\"")
	}
}

// compileUpstreams turns validated groups into the upstreams package's
// specs, with the defaults filled in.
func compileUpstreams(us []Upstream) []upstreams.Spec {
	var out []upstreams.Spec
	for _, u := range us {
		s := upstreams.Spec{Name: u.Name, Balance: u.Balance}
		for _, h := range u.Hosts {
			s.Hosts = append(s.Hosts, strings.TrimSuffix(strings.ToLower(h), "."))
		}
		for _, t := range u.Targets {
			s.Targets = append(s.Targets, upstreams.TargetSpec{Address: t.Address, Weight: max(t.Weight, 1)})
		}
		if c := u.HealthCheck; c != nil {
			s.Check = upstreams.Check{HTTPPath: c.HTTP, Interval: 10 * time.Second, Healthy: 2, Unhealthy: 2}
			if v, err := time.ParseDuration(c.Interval); err == nil {
				s.Check.Interval = v
			}
			s.Check.Timeout = min(s.Check.Interval, 5*time.Second)
			if v, err := time.ParseDuration(c.Timeout); err == nil {
				s.Check.Timeout = v
			}
			if c.Healthy > 0 {
				s.Check.Healthy = c.Healthy
			}
			if c.Unhealthy > 0 {
				s.Check.Unhealthy = c.Unhealthy
			}
		}
		if p := u.Passive; p != nil {
			s.Passive = upstreams.Passive{Failures: 5, EjectFor: 30 * time.Second}
			if p.ConsecutiveFailures > 0 {
				s.Passive.Failures = p.ConsecutiveFailures
			}
			if v, err := time.ParseDuration(p.EjectFor); err == nil {
				s.Passive.EjectFor = v
			}
		}
		if r := u.Retries; r != nil {
			s.Retries = upstreams.Retries{Attempts: 1, BudgetPercent: r.Budget}
			if r.Attempts > 0 {
				s.Retries.Attempts = r.Attempts
			}
		}
		out = append(out, s)
	}
	return out
}
