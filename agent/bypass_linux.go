package agent

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/bpf"
)

// startBypassHosts sets up agent.bypassHosts (see bypass.go): the table
// kept in step with the CIDR tries, its sweeper and, without a DNS
// server, the resolution at start and every bypassResolveEvery. It runs
// after load (the tries hold the static prefixes).
func (a *Agent) startBypassHosts(withDNS bool) {
	a.bypassNames = newHostMatcher(a.cfg.BypassHosts)
	if a.bypassNames.empty() {
		return
	}
	a.bypass = newBypassTable(bypassMaxEntries, a.cfg.DenyCIDRs, a.cfg.BypassCIDRs, a.putBypass, a.delBypass)
	if !withDNS {
		r := a.opts.Resolver
		if r == nil {
			d := &net.Dialer{Control: MarkControl(a.cfg.Mark)}
			r = &net.Resolver{PreferGo: true, Dial: d.DialContext}
		}
		lookup := func(ctx context.Context, host string) ([]netip.Addr, error) {
			return r.LookupNetIP(ctx, "ip", host)
		}
		names := a.bypassNames.names()
		resolve := func() {
			ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
			defer cancel()
			if err := a.bypass.refresh(ctx, names, lookup, time.Now()); err != nil {
				a.log.Warn("resolve agent.bypassHosts", audit.KeyError, err)
			}
		}
		resolve() // before the hooks attach: the first connects see the names
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			t := time.NewTicker(bypassResolveEvery)
			defer t.Stop()
			for {
				select {
				case <-a.ctx.Done():
					return
				case <-t.C:
					resolve()
				}
			}
		}()
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := time.NewTicker(bypassSweep)
		defer t.Stop()
		for {
			select {
			case <-a.ctx.Done():
				return
			case now := <-t.C:
				if _, err := a.bypass.expire(now); err != nil {
					a.log.Warn("expire bypassed addresses", audit.KeyError, err)
				}
			}
		}
	}()
}

func (a *Agent) putBypass(addr netip.Addr) error {
	v := uint8(bpf.SluiceCidrActionCIDR_BYPASS)
	if addr.Is4() {
		k := bpf.SluiceLpm4Key{Prefixlen: 32, Addr: addr.As4()}
		return a.objs.SluiceDeny4.Put(&k, v)
	}
	k := bpf.SluiceLpm6Key{Prefixlen: 128, Addr: addr.As16()}
	return a.objs.SluiceDeny6.Put(&k, v)
}

func (a *Agent) delBypass(addr netip.Addr) error {
	if addr.Is4() {
		k := bpf.SluiceLpm4Key{Prefixlen: 32, Addr: addr.As4()}
		return a.objs.SluiceDeny4.Delete(&k)
	}
	k := bpf.SluiceLpm6Key{Prefixlen: 128, Addr: addr.As16()}
	return a.objs.SluiceDeny6.Delete(&k)
}

// bypassWriter is the DNS answer's way out to a workload that asked for a
// name of agent.bypassHosts: the answered addresses are bypassed before
// the workload sees them, so its connect to them goes direct.
type bypassWriter struct {
	dns.ResponseWriter
	a    *Agent
	host string
}

func (w bypassWriter) WriteMsg(m *dns.Msg) error {
	if learned, err := w.a.bypass.learnAnswer(w.host, m, time.Now()); err != nil {
		w.a.log.Warn("bypass answered addresses", audit.KeyHost, w.host, audit.KeyError, err)
	} else if len(learned) > 0 {
		w.a.log.Debug("bypassed answered addresses", audit.KeyHost, w.host, audit.KeyAnswers, learned)
	}
	return w.ResponseWriter.WriteMsg(m)
}

// bypassDNS wraps w when r asks for a name of agent.bypassHosts.
func (a *Agent) bypassDNS(w dns.ResponseWriter, r *dns.Msg) dns.ResponseWriter {
	if a.bypass == nil || r == nil || len(r.Question) != 1 || r.Response {
		return w
	}
	if q := r.Question[0]; a.bypassNames.match(q.Name) {
		return bypassWriter{ResponseWriter: w, a: a, host: normName(q.Name)}
	}
	return w
}

// eventHost names the host of a bypassed connect learned from
// agent.bypassHosts.
func (a *Agent) eventHost(ev *Event) {
	if ev.Reason != ReasonBypassCIDR || a.bypass == nil {
		return
	}
	if h, ok := a.bypass.host(ev.Dst.Addr()); ok {
		ev.Reason, ev.Host = ReasonBypassHost, h
	}
}
