package mitm

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/policy"
	"github.com/sluicehq/sluice/upstreams"
)

// balanceStage sends a request whose destination an upstream group serves
// (policy upstreams, state in upstreams/) to one of the group's healthy
// targets: the request, already judged as it was addressed, goes to the
// target's address instead, after the SSRF guard has judged that address
// too (a target in a blocked range is refused 403). With no healthy
// target the answer is 503 "no healthy upstream". The outcome (a connect
// failure or a 5xx is a failure) feeds passive ejection, and an
// idempotent request without a body that failed is retried on another
// target within the group's retry budget (forward.go, upstreamStage).
type balanceStage struct{}

func (balanceStage) Name() string { return "balance" }

// balanced is the balance stage's state for one request.
type balanced struct {
	g     *upstreams.Group
	addr  string   // the target picked last, "" when none is out
	tried []string // targets picked so far
	tries int      // retries so far
}

func (balanceStage) Request(x *Exchange) *Answer {
	g := x.f.p.upstreamGroups().For(x.host, x.t.port)
	if g == nil {
		return nil
	}
	x.bal = &balanced{g: g}
	return x.retarget(true)
}

// retarget picks a target not tried yet and points x.t at it: nil when
// it did, else the answer (403 from the guard, 503 when no target is
// left). final: the answer will be the request's (not a retry's, which
// keeps the response it has), so a guard's deny becomes its decision.
func (x *Exchange) retarget(final bool) *Answer {
	b, p := x.bal, x.f.p
	for {
		now := time.Now()
		addr, ok := b.g.Pick(now, b.tried)
		if !ok {
			return fail(http.StatusServiceUnavailable, audit.ReasonNoHealthyUpstream,
				fmt.Sprintf("upstream group %s: no healthy target for %s", b.g.Spec().Name, x.host))
		}
		b.tried, b.addr = append(b.tried, addr), addr
		ap, err := p.resolveTarget(x.f.ctx, addr)
		if err != nil {
			b.g.Done(addr, false, now)
			b.addr = ""
			x.Record.Error = err.Error()
			continue
		}
		old := x.t
		conn := &policy.Conn{Workload: x.f.id, Host: old.conn.Host, Addrs: []netip.Addr{ap.Addr()}, Port: ap.Port(), TLS: old.useTLS}
		cd := p.decider().Connection(x.f.ctx, conn)
		if cd.Action == policy.Reject {
			b.g.Cancel(addr)
			b.addr = ""
			d := cd.Decision
			d.Verdict = policy.Deny
			if final {
				x.Decision, x.decided = d, true
			}
			a := denyAnswer(d)
			a.Detail = fmt.Sprintf("upstream group %s target %s: %s", b.g.Spec().Name, addr, d.Reason)
			return a
		}
		t := &target{host: old.host, port: ap.Port(), conn: conn, cd: cd, useTLS: old.useTLS, alpn: old.alpn}
		if t.useTLS {
			t.addr = ap
			t.pool = p.pools.get(poolKey{host: t.host, addr: ap, alpn: old.alpn, tls: true})
		}
		x.t = t
		return nil
	}
}

// done reports the outcome of the request sent to the picked target.
func (b *balanced) done(ok bool) {
	if b.addr != "" {
		b.g.Done(b.addr, ok, time.Now())
		b.addr = ""
	}
}

// retry reports whether a failed request may go to another target:
// idempotent, no body, attempts and budget left.
func (b *balanced) retry(r *http.Request, hasBody bool) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false
	}
	if hasBody || r.Context().Err() != nil || b.tries >= b.g.Spec().Retries.Attempts || !b.g.Retry(time.Now()) {
		return false
	}
	b.tries++
	return true
}

// resolveTarget turns a target's ip:port or host:port into the address to
// dial.
func (p *Proxy) resolveTarget(ctx context.Context, addr string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	host, port, err := net.SplitHostPort(addr)
	n, perr := strconv.ParseUint(port, 10, 16)
	if err != nil || perr != nil {
		return netip.AddrPort{}, fmt.Errorf("upstream target %q: not ip:port or host:port", addr)
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout.D())
	defer cancel()
	as, err := p.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(as) == 0 {
		return netip.AddrPort{}, fmt.Errorf("upstream target %q: resolve: %v", addr, err)
	}
	return netip.AddrPortFrom(as[0].Unmap(), uint16(n)), nil
}

// groupSet is the proxy's upstream groups, kept in step with the policy
// in force: the first request after a reload puts the new groups in force.
type groupSet struct {
	set *upstreams.Set

	mu   sync.Mutex
	last policy.Decider
	// synced is the decider the groups were last brought in step with:
	// every request reads it, without taking mu.
	synced atomic.Pointer[syncedDecider]
}

type syncedDecider struct{ d policy.Decider }

// upstreamGroups returns the groups of the policy in force.
func (p *Proxy) upstreamGroups() *upstreams.Set {
	d := p.decider()
	gs := p.groups
	if s := gs.synced.Load(); s != nil && s.d == d {
		return gs.set
	}
	gs.mu.Lock()
	defer gs.mu.Unlock()
	defer gs.synced.Store(&syncedDecider{d})
	if gs.last != d {
		gs.last = d
		var specs []upstreams.Spec
		if ul, ok := d.(policy.UpstreamLister); ok {
			specs = ul.Upstreams()
		}
		gs.set.Update(specs)
	}
	return gs.set
}

// UpstreamHealth reports every target of the upstream groups in force
// (sluice_upstream_healthy).
func (p *Proxy) UpstreamHealth() []upstreams.Health { return p.upstreamGroups().Health() }

var _ Stage = balanceStage{}
