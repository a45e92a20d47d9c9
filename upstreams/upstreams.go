// Package upstreams keeps the state of upstream groups: several targets
// serving one destination, which of them are healthy, and which one a
// request goes to. It exists so that balancing, health checking and
// ejection are pure and table-testable apart from the proxy: every method
// takes the time it should act at, and probing goes through a Prober.
//
// A target is healthy for a request when its active health check says so
// (targets start healthy; Check.Unhealthy failed probes in a row take one
// out, Check.Healthy passed probes bring it back) and it is not ejected
// (Passive.Failures failed requests in a row eject it for Passive.EjectFor,
// doubled at each ejection that follows another without a success
// between them, up to maxEjectFactor times).
package upstreams

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Balance policies.
const (
	RoundRobin    = "round-robin"
	LeastRequests = "least-requests"
)

// maxEjectFactor caps the back-off of repeated ejections.
const maxEjectFactor = 16

// Spec is one group as the policy compiled it.
type Spec struct {
	Name string
	// Hosts are the destinations the group serves: "host" (any port) or
	// "host:port", lower case; an IPv6 address is bare ("::1") or
	// bracketed with a port ("[::1]:443"). ParseHost reads one.
	Hosts   []string
	Targets []TargetSpec
	Balance string // RoundRobin (default) or LeastRequests
	Check   Check
	Passive Passive
	Retries Retries
}

// TargetSpec is one target: "ip:port" or "host:port", and its weight.
type TargetSpec struct {
	Address string
	Weight  int // at least 1
}

// Check is the active health check; Interval 0 turns it off.
type Check struct {
	HTTPPath  string // GET this path and expect 2xx or 3xx; empty: a TCP connect
	Interval  time.Duration
	Timeout   time.Duration
	Healthy   int // passed probes in a row that make a target healthy again
	Unhealthy int // failed probes in a row that make it unhealthy
}

// Passive is ejection after failed requests; Failures 0 turns it off.
type Passive struct {
	Failures int
	EjectFor time.Duration
}

// Retries of idempotent requests on another target.
type Retries struct {
	Attempts int // retries of one request, 0: none
	// BudgetPercent bounds retries to this share of the group's requests
	// (counted over the last budgetWindow); 0 means 20.
	BudgetPercent int
}

// budgetWindow is how long requests and retries count for the budget.
const budgetWindow = 10 * time.Second

// minRetries is allowed in any window whatever the budget says, so a
// quiet group can still retry.
const minRetries = 3

// Target is one target's state. Its fields are read under the group's lock.
type Target struct {
	Address string
	Weight  int

	healthy  bool // by the active check
	okRun    int  // passed probes in a row
	failRun  int  // failed probes in a row
	fails    int  // failed requests in a row
	ejected  time.Time
	ejects   int // ejections without a success between them
	current  int // smooth weighted round-robin state
	inflight int
	nextRun  time.Time // the next probe is due
}

// Group is one upstream group's live state. Safe for concurrent use.
type Group struct {
	spec Spec

	mu      sync.Mutex
	targets []*Target
	window  time.Time // start of the budget window
	reqs    int       // requests in the window
	retries int       // retries in the window
}

// NewGroup returns a group whose targets are all healthy.
func NewGroup(s Spec) *Group {
	g := &Group{spec: s}
	for _, ts := range s.Targets {
		w := ts.Weight
		if w < 1 {
			w = 1
		}
		g.targets = append(g.targets, &Target{Address: ts.Address, Weight: w, healthy: true})
	}
	return g
}

// Spec returns what the group was built from.
func (g *Group) Spec() Spec { return g.spec }

// Serves reports whether the group serves host at port.
func (g *Group) Serves(host string, port uint16) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	for _, h := range g.spec.Hosts {
		hh, p, err := ParseHost(h)
		if err == nil && hh == host && (p == 0 || p == port) {
			return true
		}
	}
	return false
}

// ParseHost reads one entry of Spec.Hosts: the host and its port, 0 when
// the entry names none. "api.internal", "api.internal:8080", "::1" and
// "[::1]:8443" are entries; a port outside 1..65535 is an error.
func ParseHost(h string) (host string, port uint16, err error) {
	if strings.Count(h, ":") > 1 && !strings.HasPrefix(h, "[") {
		return h, 0, nil // a bare IPv6 address
	}
	if !strings.Contains(h, ":") {
		return h, 0, nil
	}
	host, ps, err := net.SplitHostPort(h)
	if err != nil {
		return "", 0, fmt.Errorf("parse upstream host %q: %w", h, err)
	}
	n, err := strconv.Atoi(ps)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("parse upstream host %q: port %q is not 1 to 65535", h, ps)
	}
	return host, uint16(n), nil
}

func (t *Target) up(now time.Time) bool { return t.healthy && !now.Before(t.ejected) }

// Pick chooses a healthy target not in exclude and counts a request on
// it (Done must follow). ok is false when no target is healthy.
func (g *Group) Pick(now time.Time, exclude []string) (addr string, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var best *Target
	total := 0
	for _, t := range g.targets {
		if !t.up(now) || contains(exclude, t.Address) {
			continue
		}
		if g.spec.Balance == LeastRequests {
			// Fewest requests in flight per unit of weight; ties go to
			// the first.
			if best == nil || t.inflight*best.Weight < best.inflight*t.Weight {
				best = t
			}
			continue
		}
		// Smooth weighted round-robin (nginx): each pick adds every
		// weight to its target's current and takes the largest.
		t.current += t.Weight
		total += t.Weight
		if best == nil || t.current > best.current {
			best = t
		}
	}
	if best == nil {
		return "", false
	}
	best.current -= total
	best.inflight++
	g.count(now, false)
	return best.Address, true
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Done reports the outcome of a request Pick sent to addr: ok false for a
// connect failure or a 5xx answer. Enough failures in a row eject the
// target.
func (g *Group) Done(addr string, ok bool, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.find(addr)
	if t == nil {
		return
	}
	if t.inflight > 0 {
		t.inflight--
	}
	if ok {
		t.fails, t.ejects = 0, 0
		return
	}
	t.fails++
	p := g.spec.Passive
	if p.Failures <= 0 || t.fails < p.Failures {
		return
	}
	t.fails = 0
	t.ejects++
	f := 1 << min(t.ejects-1, 4)
	t.ejected = now.Add(p.EjectFor * time.Duration(min(f, maxEjectFactor)))
}

// Cancel undoes a Pick whose request was not sent (the target was
// refused before it was dialed): neither a success nor a failure.
func (g *Group) Cancel(addr string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if t := g.find(addr); t != nil && t.inflight > 0 {
		t.inflight--
	}
}

// Retry reports whether the retry budget allows one more retry now, and
// counts it if so.
func (g *Group) Retry(now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	pct := g.spec.Retries.BudgetPercent
	if pct <= 0 {
		pct = 20
	}
	if now.Sub(g.window) >= budgetWindow {
		g.window, g.reqs, g.retries = now, 0, 0
	}
	if g.retries >= minRetries && g.retries*100 >= g.reqs*pct {
		return false
	}
	g.count(now, true)
	return true
}

func (g *Group) count(now time.Time, retry bool) {
	if now.Sub(g.window) >= budgetWindow {
		g.window, g.reqs, g.retries = now, 0, 0
	}
	if retry {
		g.retries++
	} else {
		g.reqs++
	}
}

func (g *Group) find(addr string) *Target {
	for _, t := range g.targets {
		if t.Address == addr {
			return t
		}
	}
	return nil
}

// Due returns the targets whose probe is due at now and schedules their
// next one. Nil when the group has no active check.
func (g *Group) Due(now time.Time) []string {
	c := g.spec.Check
	if c.Interval <= 0 {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	for _, t := range g.targets {
		if now.Before(t.nextRun) {
			continue
		}
		t.nextRun = now.Add(c.Interval)
		out = append(out, t.Address)
	}
	return out
}

// Probed reports a probe's outcome: Check.Unhealthy failures in a row
// make the target unhealthy, Check.Healthy passes in a row healthy.
func (g *Group) Probed(addr string, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.find(addr)
	if t == nil {
		return
	}
	c := g.spec.Check
	if ok {
		t.okRun, t.failRun = t.okRun+1, 0
		if !t.healthy && t.okRun >= max(c.Healthy, 1) {
			t.healthy = true
			t.ejected, t.fails, t.ejects = time.Time{}, 0, 0
		}
		return
	}
	t.okRun, t.failRun = 0, t.failRun+1
	if t.healthy && t.failRun >= max(c.Unhealthy, 1) {
		t.healthy = false
	}
}

// Health is one target's state for metrics.
type Health struct {
	Group, Target string
	Healthy       bool
}

// Health reports every target: healthy when it would be picked at now.
func (g *Group) Health(now time.Time) []Health {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]Health, 0, len(g.targets))
	for _, t := range g.targets {
		out = append(out, Health{Group: g.spec.Name, Target: t.Address, Healthy: t.up(now)})
	}
	return out
}

// adopt takes over the health state of old's targets with the same
// address (a policy reload keeps what is known).
func (g *Group) adopt(old *Group) {
	old.mu.Lock()
	defer old.mu.Unlock()
	for _, t := range g.targets {
		if o := old.find(t.Address); o != nil {
			t.healthy, t.okRun, t.failRun, t.fails, t.ejected, t.ejects, t.nextRun =
				o.healthy, o.okRun, o.failRun, o.fails, o.ejected, o.ejects, o.nextRun
		}
	}
}
