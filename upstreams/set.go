package upstreams

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"
)

// Prober checks one target. Probe must honour ctx's deadline.
type Prober interface {
	Probe(ctx context.Context, c Check, host, addr string) error
}

// Set is the groups in force, with their health checks. Safe for
// concurrent use.
type Set struct {
	prober Prober
	now    func() time.Time

	mu     sync.Mutex
	groups []*Group
	ctx    context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup
	closed bool
}

// NewSet returns an empty Set whose checks probe with p. now nil: time.Now.
func NewSet(p Prober, now func() time.Time) *Set {
	if now == nil {
		now = time.Now
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Set{prober: p, now: now, ctx: ctx, stop: stop}
}

// Update puts specs in force: a group whose name stays keeps the state of
// its targets that stay. Health checks restart with the new groups.
func (s *Set) Update(specs []Spec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.groups
	s.groups = nil
	for _, sp := range specs {
		g := NewGroup(sp)
		for _, o := range old {
			if o.spec.Name == sp.Name {
				g.adopt(o)
			}
		}
		s.groups = append(s.groups, g)
	}
	s.stop()
	s.wg.Wait()
	if s.closed {
		return
	}
	s.ctx, s.stop = context.WithCancel(context.Background())
	for _, g := range s.groups {
		if g.spec.Check.Interval <= 0 {
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.run(s.ctx, g)
		}()
	}
}

// For returns the group serving host at port, nil for none.
func (s *Set) For(host string, port uint16) *Group {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.groups {
		if g.Serves(host, port) {
			return g
		}
	}
	return nil
}

// Health reports every target of every group.
func (s *Set) Health() []Health {
	s.mu.Lock()
	gs := s.groups
	s.mu.Unlock()
	now := s.now()
	var out []Health
	for _, g := range gs {
		out = append(out, g.Health(now)...)
	}
	return out
}

// Close stops the health checks. The groups keep serving what they
// know; Update after Close starts no checks.
func (s *Set) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.stop()
	s.wg.Wait()
}

// run probes g's targets until ctx ends.
func (s *Set) run(ctx context.Context, g *Group) {
	tick := time.NewTicker(min(g.spec.Check.Interval, time.Second))
	defer tick.Stop()
	for {
		CheckOnce(ctx, g, s.prober, s.now())
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// CheckOnce probes, in parallel, the targets of g that are due at now and
// reports the outcomes.
func CheckOnce(ctx context.Context, g *Group, p Prober, now time.Time) {
	c := g.spec.Check
	host := ""
	if len(g.spec.Hosts) > 0 {
		host = g.spec.Hosts[0]
	}
	var wg sync.WaitGroup
	for _, addr := range g.Due(now) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, c.Timeout)
			defer cancel()
			err := p.Probe(pctx, c, host, addr)
			if ctx.Err() == nil {
				g.Probed(addr, err == nil)
			}
		}()
	}
	wg.Wait()
}

// NetProber probes over the network with Dial: a TCP connect, or an HTTP
// GET of Check.HTTPPath with the group's first host as Host.
type NetProber struct {
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Probe implements Prober.
func (n NetProber) Probe(ctx context.Context, c Check, host, addr string) error {
	if c.HTTPPath == "" {
		conn, err := n.Dial(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("probe %s: %w", addr, err)
		}
		return conn.Close()
	}
	tr := &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return n.Dial(ctx, "tcp", addr) },
		DisableKeepAlives: true,
		Proxy:             nil,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+c.HTTPPath, nil)
	if err != nil {
		return fmt.Errorf("probe %s: %w", addr, err)
	}
	if host != "" {
		req.Host = host
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("probe %s: %w", addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return errors.New("probe " + addr + ": " + resp.Status)
	}
	return nil
}
